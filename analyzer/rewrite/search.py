"""Stage 5, `convlint fix`'s search: each target's form and rank (or kept channels) under the
whole-model budget, measured on the prepared bench.

- Exact rewrites (and every rewrite at the rank ``--rank``/``--ratio`` fixes) one at a time
  (``Searcher.select``): the factorizer proposes the form with the fewest MACs whose cheap
  proxy error fits the layer's share ``T/√n`` of the tolerance (errors of n independent
  rewrites add roughly in quadrature at the outputs); the bench confirms it on the whole
  model's outputs; the ratio between measured and proxy error recalibrates the proxy budget
  and the search repeats a few times, keeping the cheapest confirmed choice.
- The lossy rewrites together (``Searcher.spend``): the most aggressive allocation on the
  path of ``budget.allocation_path`` whose whole model holds the tolerance (and --min-top1)
  on the held-out samples, each layer refitted to the original response.

Nothing here runs onnxruntime itself: the ``state.Bench`` it is given does.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convlint.findings import ModelReport
from convlint.rewrite.budget import (
    Allocation,
    Candidate,
    key_of,
    reduced_rank_refit,
    refit,
    relative_error,
    spend,
)
from convlint.rewrite.edit import Curve, Edit, Names, RefitJob, Target
from convlint.rewrite.factorize import KINDS, Array, Factors
from convlint.rewrite.state import (
    UNMEASURED,
    Bench,
    Choice,
    Choices,
    FixRun,
    Skipped,
    key,
    retrained_hint,
)
from convlint.rewrite.verify import Errors, PatchSpec

MARGIN = 0.8  # aim the proxy below the budget: the proxy is an estimate
MAX_TRIALS = 4  # confirmations on the bench per rewrite during rank selection
REFITS_KEPT = 64  # refitted layers kept for the allocations that share what is before them
NO_SAVING = "no rank within tolerance lowers MACs"
OUT_OF_BUDGET = "the whole-model budget was spent on layers that save more MACs per unit of error"
NOT_CONFIRMED = (
    "the allocations that held on the samples the ranks were chosen on broke the budget on "
    "the held-out samples that verify them"
)
Progress = Callable[[Sequence[Target]], Any]


def layer_budget(bound: float) -> float:
    """The error budget a single layer's rank search aims at: the bound, at most 1 (a proxy
    is a relative error: at 1 the cheapest form fits, and the measured top-1 decides)."""
    return min(bound, 1.0)


@dataclass
class Searched:
    """What the search chose (by target key, in the order chosen) and what it passed over."""

    choices: Choices = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)


class Searcher:
    """The search of one run: the bench it measures on, the statistics its data-aware forms
    fit, and what it has already computed (factors by rank, the original's responses)."""

    def __init__(
        self,
        bench: Bench,
        run: FixRun,
        report: ModelReport,
        stats: dict[str, Array] | None,
        fit_samples: int,
        widening: float | None = None,
        confirm: bool = False,
    ) -> None:
        self.bench = bench
        self.run = run
        self.report = report  # for the hint of what a retrained bottleneck would save
        self.stats = stats
        self.fit_samples = fit_samples  # the samples the refits sample from
        self.widening = widening  # CL005's expansion ratio, where the recheck runs it
        self.confirm = confirm  # the bench verifies on samples the search does not choose on
        self._factors: dict[tuple[str, str, Any], Factors] = {}  # (target, kind, rank)
        self._responses: dict[tuple[str, PatchSpec], Array] = {}  # the original's, sampled
        # Refitted layers, by what is before them (``_upstream_key``); within one ``spend``.
        self._refits: dict[tuple[str, tuple[tuple[Any, ...], ...]], Choice] = {}

    def search(
        self, targets: Sequence[Target], lossy: Sequence[Target], progress: Progress | None = None
    ) -> Searched:
        """Every target's rewrite: ``targets`` are all the run's, ``lossy`` the approximate
        ones among them that the budget may search (those with data to fit on)."""
        fixed_rank = self.run.fixed_rank
        searched = Searched()
        # Exact rewrites first (and every rewrite at a rank the user fixed), one at a time.
        one_by_one = [t for t in targets if not t.lossy or (fixed_rank and t in lossy)]
        budget = layer_budget(self.run.error_bound) / math.sqrt(max(len(lossy), 1))
        for target in progress(one_by_one) if progress else one_by_one:
            self._place(target, self.select(target, budget), searched)
        if lossy and not fixed_rank:
            searched.choices.update(self.spend(list(lossy), searched))
        return searched

    def _place(self, target: Target, choice: Choice | str, searched: Searched) -> None:
        """A choice among the chosen, or the reason there is none among the skipped."""
        if isinstance(choice, Choice):
            searched.choices[key(target)] = choice
            return
        reason = choice
        if choice == NO_SAVING:
            reason += retrained_hint(self.report, target)
        searched.skipped.append(Skipped(target.code, target.node, reason))

    # -- one target at a time ------------------------------------------------------------
    def edit(self, target: Target, factors: Factors | None) -> Edit:
        return target.edit(factors, Names(self.bench.light))

    def trial(self, target: Target, factors: Factors | None) -> tuple[Edit, Errors]:
        with self.run.timer("factorization"):
            edit = self.edit(target, factors)
        candidate = self.bench.apply([edit])
        errors = self.bench.measure(candidate, f"verifying the rewrite of {target.node!r}")
        if factors is not None:
            self.run.log(
                f"{target.code} {target.node}: {factors.kind} rank {factors.rank}: proxy "
                f"{factors.proxy:.2e}, measured {errors.rel_l2_error:.2e}"
            )
        return edit, errors

    def select(self, target: Target, budget: float, kinds: tuple[str, ...] = KINDS) -> Choice | str:
        """The cheapest confirmed choice within ``budget``, or why there is none."""
        options = self.run.options
        with self.run.timer("factorization"):
            search = target.search(self.stats, kinds)
        if search is None:  # exact: nothing to search
            edit, errors = self.trial(target, None)
            return Choice(target, None, edit, errors, budget)
        if self.run.fixed_rank:
            with self.run.timer("factorization"):
                fixed = search.fixed(options.rank, options.ratio)
            if fixed is None:
                return "the rank given by --rank/--ratio does not lower MACs"
            edit, errors = self.trial(target, fixed)
            return Choice(target, fixed, edit, errors, budget, kinds)
        best: Choice | None = None
        closest = math.inf
        tried: set[Any] = set()
        proxy_budget = MARGIN * budget
        for _ in range(MAX_TRIALS):
            with self.run.timer("factorization"):
                factors = search.cheapest(proxy_budget)
            if factors is None or factors.key in tried:
                break
            tried.add(factors.key)
            edit, errors = self.trial(target, factors)
            measured = errors.rel_l2_error
            closest = min(closest, measured)
            if errors.ok and measured <= budget:
                if best is None or factors.macs < best.factors.macs:  # type: ignore[union-attr]
                    best = Choice(target, factors, edit, errors, budget, kinds)
                if measured >= budget / 2:
                    break
            if not math.isfinite(measured):
                proxy_budget /= 10
            elif factors.proxy <= 1e-9 or measured <= 1e-9:
                if best is not None:
                    break
                proxy_budget /= 10
            else:
                proxy_budget = MARGIN * budget * factors.proxy / measured
        if best is None and target.unsafe and math.isfinite(closest):
            return (
                f"{NO_SAVING} (unsafe: the best projection tried moved the outputs by "
                f"{closest:.2e} relative L2)"
            )
        return best if best is not None else NO_SAVING

    # -- one budget for the whole model (``budget``) -------------------------------------
    def spend(self, lossy: list[Target], searched: Searched) -> Choices:
        """Every lossy rewrite's rank, chosen together: the most aggressive allocation on the
        path of ``budget.allocation_path`` whose whole model holds the tolerance (and
        --min-top1) on the held-out samples, each layer refitted to the original response.
        The exact rewrites already in ``searched`` stay applied; targets left out go to its
        skipped, with the reason."""
        options = self.run.options
        searches: dict[str, tuple[Target, Curve]] = {}
        curves: dict[str, list[Candidate]] = {}
        baselines: dict[str, int] = {}
        self.run.log(f"budget: ranks and kept channels in multiples of {self.run.step}")
        with self.run.timer("factorization"):
            for target in lossy:
                curve = target.curve(
                    self.stats, options.method, options.min_saving, self.widening, self.run.step
                )
                if not curve.candidates:
                    self._place(target, NO_SAVING, searched)
                    continue
                searches[key(target)], curves[key(target)] = (target, curve), curve.candidates
                baselines[key(target)] = curve.baseline
        fixed = [c.edit for c in searched.choices.values()]
        self._refits.clear()  # refitted with other rewrites fixed
        tried: dict[Any, tuple[Choices, Errors]] = {}
        closest: dict[str, float] = {}  # the least error of an allocation with the target
        before = self.report.cost

        def measured(allocation: Allocation, confirm: bool = False) -> Errors:
            if key_of(allocation) not in tried:
                tried[key_of(allocation)] = (self.build(allocation, searches, fixed), UNMEASURED)
            chosen = tried[key_of(allocation)][0]
            combined = self.bench.apply([*fixed, *(c.edit for c in chosen.values())])
            what = "confirming" if confirm else "verifying"
            errors = self.bench.measure(
                combined,
                f"{what} an allocation of the error budget",
                early=not confirm,
                confirm=confirm,
            )
            after = self.bench.macs(combined)
            saving = (
                f"MACs {before.macs:,} -> {after:,}"
                if before is not None and before.macs is not None and after is not None
                else "MACs not known"
            )
            top1 = errors.top1_agreement
            agreement = "" if top1 is None else f", top-1 {top1:.3f} of {errors.top1_samples}"
            if errors.top1_expected is not None:
                agreement += f" (expected {errors.top1_expected:.3f})"
            self.run.log(
                f"budget{' (confirm)' if confirm else ''}: {len(allocation)} rewrites, "
                f"{saving}: rel L2 {errors.rel_l2_error:.2e}{agreement} "
                f"[{'ok' if errors.ok else 'over'}]"
            )
            return errors

        def holds(allocation: Allocation) -> bool:
            errors = measured(allocation)
            tried[key_of(allocation)] = (tried[key_of(allocation)][0], errors)
            for layer in allocation:
                closest[layer] = min(closest.get(layer, math.inf), errors.rel_l2_error)
            return errors.ok

        def confirms(allocation: Allocation) -> bool:
            return measured(allocation, confirm=True).ok

        best = spend(curves, baselines, holds, self.run.log, confirms if self.confirm else None)
        chosen = tried[key_of(best)][0] if best else {}
        for layer, (target, _) in searches.items():
            if layer not in chosen:
                reason = OUT_OF_BUDGET if best else NO_SAVING
                if not best and any(errors.ok for _, errors in tried.values()):
                    # held on the samples the ranks were chosen on, not where verified
                    reason = NOT_CONFIRMED
                if target.unsafe and math.isfinite(closest.get(layer, math.inf)):
                    reason = (
                        f"{reason} (unsafe: the best projection tried moved the outputs by "
                        f"{closest[layer]:.2e} relative L2)"
                    )
                self._place(target, reason, searched)
        for layer, choice in chosen.items():  # each rewrite's own error, alone, as verified
            alone = self.bench.apply([choice.edit])
            what = f"verifying the rewrite of {choice.target.node!r}"
            errors = self.bench.measure(alone, what, confirm=True)
            chosen[layer] = dataclasses.replace(choice, errors=errors)
        return chosen

    def build(
        self,
        allocation: Allocation,
        searches: dict[str, tuple[Target, Curve]],
        fixed: list[Edit],
    ) -> Choices:
        """The rewrites of one allocation, refitted (data-aware) to the original response."""
        chosen: Choices = {}
        with self.run.timer("factorization"):
            for layer, candidate in allocation.items():
                target, curve = searches[layer]
                cached = self._factors.get((layer, candidate.kind, candidate.rank))
                if cached is None:
                    cached = curve.at(candidate.kind, candidate.rank)
                    self._factors[(layer, candidate.kind, candidate.rank)] = cached
                edit = self.edit(target, cached)
                budget = layer_budget(self.run.error_bound)
                chosen[layer] = Choice(target, cached, edit, UNMEASURED, budget)
        if self.stats is not None and self.fit_samples:
            self.refit(chosen, fixed)
        return chosen

    def refit(self, chosen: Choices, fixed: list[Edit]) -> None:
        """One round of response reconstruction (``budget``): each chosen conv refitted, in
        graph order, from the inputs the model with every rewrite (and every refit before it)
        produces to the original model's response (after its ReLU), where that lowers the
        layer's error on the sampled pixels. An ``svd-expand`` form is refitted whole
        (``reduced_rank_refit``), other forms in their last conv (``refit``).

        In order, one layer at a time (Zhang et al.'s asymmetric reconstruction): a refit
        learns to undo the errors of the layers before it, so all refitted from one sampling
        undo those errors twice once the layers before are refitted too (VGG-16: each layer's
        sampled error 0.3%, the model's 2.6% at block3_conv3)."""
        jobs = [
            (layer, job)
            for layer, choice in chosen.items()
            if (job := choice.target.refit_job(choice.edit, choice.factors, self.fit_samples))
        ]
        if not jobs:
            return
        jobs.sort(key=lambda item: item[1].target.conv.index)
        missing = [
            (layer, job) for layer, job in jobs if (layer, job.output) not in self._responses
        ]
        if missing:
            specs = [job.output for _, job in missing]
            found = self.bench.sample(self.bench.light, specs, "sampling the original")
            for (layer, job), rows in zip(missing, found, strict=True):
                self._responses[(layer, job.output)] = rows
        # A conv whose output channels another rewrite prunes is fitted on the kept ones.
        narrowed = {
            pruned.producer_output: list(c.factors.kept)
            for c in chosen.values()
            if (pruned := c.target.pruned(c.factors)) is not None
            and c.factors is not None
            and c.factors.kept is not None
        }
        for layer, job in jobs:
            # The layer named too: a pruning is in every layer's key, its own conv's among them.
            upstream = (layer, _upstream_key(chosen, job.target.conv.index))
            known = self._refits.get(upstream)
            if known is not None:  # the same layer after the same rewrites: the same refit
                chosen[layer] = known
                continue
            model = self.bench.apply([*fixed, *(c.edit for c in chosen.values())])
            # A mixing job reads its features where its output is: that spec sampled once.
            specs = list(dict.fromkeys((job.features, job.output)))
            found = self.bench.sample(model, specs, "sampling the rewritten model")
            sampled = dict(zip(specs, found, strict=True))
            with self.run.timer("factorization"):
                self._refit_layer(
                    chosen, layer, job, sampled[job.features], sampled[job.output], narrowed
                )
            self._refits[upstream] = chosen[layer]
            while len(self._refits) > REFITS_KEPT:  # the oldest first
                del self._refits[next(iter(self._refits))]

    def _refit_layer(
        self,
        chosen: Choices,
        layer: str,
        job: RefitJob,
        features: Array,
        current: Array,
        narrowed: dict[str, list[int]],
    ) -> None:
        """One chosen conv refitted from ``features`` (the rewritten model's, at the patches
        its refitted conv reads) to the original's response; ``current``: the rewritten
        model's output there now. Kept only where it lowers the sampled error."""
        choice, target, factors = chosen[layer], job.target, job.factors
        response = self._responses[(layer, job.output)]
        kept = narrowed.get(job.output.tensor)
        if kept is not None:
            response = response[:, kept]
        last = factors.weights[-1]
        now = factors.bias if factors.bias is not None else target.bias  # the layer's bias
        if job.whole:
            matrix = target.weight.reshape(target.site.cout, -1)
            responses = features.astype(np.float64) @ matrix.T
            rank = int(last.shape[1])
            b, a, bias = reduced_rank_refit(responses, response, rank, target.relu)
            prediction = responses @ (b @ a).T + bias
            b, bias = _widen(b, bias, kept, target.site.cout)
            if b.shape[1] < rank:  # fewer kept channels than the rank: pad with zeros
                b = np.pad(b, ((0, 0), (0, rank - b.shape[1])))
                a = np.pad(a, ((0, rank - a.shape[0]), (0, 0)))
            weights = [(a @ matrix).reshape(factors.weights[0].shape), b.reshape(last.shape)]
        elif job.mix:  # features: the layer's output (kept channels, if narrowed)
            width = features.shape[1]  # the identity: the output as it is
            mixing, bias = refit(features, response, target.relu, (np.eye(width), np.zeros(width)))
            prediction = features.astype(np.float64) @ mixing.T + bias
            mixing, bias = _widen(mixing, bias, kept, target.site.cout, square=True)
            if now is not None:
                bias = bias + mixing @ now.astype(np.float64)
            flat = last.reshape(len(last), -1).astype(np.float64)
            weights = [*factors.weights[:-1], (mixing @ flat).reshape(last.shape)]
        else:
            rows = last.reshape(len(last), -1).astype(np.float64)
            offset = np.zeros(len(rows)) if now is None else now.astype(np.float64)
            if kept is not None:
                rows, offset = rows[kept], offset[kept]
            weight, bias = refit(features, response, target.relu, (rows, offset))
            prediction = features.astype(np.float64) @ weight.T + bias
            weight, bias = _widen(weight, bias, kept, target.site.cout)
            weights = [*factors.weights[:-1], weight.reshape(last.shape)]
        before = relative_error(current, response, target.relu)
        after = relative_error(prediction, response, target.relu)
        self.run.log(f"refit {target.node}: sampled error {before:.3e} -> {after:.3e}")
        if not after < before:
            return
        refitted = dataclasses.replace(factors, weights=weights, bias=bias, method="data-aware")
        chosen[layer] = dataclasses.replace(
            choice, factors=refitted, edit=self.edit(target, refitted)
        )


def _upstream_key(chosen: Choices, index: int) -> tuple[tuple[Any, ...], ...]:
    """What a refit of the conv at node ``index`` depends on, as the allocation names it
    (the same for two layers of one allocation: the memo's key names the layer too):
    the form and rank of every chosen rewrite up to that conv in graph order (their refits
    follow from those), and of every pruning and every rewrite not placed by a conv, wherever
    they are (a pruning narrows the conv before it)."""
    found = []
    for layer, choice in chosen.items():
        conv = getattr(choice.target, "conv", None)
        factors = choice.factors
        pruning = choice.target.pruned(factors) is not None
        if conv is None or pruning or conv.index <= index:
            found.append((layer, factors.kind, factors.rank) if factors else (layer,))
    return tuple(sorted(found, key=str))


def _widen(
    rows: Array, bias: Array, kept: list[int] | None, count: int, square: bool = False
) -> tuple[Array, Array]:
    """Rows fitted for the ``kept`` output channels back in place among ``count`` (zeros for
    the others, which the pruning of the consumer slices away); ``square``: a map among the
    kept channels, its columns put back in place too."""
    if kept is None:
        return rows, bias
    if square:
        full = np.zeros((count, count))
        full[np.ix_(kept, kept)] = rows
    else:
        full = np.zeros((count, *rows.shape[1:]))
        full[kept] = rows
    full_bias = np.zeros(count)
    full_bias[kept] = bias
    return full, full_bias
