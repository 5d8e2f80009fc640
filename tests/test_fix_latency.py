"""Issue 9, items 1 and 5, and issue 16, item 5: `fix` times the model before and after in
onnxruntime (interleaved, warm-up excluded, median and spread of at least 10 runs, a 95%
interval of the ratio, on a stated target: threads, batch, provider), `--objective latency`
keeps only rewrites faster with confidence, `--objective macs` drops those slower with
confidence, and `fix` says where its time and memory went. No test here asserts that anything
runs faster on this machine: the decisions are tested on planted timings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from fix_helpers import ort_run

from convlint import fixtures
from convlint.cli import main
from convlint.engine import Settings
from convlint.registry import load_registry
from convlint.rewrite.latency import (
    MIN_RUNS,
    Latency,
    Target,
    ratio_interval,
    region,
    summarize,
    t_quantile,
    undecided,
)
from convlint.rewrite.pipeline import FixOptions, fix
from convlint.rewrite.settle import Settler
from convlint.rewrite.verify import TIME_ROUNDS, Runtime

LATENCY_FIELDS = {
    "before", "after", "ratio", "runs", "threads", "before_iqr", "after_iqr", "interleaving",
    "interval", "batch", "provider",
}  # fmt: skip
CPU = "CPUExecutionProvider"


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    return fixtures.save(fixtures.conv3x3(planted_rank=16, hw=14), tmp_path / "conv.onnx")


def _fix(model: Path, *argv: str) -> list[str]:
    return ["fix", str(model), "-o", str(model.with_name("out.onnx")), "--allow-noise", *argv]


def _json(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out)


def test_latency_is_measured_by_default(planted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = _fix(planted, "--method", "weight", "--samples", "2", "--format", "json")
    assert main(argv) == 0
    model = _json(capsys)
    assert model["objective"] == "macs"
    latency = model["latency"]
    assert set(latency) == LATENCY_FIELDS
    assert latency["runs"] >= MIN_RUNS and latency["threads"] >= 1
    assert latency["before"] > 0 and latency["after"] > 0
    assert latency["ratio"] == pytest.approx(latency["after"] / latency["before"])
    assert latency["interleaving"] == "runs"  # small models: both loaded, alternating
    low, high = latency["interval"]
    assert 0 < low <= high
    assert (latency["batch"], latency["provider"]) == (1, CPU)
    # The rewrite, timed alone by default (--objective macs too), carries the same fields.
    (rewrite,) = model["rewrites"]
    assert set(rewrite["latency"]) == LATENCY_FIELDS


def test_text_states_latency_and_where_the_time_went(
    planted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_fix(planted, "--method", "weight", "--samples", "2")) == 0
    lines = capsys.readouterr().out.splitlines()
    summary = next(line for line in lines if line.startswith("model: "))
    assert "; latency " in summary and "x, 95% CI [" in summary
    assert "interleaved runs in " in summary and " session pairs, IQR " in summary
    assert "thread" in summary and ", batch 1, CPUExecutionProvider)" in summary
    assert lines[-1].startswith("time: analysis ")
    for stage in ("inputs", "factorization", "onnxruntime", "latency", "writing"):
        assert f"{stage} " in lines[-1]
    assert "; peak memory " in lines[-1] and "onnxruntime's process" in lines[-1]


def test_no_latency(planted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = _fix(planted, "--method", "weight", "--samples", "2", "--no-latency")
    assert main([*argv, "--format", "json"]) == 0
    model = _json(capsys)
    assert model["latency"] is None and model["objective"] == "macs"
    assert "latency" not in model["timings"]
    assert main([*argv, "--objective", "latency"]) == 2
    err = capsys.readouterr().err
    assert "--objective latency (objective='latency') needs the timing that --no-latency" in err


def test_objective_latency_keeps_a_faster_rewrite(
    planted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _fix(planted, "--method", "weight", "--samples", "2", "--objective", "latency")
    assert main([*argv, "--format", "json"]) == 0
    model = _json(capsys)
    assert model["objective"] == "latency"
    (rewrite,) = model["rewrites"]
    assert set(rewrite["latency"]) == LATENCY_FIELDS  # its nodes alone


def _timed(
    before: float = 1e-3, after: float = 1.5e-3, interval: tuple[float, float] = (1.4, 1.6)
) -> Latency:
    """A planted timing: the medians and the interval of their ratio."""
    return Latency(before, after, MIN_RUNS, 2, 1e-5, 1e-5, "runs", interval, 4, 1, CPU)


def _fix_with(planted: Path, **options: Any) -> Any:
    out = planted.with_name("out.onnx")
    # The planted rank is in the weight: fitted on seeded noise on purpose.
    options = {"method": "weight", "samples": 2, "allow_noise": True, **options}
    return fix(planted, load_registry(), Settings(), FixOptions(out, **options))


def test_objective_latency_drops_a_rewrite_that_runs_slower(
    planted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fewer MACs but slower in onnxruntime (planted: the timing says so): dropped, with both
    numbers and the interval; nothing is rewritten, OUT is the same model."""
    monkeypatch.setattr(Settler, "time_rewrite", lambda self, choice: _timed())
    result = _fix_with(planted, objective="latency")
    assert not result.rewrites and result.written and result.latency is None
    (skip,) = result.skipped
    assert skip.reason == (
        "dropped (--objective latency): it lowers MACs 115,605,504 -> 8,028,160, but its nodes "
        "are not faster with 95% confidence in onnxruntime: 1.00 ms -> 1.50 ms (1.50x, 95% CI "
        "[1.40, 1.60]), median of 10 runs each, 2 threads, batch 1, CPUExecutionProvider"
    )


def test_objective_macs_drops_a_rewrite_slower_with_confidence(
    planted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default objective keeps what lowers MACs, unless the timing says, with confidence,
    that it runs slower: then dropped, with both numbers."""
    monkeypatch.setattr(Settler, "time_rewrite", lambda self, choice: _timed())
    result = _fix_with(planted)
    assert result.objective == "macs" and not result.rewrites and result.written
    (skip,) = result.skipped
    assert skip.reason == (
        "dropped: it lowers MACs 115,605,504 -> 8,028,160, but its nodes run slower in "
        "onnxruntime (95% confidence): 1.00 ms -> 1.50 ms (1.50x, 95% CI [1.40, 1.60]), "
        "median of 10 runs each, 2 threads, batch 1, CPUExecutionProvider"
    )
    # --no-latency: no timing, so nothing is dropped for it.
    assert len(_fix_with(planted, latency=False).rewrites) == 1


@pytest.mark.parametrize(
    ("interval", "kept_by_latency", "kept_by_macs"),
    [
        ((0.90, 0.98), True, True),  # faster with confidence
        ((0.95, 1.05), False, True),  # undecided: latency wants proof, macs keeps
        ((1.01, 1.10), False, False),  # slower with confidence
    ],
)
def test_what_each_objective_keeps_follows_the_interval(
    planted: Path,
    monkeypatch: pytest.MonkeyPatch,
    interval: tuple[float, float],
    kept_by_latency: bool,
    kept_by_macs: bool,
) -> None:
    planted_timing = _timed(1e-3, 1e-3 * sum(interval) / 2, interval)
    monkeypatch.setattr(Settler, "time_rewrite", lambda self, choice: planted_timing)
    monkeypatch.setattr(Settler, "time_models", lambda self, before, after, what: planted_timing)
    assert bool(_fix_with(planted, objective="latency").rewrites) is kept_by_latency
    result = _fix_with(planted, objective="macs")
    assert bool(result.rewrites) is kept_by_macs
    if kept_by_macs:
        assert result.latency is planted_timing and result.rewrites[0].latency is planted_timing


def test_the_whole_model_decides_by_the_same_rule(
    planted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        Settler, "time_rewrite", lambda self, choice: _timed(1e-3, 0.5e-3, (0.4, 0.6))
    )
    monkeypatch.setattr(Settler, "time_models", lambda self, before, after, what: _timed())
    for objective, how in (
        ("latency", "dropped (--objective latency): the rewritten model is not faster with 95% "),
        ("macs", "dropped: the rewritten model runs slower (95% confidence): "),
    ):
        result = _fix_with(planted, objective=objective)
        assert not result.rewrites
        (skip,) = result.skipped
        assert skip.reason.startswith(how)
        assert "1.00 ms -> 1.50 ms (1.50x, 95% CI [1.40, 1.60]), median of 10 runs each" in (
            skip.reason
        )


def test_summary_is_median_and_interquartile_range() -> None:
    times = [[1.0, 2.0, 3.0, 4.0, 100.0], [0.5, 0.5, 0.6, 0.7, 0.5]]
    latency = summarize(times, [5], Target(3, 1, CPU), resident=True)
    assert (latency.before, latency.after) == (3.0, 0.5)
    assert latency.before_iqr == pytest.approx(2.0) and latency.runs == 5
    assert latency.ratio == pytest.approx(0.5 / 3.0)
    assert latency.sessions == 1
    assert latency.text().startswith(
        "latency 3.00 s -> 500.00 ms (0.17x, 95% CI [0.01, 0.50]; median of 5 interleaved runs "
        "in 1 session pair, IQR 2.00 s/100.00 ms; 3 threads, batch 1, CPUExecutionProvider)"
    )


def _seeded_runs(
    before: float, after: float, runs: int = 40, seed: int = 7
) -> tuple[list[float], list[float]]:
    """Paired timings with a shared drift (other load, both models) and noise of their own."""
    rng = np.random.default_rng(seed)
    drift = 1 + 0.3 * rng.random(runs)
    first = before * drift * (1 + 0.1 * rng.standard_normal(runs))
    second = after * drift * (1 + 0.1 * rng.standard_normal(runs))
    return first.tolist(), second.tolist()


def test_interval_of_a_clearly_faster_pair_lies_below_one() -> None:
    before, after = _seeded_runs(1e-3, 0.6e-3)
    low, high = ratio_interval(before, after, [10, 10, 10, 10])
    assert (low, high) == pytest.approx((0.5651, 0.6152), abs=1e-4)  # median ratio 0.597
    assert high < 1 and not undecided([before, after], [10, 10, 10, 10])
    assert ratio_interval(before, after, [10, 10, 10, 10]) == (low, high)  # deterministic


def test_interval_of_identical_distributions_holds_one() -> None:
    before, after = _seeded_runs(1e-3, 1e-3)
    low, high = ratio_interval(before, after, [10, 10, 10, 10])
    assert (low, high) == pytest.approx((0.9418, 1.0253), abs=1e-4)
    assert low < 1 < high and undecided([before, after], [10, 10, 10, 10])


def test_interval_holds_the_spread_between_sessions() -> None:
    """Four session pairs, each with a bias of its own (a pair of sessions on a busy machine
    shows up to 10% on identical models), three of them slow: taken as one round the runs
    claim "slower"; with the round as the unit, the interval holds 1."""
    rng = np.random.default_rng(3)
    before: list[float] = []
    after: list[float] = []
    for bias in (1.08, 0.96, 1.06, 1.05):
        base = 1 + 0.02 * rng.standard_normal(25)
        before.extend(base.tolist())
        after.extend((bias * base * (1 + 0.02 * rng.standard_normal(25))).tolist())
    low, high = ratio_interval(before, after)  # as one round: too sure
    assert (low, high) == pytest.approx((1.0392, 1.0663), abs=1e-4)
    low, high = ratio_interval(before, after, [25, 25, 25, 25])
    assert (low, high) == pytest.approx((0.9485, 1.1321), abs=1e-4)


def test_interval_of_no_runs_is_unknown() -> None:
    low, high = ratio_interval([], [])
    assert np.isnan(low) and np.isnan(high)
    latency = _timed(interval=(float("nan"), float("nan")))
    assert latency.as_dict()["interval"] == [None, None]
    assert not latency.faster and not latency.slower


@pytest.mark.parametrize("resident", [True, False])
def test_runtime_times_models_interleaved(tmp_path: Path, resident: bool) -> None:
    model = fixtures.conv3x3(hw=6)
    feed = {"input": np.ones((1, 256, 6, 6), np.float32)}
    with Runtime(60) as runtime:
        assert CPU in runtime.providers
        times, rounds = runtime.time([model, model], feed, 1, CPU, MIN_RUNS, 0.0, 0.0, resident)
    assert len(times) == 2
    per_round = -(-MIN_RUNS // TIME_ROUNDS)
    assert rounds == [per_round] * TIME_ROUNDS  # no budget: the minimum, in fresh sessions
    assert [len(t) for t in times] == [sum(rounds), sum(rounds)]
    assert all(t > 0 for run in times for t in run)


def test_region_cuts_out_a_rewrite_with_its_weights() -> None:
    model = fixtures.linear_conv_chain_bad()
    nodes = [n for n in model.graph.node if n.op_type == "Conv"][:1]
    cut = region(model, nodes, [nodes[0].output[0]], {}, {})
    assert cut is None  # its input has no shape given: not timed
    from convlint.rewrite.latency import InputInfo, random_feed

    inputs = {nodes[0].input[0]: InputInfo((1, 64, 14, 14), onnx.TensorProto.FLOAT)}
    cut = region(model, nodes, [nodes[0].output[0]], inputs, {})
    assert cut is not None
    assert {t.name for t in cut.graph.initializer} == {t for t in nodes[0].input[1:] if t}
    (outputs,) = ort_run(cut, [random_feed(inputs)])
    assert outputs[0].shape == (1, 256, 14, 14)


def test_a_model_the_timing_session_refuses_still_gets_fixed(
    planted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timing runs with every graph optimization; a model only that session refuses gets
    no latency (a note says why), not a failed fix."""
    from convlint.rewrite.verify import RuntimeFailure

    def refuse(self: Runtime, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeFailure("onnxruntime failed while timing the models: planted")

    monkeypatch.setattr(Runtime, "time", refuse)
    out = planted.with_name("out.onnx")
    result = fix(
        planted,
        load_registry(),
        Settings(),
        FixOptions(out, method="weight", samples=2, allow_noise=True),
    )
    assert result.written and len(result.rewrites) == 1 and result.latency is None
    assert "latency not measured: onnxruntime failed while timing the models: planted" in (
        result.report.notes
    )


def test_interval_over_rounds_is_students_t_of_their_log_ratios() -> None:
    before, after = _seeded_runs(1e-3, 0.8e-3, runs=40)
    low, high = ratio_interval(before, after, [30, 10])
    ratio = float(np.median(after) / np.median(before))
    assert low < ratio < high < 1
    first, second = np.asarray(before), np.asarray(after)
    logs = np.log(
        [
            np.median(second[:30]) / np.median(first[:30]),
            np.median(second[30:]) / np.median(first[30:]),
        ]
    )
    spread = 12.706 * np.std(logs, ddof=1) / np.sqrt(2)  # t at 97.5%, one degree of freedom
    assert (low, high) == pytest.approx(
        np.exp([logs.mean() - spread, logs.mean() + spread]), rel=1e-4
    )
    assert (low, high) == pytest.approx((0.7694, 0.8274), abs=1e-4)  # ratio 0.796


@pytest.mark.parametrize(
    ("probability", "freedom", "quantile"),
    [(0.975, 1, 12.706), (0.975, 3, 3.182), (0.975, 8, 2.306), (0.975, 30, 2.042),
     (0.995, 2, 9.925), (0.995, 8, 3.355)],
)  # fmt: skip
def test_t_quantiles_are_the_tables(probability: float, freedom: int, quantile: float) -> None:
    assert t_quantile(probability, freedom) == pytest.approx(quantile, abs=1e-3)
