"""Stage 5, `convlint fix`'s settling: the searched rewrites timed, kept or dropped, verified
together and linted again, until the set is stable; then both whole models timed.

Until the set of rewrites is stable: each rewrite is timed on its own (``latency``, unless
``--no-latency``) and dropped when the timing's confidence interval says so (``--objective
latency``: unless it is faster; ``macs``: if it is slower); the combination is verified end
to end (while it breaks the tolerance, the rewrite that moved the outputs most gets half its
budget, or is dropped); the rewritten model is linted again, and a rewrite whose new nodes a
rule would flag is tried in another form or dropped, so that ``check OUT`` does not flag what
`fix` wrote. Then both whole models are timed on the target (``--provider``,
``--latency-threads``, ``--latency-batch``); by the same rule, the rewrite that gained least
on its own is dropped while the whole rewritten model is not faster (``latency``) or is
slower (``macs``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from convlint.rewrite import latency
from convlint.rewrite.latency import Latency
from convlint.rewrite.prepare import Prepared, lint_model
from convlint.rewrite.search import Searcher
from convlint.rewrite.state import Bench, Choice, Choices, FixRun, Skipped, sum_macs
from convlint.rewrite.verify import Feed, Runtime, RuntimeFailure

MAX_ROUNDS = 8  # rounds of timing, verifying and re-linting until the rewrites are stable


@dataclass
class Settled:
    """What the settling dropped, and the whole models' latency (None with --no-latency, no
    rewrite, or a timing the runtime refused)."""

    skipped: list[Skipped] = field(default_factory=list)
    latency: Latency | None = None


class Settler:
    """The settling of one run's choices: it times in ``runtime``, verifies on ``bench`` and
    asks ``searcher`` for another form of a rewrite it cannot keep as it is."""

    def __init__(
        self, prepared: Prepared, bench: Bench, runtime: Runtime, searcher: Searcher, run: FixRun
    ) -> None:
        self.prepared = prepared
        self.bench = bench
        self.runtime = runtime
        self.searcher = searcher
        self.run = run

    def settle(self, choices: Choices) -> Settled:
        """Time, verify and re-lint ``choices`` (changed in place) until they are stable."""
        settled = Settled()
        skipped = settled.skipped
        by_latency = self.run.objective == "latency"
        for _ in range(MAX_ROUNDS + len(choices)):
            if self.run.options.latency:
                skipped.extend(self.keep_faster(choices))
            skipped.extend(self.combine(choices))
            before = {key: id(choice) for key, choice in choices.items()}
            skipped.extend(self.recheck(choices))
            if {key: id(choice) for key, choice in choices.items()} != before:
                continue  # a rewrite changed form or was dropped: time and verify again
            if not choices or not self.run.options.latency:
                settled.latency = None
                return settled
            combined = self.bench.apply([c.edit for c in choices.values()])
            measured = self.time_models(self.prepared.original, combined, "timing the models")
            settled.latency = measured
            if measured is None or (measured.faster if by_latency else not measured.slower):
                return settled
            # Not faster as a whole (latency), or slower (macs): drop the rewrite that gained
            # least on its own.
            key, least = max(
                choices.items(),
                key=lambda kv: kv[1].latency.ratio if kv[1].latency is not None else 1.0,
            )
            del choices[key]
            why = (
                "dropped (--objective latency): the rewritten model is not faster with "
                f"{latency.CONFIDENCE:.0%} confidence"
                if by_latency
                else f"dropped: the rewritten model runs slower ({latency.CONFIDENCE:.0%} "
                "confidence)"
            )
            skipped.append(
                Skipped(
                    least.target.code,
                    least.target.node,
                    f"{why}: {measured.detail()}; this rewrite gained least on its own",
                )
            )
        return settled

    # -- verifying the combination -------------------------------------------------------
    def combine(self, choices: Choices) -> list[Skipped]:
        """Tighten or drop the worst choice until the model with all of them holds."""
        dropped: list[Skipped] = []
        for _ in range(4 * len(choices) + 1):
            if not choices or self.run.fixed_rank:
                return dropped
            combined = self.bench.apply([c.edit for c in choices.values()])
            errors = self.bench.measure(combined, "verifying the combined rewrites")
            if errors.ok:
                return dropped
            key, worst = max(choices.items(), key=lambda kv: kv[1].errors.rel_l2_error)
            self.run.log(
                f"combined error {errors.rel_l2_error:.2e}: tightening {worst.target.node}"
            )
            retry = (
                None
                if worst.factors is None
                else self.searcher.select(worst.target, worst.budget / 2, worst.kinds)
            )
            if (
                isinstance(retry, Choice)
                and retry.factors is not None
                and (worst.factors is None or retry.factors.key != worst.factors.key)
            ):
                choices[key] = retry
            else:
                del choices[key]
                dropped.append(
                    Skipped(
                        worst.target.code,
                        worst.target.node,
                        "dropped: together with the other rewrites it broke the tolerance",
                    )
                )
        return dropped

    # -- latency -------------------------------------------------------------------------
    def _time(
        self,
        models: list[Any],
        feed: Feed,
        budgets: tuple[float, float],
        resident: bool,
        what: str,
    ) -> Any:
        """The runtime's timings, or None when it refused a model (a kernel that only the
        timing's full graph optimization meets): latency is a report, never a reason to fail.
        A runtime that crashed or hung is another matter: that still ends the run."""
        target = self.prepared.timing
        with self.run.timer("latency"):
            try:
                return self.runtime.time(
                    models,
                    feed,
                    target.threads,
                    target.provider,
                    latency.MIN_RUNS,
                    *budgets,
                    resident,
                    what=what,
                )
            except RuntimeFailure as exc:
                if not self.runtime.alive:
                    raise
                self.run.notes.append(f"latency not measured: {exc}")
                self.run.log(f"latency not measured: {exc}")
                return None

    def time_models(
        self, before: onnx.ModelProto | Path, after: onnx.ModelProto, what: str
    ) -> Latency | None:
        """Both models timed on the timing feed, interleaved."""
        before_bytes = latency.weight_bytes(self.prepared.light)
        resident = before_bytes + latency.weight_bytes(after) <= latency.RESIDENT_BYTES
        budgets = (latency.BUDGET, latency.CONFIRM_BUDGET)
        times = self._time([before, after], self.prepared.timing_feed, budgets, resident, what)
        if times is None:
            return None
        result = latency.summarize(*times, self.prepared.timing, resident)
        self.run.log(f"{what}: {result.text()}")
        return result

    def time_rewrite(self, choice: Choice) -> Latency | None:
        """The nodes a rewrite replaces against those it writes, cut out of the model; None
        when the region's inputs have no known static shape, and for a channel pruning (it
        narrows the producing conv too, so its nodes alone do not run on the same input: it
        is timed with the whole model)."""
        if choice.edit.narrow:
            return None
        light, graph = self.prepared.light, self.prepared.graph
        indices = sorted(choice.target.claims)
        before_nodes = [light.graph.node[i] for i in indices]
        after_nodes = [
            n for i in indices for n in choice.edit.replace.get(i, [light.graph.node[i]])
        ]
        outputs = latency.boundary_outputs(light, indices, self.prepared.output_names)
        weights = {t.name for t in light.graph.initializer}
        inputs: dict[str, latency.InputInfo] = {}
        produced = {out for node in before_nodes for out in node.output}
        # The graph's shapes have the verification samples' batch: the region's, the target's.
        sample_batch = latency.feed_batch(self.prepared.feeds.verify[0])
        for node in before_nodes:
            for tensor in node.input:
                if not tensor or tensor in weights or tensor in inputs or tensor in produced:
                    continue
                if tensor in graph.constants or tensor in graph.aliases:
                    continue  # a Constant (or an Identity of a weight): the region takes it along
                shape = graph.shape(tensor)
                if shape is None or not all(isinstance(d, int) for d in shape):
                    return None
                dims = tuple(int(d or 0) for d in shape)
                if dims and dims[0] == sample_batch:
                    dims = (self.prepared.timing.batch, *dims[1:])
                dtype = graph.dtype(tensor) or onnx.TensorProto.FLOAT
                inputs[tensor] = latency.InputInfo(dims, dtype)
        types = {o: graph.dtype(o) or onnx.TensorProto.FLOAT for o in outputs}
        before = latency.region(light, before_nodes, outputs, inputs, types)
        after = latency.region(light, after_nodes, outputs, inputs, types, choice.edit.initializers)
        if before is None or after is None:
            return None
        feed = latency.random_feed(inputs, self.run.options.seed)
        what = f"timing the rewrite of {choice.target.node!r}"
        budgets = (latency.REWRITE_BUDGET, latency.REWRITE_CONFIRM_BUDGET)
        times = self._time([before, after], feed, budgets, True, what)
        if times is None:
            return None
        result = latency.summarize(*times, self.prepared.timing, True)
        self.run.log(f"{choice.target.code} {choice.target.node}: alone, {result.text()}")
        return result

    def keep_faster(self, choices: Choices) -> list[Skipped]:
        """Time each rewrite not timed yet on its own. ``--objective latency``: drop those not
        faster with confidence; ``macs``: drop those slower with confidence."""
        by_latency = self.run.objective == "latency"
        dropped: list[Skipped] = []
        for key, choice in list(choices.items()):
            if choice.timed:
                continue
            choice.latency, choice.timed = self.time_rewrite(choice), True
            measured = choice.latency
            if measured is None:
                continue
            macs = self._macs_text(choice)
            if by_latency and not measured.faster:
                reason = (
                    f"dropped (--objective latency): {macs}, but its nodes are not faster with "
                    f"{latency.CONFIDENCE:.0%} confidence in onnxruntime: {measured.detail()}"
                )
            elif not by_latency and measured.slower:
                reason = (
                    f"dropped: {macs}, but its nodes run slower in onnxruntime "
                    f"({latency.CONFIDENCE:.0%} confidence): {measured.detail()}"
                )
            else:
                continue
            del choices[key]
            dropped.append(Skipped(choice.target.code, choice.target.node, reason))
        return dropped

    def _macs_text(self, choice: Choice) -> str:
        before = self.prepared.report.cost
        assert before is not None
        old = sum_macs([before.nodes[n] for n in choice.target.replaced_nodes()])
        new: int | None = None
        if choice.factors is not None:
            new = choice.factors.macs
        else:
            new = choice.target.exact_macs(self.prepared.graph)
        if old is None or new is None:
            return "it lowers MACs"
        return f"it lowers MACs {old:,} -> {new:,}"

    # -- closing the loop ----------------------------------------------------------------
    def recheck(self, choices: Choices) -> list[Skipped]:
        """Lint the rewritten model; a rewrite whose new nodes a rule flags is tried in the
        other factored forms, else dropped. Returns the drops; replaced choices are untimed."""
        dropped: list[Skipped] = []
        if not choices:
            return dropped
        analysis = self.prepared.analysis
        combined = self.bench.apply([c.edit for c in choices.values()])
        with self.run.timer("analysis"):
            after, _ = lint_model(
                combined, analysis.path, analysis.registry, analysis.lint_settings
            )
        owner = {name: key for key, c in choices.items() for name in c.edit.new_nodes}
        flagged: dict[str, list[Any]] = {}
        for finding in after.findings:
            if finding.node in owner:
                flagged.setdefault(owner[finding.node], []).append(finding)
        before = {(f.code, f.node) for f in self.prepared.report.findings}
        for finding in after.findings:
            if finding.node not in owner and (finding.code, finding.node) not in before:
                self.run.log(
                    f"after the rewrites {finding.code} flags {finding.node}: {finding.message}"
                )
        for key, findings in flagged.items():
            choice = choices[key]
            first = findings[0]
            self.run.log(
                f"{choice.target.code} {choice.target.node}: {first.code} would flag "
                f"{first.node} ({first.message})"
            )
            kind = choice.factors.kind if choice.factors is not None else None
            remaining = tuple(k for k in choice.kinds if k != kind)
            if choice.target.other_forms and remaining:
                retry = self.searcher.select(choice.target, choice.budget, remaining)
                if isinstance(retry, Choice):
                    choices[key] = retry
                    continue
            del choices[key]
            dropped.append(
                Skipped(
                    choice.target.code,
                    choice.target.node,
                    f"dropped: `convlint check` would flag what it writes ({first.code} on "
                    f"{first.node!r}: {first.message})",
                )
            )
        return dropped
