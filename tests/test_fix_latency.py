"""Issue 9, items 1 and 5: `fix` times the model before and after in onnxruntime (interleaved,
warm-up excluded, median and spread of at least 10 runs, threads stated), `--objective latency`
keeps only rewrites that run faster, and `fix` says where its time and memory went."""

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
from convlint.rewrite.latency import MIN_RUNS, Latency, region, summarize
from convlint.rewrite.pipeline import Fixer, FixOptions, fix
from convlint.rewrite.verify import TIME_BLOCKS, Runtime

LATENCY_FIELDS = {
    "before", "after", "ratio", "runs", "threads", "before_iqr", "after_iqr", "interleaving",
}  # fmt: skip


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    return fixtures.save(fixtures.conv3x3(planted_rank=16, hw=14), tmp_path / "conv.onnx")


def _fix(model: Path, *argv: str) -> list[str]:
    return ["fix", str(model), "-o", str(model.with_name("out.onnx")), *argv]


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
    # A 3×3 256->256 conv at rank 16 does 15x fewer MACs: measured faster, by a wide margin.
    assert latency["ratio"] < 0.8


def test_text_states_latency_and_where_the_time_went(
    planted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_fix(planted, "--method", "weight", "--samples", "2")) == 0
    lines = capsys.readouterr().out.splitlines()
    summary = next(line for line in lines if line.startswith("model: "))
    assert (
        "; latency " in summary
        and "x; median of " in summary
        and "interleaved runs, IQR" in summary
    )
    assert "thread" in summary
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
    assert "--objective latency needs the timing" in capsys.readouterr().err


def test_objective_latency_keeps_a_faster_rewrite(
    planted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _fix(planted, "--method", "weight", "--samples", "2", "--objective", "latency")
    assert main([*argv, "--format", "json"]) == 0
    model = _json(capsys)
    assert model["objective"] == "latency"
    (rewrite,) = model["rewrites"]
    assert set(rewrite["latency"]) == LATENCY_FIELDS  # its nodes alone
    assert rewrite["latency"]["ratio"] < 0.99 and model["latency"]["ratio"] < 0.99


def _slow(before: float = 1e-3, after: float = 1.5e-3) -> Latency:
    return Latency(before, after, MIN_RUNS, 2, 1e-5, 1e-5, "runs")


def test_objective_latency_drops_a_rewrite_that_runs_slower(
    planted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fewer MACs but slower in onnxruntime (planted: the timing says so): dropped, with both
    numbers; nothing is rewritten, OUT is the same model."""
    monkeypatch.setattr(Fixer, "time_rewrite", lambda self, choice: _slow())
    out = planted.with_name("out.onnx")
    options = FixOptions(out, method="weight", samples=2, objective="latency")
    result = fix(planted, load_registry(), Settings(), options)
    assert not result.rewrites and result.written and result.latency is None
    (skip,) = result.skipped
    assert skip.reason == (
        "dropped (--objective latency): it lowers MACs 115,605,504 -> 8,028,160, but its nodes "
        "run no faster in onnxruntime: 1.00 ms -> 1.50 ms (1.50x) (median of 10 runs each)"
    )
    # --objective macs keeps it, whatever the timing says.
    result = fix(planted, load_registry(), Settings(), FixOptions(out, method="weight", samples=2))
    assert len(result.rewrites) == 1


def test_objective_latency_drops_when_the_whole_model_is_not_faster(
    planted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Fixer, "time_rewrite", lambda self, choice: _slow(1e-3, 0.5e-3))
    monkeypatch.setattr(Fixer, "time_models", lambda self, before, after, what: _slow())
    out = planted.with_name("out.onnx")
    options = FixOptions(out, method="weight", samples=2, objective="latency")
    result = fix(planted, load_registry(), Settings(), options)
    assert not result.rewrites
    (skip,) = result.skipped
    assert "the rewritten model ran no faster (1.00 ms -> 1.50 ms (1.50x))" in skip.reason


def test_summary_is_median_and_interquartile_range() -> None:
    times = [[1.0, 2.0, 3.0, 4.0, 100.0], [0.5, 0.5, 0.6, 0.7, 0.5]]
    latency = summarize(times, threads=3, resident=True)
    assert (latency.before, latency.after) == (3.0, 0.5)
    assert latency.before_iqr == pytest.approx(2.0) and latency.runs == 5
    assert latency.ratio == pytest.approx(0.5 / 3.0)
    assert latency.text().startswith("latency 3.00 s -> 500.00 ms (0.17x; median of 5")


@pytest.mark.parametrize("resident", [True, False])
def test_runtime_times_models_interleaved(tmp_path: Path, resident: bool) -> None:
    model = fixtures.conv3x3(hw=6)
    feed = {"input": np.ones((1, 256, 6, 6), np.float32)}
    with Runtime(60) as runtime:
        times = runtime.time([model, model], feed, 1, MIN_RUNS, 0.0, resident)
    assert len(times) == 2
    expected = MIN_RUNS if resident else TIME_BLOCKS * -(-MIN_RUNS // TIME_BLOCKS)
    assert [len(t) for t in times] == [expected, expected]
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
    result = fix(planted, load_registry(), Settings(), FixOptions(out, method="weight", samples=2))
    assert result.written and len(result.rewrites) == 1 and result.latency is None
    assert "latency not measured: onnxruntime failed while timing the models: planted" in (
        result.report.notes
    )
