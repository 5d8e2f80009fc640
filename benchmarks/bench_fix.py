"""What `convlint fix` costs and what it buys, on full-size networks with planted low-rank weights.

For each model, `convlint fix MODEL -o OUT --format json` runs as a user runs it, in its own
process, and the script reports:

- wall time, and where it went (the report's ``timings``: analysis, inputs, factorization,
  onnxruntime, latency, writing);
- peak memory: the largest resident set in `fix`'s process tree as the OS counts it
  (``wait4``, what ``/usr/bin/time`` prints), and the report's own figures for `fix`'s process
  and onnxruntime's;
- the MACs ratio after/before, and the latency ratio after/before that `fix` measured.

Models (random weights, every 3×3 conv reading >= 128 channels planted at rank C_in/8):

- VGG-16 (138 M params, 553 MB of weights in the file): ten of its 3×3 convs are flagged (CL001)
  and factorized;
- ResNet-50 (25.6 M params, 102 MB): its 3×3 convs already sit behind 1×1 reductions, so no rule
  flags them and `fix` rewrites nothing, planted ranks or not: its row is the fixed cost of a
  `fix` run on a clean network.

    python benchmarks/bench_fix.py [--method data-aware|weight] [--samples 4]
        [--objective macs|latency] [--only vgg16|resnet50]

``--trained`` measures instead what `fix` buys on trained networks from PyPI wheels, with
calibration and held-out data made in each model's own domain (``trained_models.py``): per model,
the method of each rewritten layer (from `fix`'s JSON), the MACs ratio (``convlint stats``), and,
by an independent onnxruntime script (``heldout_eval.py``) on the held-out samples, the latency
ratio on 2 intra-op threads with its spread, the top-1 agreement with the original (count and
95% Wilson interval) and the relative L2 error of the outputs::

    python benchmarks/bench_fix.py --trained [--model vgg16-mri] [--budget "--min-top1 0.99 ..."]
        [--cache ~/.cache/convlint-bench] [--runs 60] [--threads 2]

``--fixtures RUNS`` measures instead what chose the default objective: on small fixtures with
planted ranks, the MACs ratio of each rewrite against the latency ratio `fix` measures and its
95% interval, and what each objective kept, over RUNS runs (``python benchmarks/bench_fix.py
--fixtures 3``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from convlint import fixtures
from convlint.fixtures._builder import low_rank_conv_weight

STAGES = ("analysis", "inputs", "factorization", "onnxruntime", "latency", "writing")


def plant(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every 3×3 conv weight reading >= 128 channels replaced by one of rank C_in/8."""
    rng = np.random.default_rng(0)
    for tensor in model.graph.initializer:
        shape = tuple(tensor.dims)
        if len(shape) == 4 and shape[2:] == (3, 3) and shape[1] >= 128:
            cout, cin = shape[:2]
            weight = low_rank_conv_weight(rng, cout, cin, 3, 3, cin // 8, 1.0 / np.sqrt(cin * 9))
            tensor.CopyFrom(numpy_helper.from_array(weight, tensor.name))
    return model


MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "vgg16": lambda: plant(fixtures.vgg16(weights="random")),
    "resnet50": lambda: plant(fixtures.resnet50(weights="random")),
}


def run_fix(path: Path, argv: list[str]) -> tuple[dict[str, Any], float, int]:
    """The JSON report, the wall time and the peak resident memory of `fix`'s process tree
    (``wait4``: `fix` and the onnxruntime process it waited for)."""
    out = path.with_name("fixed.onnx")
    command = [sys.executable, "-m", "convlint", "fix", str(path), "-o", str(out), *argv]
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"fix failed ({proc.returncode}): {stderr.read().decode()[-2000:]}")
        report: dict[str, Any] = json.loads(stdout.read())
    return report, wall, int(usage.ru_maxrss) * 1024


def build(name: str, path: Path) -> None:
    """Build and save one model (in its own process: the bench's stays small, so that the
    `fix` it starts does not inherit a large high-water mark)."""
    model = MODELS[name]()
    weights = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    fixtures.save(model, path)
    path.with_suffix(".bytes").write_text(str(weights))


def measure(name: str, argv: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-fix-") as tmp:
        path = Path(tmp) / f"{name}.onnx"
        subprocess.run([sys.executable, __file__, "--build", name, str(path)], check=True)
        weights = int(path.with_suffix(".bytes").read_text())
        report, wall, peak = run_fix(path, argv)
    return {"name": name, "weights": weights, "report": report, "wall": wall, "peak": peak}


FIXTURES: dict[str, Callable[[], onnx.ModelProto]] = {
    "conv3x3 256->256 7x7, rank 48": lambda: fixtures.conv3x3(planted_rank=48, hw=7),
    "conv3x3 256->256 14x14, rank 48": lambda: fixtures.conv3x3(planted_rank=48, hw=14),
    "conv3x3 256->256 28x28, rank 48": lambda: fixtures.conv3x3(planted_rank=48, hw=28),
    "conv3x3 256->256 7x7, rank 192": lambda: fixtures.conv3x3(planted_rank=192, hw=7),
    "conv3x3 256->256 7x7, rank 224": lambda: fixtures.conv3x3(planted_rank=224, hw=7),
    "conv3x3 256->256 14x14, rank 224": lambda: fixtures.conv3x3(planted_rank=224, hw=14),
    "inception_3a_naive, rank 24": lambda: fixtures.inception_3a_naive(planted_rank=24),
    "spatial_expansion_bad, rank 8": lambda: fixtures.spatial_expansion_bad(planted_rank=8),
    "linear_conv_chain_bad (fold)": fixtures.linear_conv_chain_bad,
}


def fixture_table(repeat: int) -> None:
    """Per fixture: the MACs ratio of its rewrites (untimed), the latency ratio `fix` measured
    under --objective macs (median over ``repeat`` runs, and their range), the 95% interval
    of that ratio (median of the runs' low and high ends) and in how many runs it held 1, and
    how often each objective kept the rewrites over as many runs."""
    from convlint.engine import Settings
    from convlint.registry import load_registry
    from convlint.rewrite.pipeline import FixOptions, fix

    registry = load_registry()
    # Noise is what a planted rank is recovered from; --min-saving 0 keeps the rewrites that
    # save 3%, whose timing is what this table is about.
    common: dict[str, Any] = {"method": "weight", "allow_noise": True, "min_saving": 0.0}
    print(
        f"fixtures, --method weight --allow-noise --min-saving 0, {repeat} runs each, "
        f"{os.cpu_count()} CPUs"
    )
    header = [
        "fixture", "rewrites", "MACs ratio", "latency ratio (median, range)",
        "95% interval (median ends)", "undecided", "kept by macs", "kept by latency",
    ]  # fmt: skip
    rows = [header]
    for label, build_model in FIXTURES.items():
        with tempfile.TemporaryDirectory(prefix="bench-fix-") as tmp:
            path = fixtures.save(build_model(), Path(tmp) / "model.onnx")
            out = Path(tmp) / "out.onnx"
            untimed = fix(path, registry, Settings(), FixOptions(out, latency=False, **common))
            count, macs = len(untimed.rewrites), "-"
            before, after = untimed.report.cost, untimed.cost_after
            if count and before and after and before.macs and after.macs:
                macs = f"{after.macs / before.macs:.2f}"
            ratios, lows, highs, undecided, by_macs, by_latency = [], [], [], 0, 0, 0
            for _ in range(repeat):
                result = fix(path, registry, Settings(), FixOptions(out, **common))
                by_macs += len(result.rewrites)
                if result.latency is not None:
                    ratios.append(result.latency.ratio)
                    low, high = result.latency.interval
                    lows.append(low)
                    highs.append(high)
                    undecided += low <= 1 <= high
                options = FixOptions(out, objective="latency", **common)
                by_latency += len(fix(path, registry, Settings(), options).rewrites)
        latency, interval = "- (dropped)", "-"
        if ratios:
            latency = f"{float(np.median(ratios)):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
            interval = f"[{float(np.median(lows)):.2f}, {float(np.median(highs)):.2f}]"
        rows.append(
            [
                label,
                str(count),
                macs,
                latency,
                interval,
                f"{undecided}/{len(ratios)}",
                f"{by_macs}/{repeat * count}",
                f"{by_latency}/{repeat * count}",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for line in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


def _ratio(before: float | None, after: float | None) -> str:
    return "-" if not before or after is None else f"{after / before:.2f}"


def row(result: dict[str, Any]) -> list[str]:
    report = result["report"]
    cost_before = report["cost"] or {}
    verification = report.get("verification") or {}
    latency = report.get("latency")
    memory = report.get("peak_memory") or {}
    timings = report.get("timings") or {}
    gb = 1e9
    return [
        result["name"],
        f"{result['weights'] / 1e6:,.0f} MB",
        str(len(report["rewrites"])),
        f"{result['wall']:.1f}",
        f"{result['peak'] / gb:.2f}",
        f"{(memory.get('fix') or 0) / gb:.2f} / {(memory.get('onnxruntime') or 0) / gb:.2f}",
        _ratio(cost_before.get("macs"), verification.get("macs_after")),
        "- (no rewrite)"
        if latency is None
        else f"{latency['ratio']:.2f} ({latency['before'] * 1e3:.0f} -> "
        f"{latency['after'] * 1e3:.0f} ms)",
        " / ".join(f"{timings.get(stage, 0.0):.1f}" for stage in STAGES),
        f"{verification.get('rel_l2_error') or 0:.1e}",
    ]


def _cli(command: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "convlint", command, *args],
        capture_output=True,
        text=True,
        check=False,
    )


def _count(kept: Any) -> int:
    """``kept_channels`` as a count (the JSON gives the list of kept indices, or a count)."""
    return len(kept) if isinstance(kept, list) else int(kept)


def _total_macs(path: Path, shape: list[str]) -> int | None:
    proc = _cli("stats", str(path), "--format", "json", *shape)
    if proc.returncode != 0:
        raise SystemExit(f"stats {path} failed: {proc.stderr.strip()}")
    macs = json.loads(proc.stdout)["total"]["macs"]
    return None if macs is None else int(macs)


def trained_model(
    name: str, budget: list[str] | None, cache: Path, runs: int, threads: int
) -> None:
    """Build the model's data, run `fix` on it as a user does, measure on the held-out samples."""
    import trained_models  # beside this script

    model = next(m for m in trained_models.MODELS if m.name == name)
    folder = cache / "data" / name
    if not (folder / "heldout.npz").exists():
        trained_models.build(model, cache, cache / "data")
    original, calib, heldout = folder / "model.onnx", folder / "calib.npz", folder / "heldout.npz"
    with np.load(calib) as archive:
        calib_shape = archive[model.input_name].shape
    graph_input = next(i for i in onnx.load(original).graph.input if i.name == model.input_name)
    rank = len(graph_input.type.tensor_type.shape.dim)
    per_sample = calib_shape[1:] if len(calib_shape) == rank + 1 else (1, *calib_shape[1:])
    sample_shape = "x".join(str(d) for d in per_sample)
    shape = ["--input-shape", f"{model.input_name}={sample_shape}"]
    fixed = folder / "fixed.onnx"
    fixed.unlink(missing_ok=True)
    budget = list(model.budget) if budget is None else budget
    argv = ["--inputs", str(calib), "--samples", str(calib_shape[0]), *shape, *budget]
    start = time.perf_counter()
    proc = _cli("fix", str(original), "-o", str(fixed), "--format", "json", *argv)
    wall = time.perf_counter() - start
    print(f"\n{name}: {model.description}")
    print(f"  {model.wheel.requirement}; calib {calib_shape[0]}, held-out from disjoint sources")
    print(
        f"  convlint fix MODEL -o OUT {' '.join(a if '/' not in a else Path(a).name for a in argv)}"
    )
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        print(f"  fix failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
        return
    report = json.loads(proc.stdout)
    (folder / "fix.json").write_text(proc.stdout)
    (folder / "fix.log").write_text(proc.stderr)
    model_report = report["models"][0] if "models" in report else report
    rewrites = model_report.get("rewrites") or []
    if proc.returncode == 1 or not fixed.exists():
        print(f"  fix exit {proc.returncode}: verification failed, nothing written ({wall:.0f} s)")
        return
    rows = [["node", "code", "kind", "method", "rank / kept", "layer MACs ratio"]]
    for rewrite in rewrites:
        kept = rewrite.get("kept_channels")
        rows.append([
            rewrite["node"], rewrite["code"], rewrite.get("kind", "-"), rewrite.get("method", "-"),
            str(rewrite.get("rank")) if kept is None else f"{_count(kept)} ch",
            _ratio(rewrite.get("macs_before"), rewrite.get("macs_after")),
        ])  # fmt: skip
    skipped = model_report.get("skipped") or []
    print(f"  fix: {len(rewrites)} rewrites, {len(skipped)} skipped, {wall:.0f} s")
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for line in rows:
            print("    " + "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
    reasons = sorted({s.get("reason", "") for s in skipped})
    for reason in reasons[:4]:
        print(f"    skipped: {reason}")
    macs_before, macs_after = _total_macs(original, shape), _total_macs(fixed, shape)
    measured = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("heldout_eval.py")), str(original),
         str(fixed), str(heldout), "--threads", str(threads), "--runs", str(runs)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(measured.stdout)
    latency = result["latency"]
    low, high = latency["ratio_interval"]
    print(
        f"  held-out ({result['samples']} samples, independent onnxruntime script): "
        f"MACs ratio {_ratio(macs_before, macs_after)}, "
        f"latency ratio {latency['ratio']:.2f} (95% CI {low:.2f}-{high:.2f}; "
        f"{latency['before_ms']:.1f} -> {latency['after_ms']:.1f} ms median, {threads} threads, "
        f"{latency['runs']} interleaved runs)"
    )
    if "top1_agree" in result:
        t_low, t_high = result["top1_interval"]
        print(
            f"  top-1 agreement {result['top1_agree']}/{result['samples']} = "
            f"{result['top1_agreement']:.1%} (95% Wilson {t_low:.1%}-{t_high:.1%}), "
            f"rel L2 {result['rel_l2']:.2e} (per sample median {result['rel_l2_median']:.2e}, "
            f"max {result['rel_l2_max']:.2e})"
        )
        if "positions" in result:
            print(
                f"  (a sequence of {result['positions']} positions: a sample agrees when every "
                f"position does; positions agreeing {result['position_agreement']:.2%})"
            )
    else:
        print(f"  rel L2 {result['rel_l2']:.2e} (per sample median {result['rel_l2_median']:.2e})")
    verification = model_report.get("verification") or {}
    own = model_report.get("latency") or {}
    calibration = model_report.get("calibration") or {}
    print(
        f"  fix's own report ({calibration.get('fit')} samples fitted, "
        f"{calibration.get('verify')} verified): rel L2 {verification.get('rel_l2_error')}, "
        f"top-1 {verification.get('top1_agreement')} {verification.get('top1_agreement_interval')}"
        f" (expected from margins {verification.get('top1_expected_agreement')})"
        f", latency ratio {own.get('ratio')} {own.get('interval')}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--method", choices=("data-aware", "weight"), default="data-aware")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--objective", choices=("macs", "latency"), default="macs")
    parser.add_argument("--only", choices=tuple(MODELS), help="one model")
    parser.add_argument(
        "--fixtures",
        type=int,
        metavar="RUNS",
        help="instead: latency against MACs on small planted fixtures, RUNS runs of fix each",
    )
    parser.add_argument("--trained", action="store_true", help="instead: trained models from PyPI")
    parser.add_argument("--model", action="append", help="with --trained: one model (repeatable)")
    parser.add_argument(
        "--budget",
        help="with --trained: fix's budget options, as one string (default: each model's own, "
        "'--min-top1 0.99' for the classifiers, '--tolerance 0.05' for captcha)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "convlint-bench",
        help="with --trained: where wheels and data go (outside the repository)",
    )
    parser.add_argument("--runs", type=int, default=60, help="with --trained: timed runs per model")
    parser.add_argument("--threads", type=int, default=2, help="with --trained: intra-op threads")
    parser.add_argument("--build", nargs=2, help=argparse.SUPPRESS)  # internal: NAME PATH
    args = parser.parse_args()
    if args.trained:
        import trained_models

        names = args.model or [m.name for m in trained_models.MODELS]
        print(f"convlint fix on trained models, {os.cpu_count()} CPUs")
        for name in names:
            budget = args.budget.split() if args.budget is not None else None
            trained_model(name, budget, args.cache, args.runs, args.threads)
        return
    if args.fixtures:
        fixture_table(args.fixtures)
        return
    if args.build:
        build(args.build[0], Path(args.build[1]))
        return
    # Random planted weights have no domain but the noise they are fitted on: without
    # --allow-noise `fix` leaves every approximate rewrite alone (no --inputs).
    argv = ["--method", args.method, "--samples", str(args.samples), "--allow-noise"]
    argv += ["--objective", args.objective, "--format", "json"]
    results = [measure(name, argv) for name in ([args.only] if args.only else list(MODELS))]
    header = [
        "model", "weights", "rewrites", "wall s", "peak GB", "fix / ort GB", "MACs ratio",
        "latency ratio", " / ".join(STAGES) + " (s)", "rel L2",
    ]  # fmt: skip
    rows = [header, *(row(r) for r in results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    print(
        f"convlint fix --method {args.method} --samples {args.samples} --allow-noise "
        f"--objective {args.objective}, {os.cpu_count()} CPUs"
    )
    for line in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


if __name__ == "__main__":
    main()
