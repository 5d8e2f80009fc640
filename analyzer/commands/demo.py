"""Commands layer: `convlint demo`, the whole pipeline on a built-in GoogLeNet-3a-style block."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from convlint.engine import Settings, analyze
from convlint.registry import Registry
from convlint.reporters import render_json, render_text

DEMO_RANK = 24  # planted rank of the block's k×k weights, so a verified rewrite can pay off
DEMO_SAMPLES = 2  # an exact rewrite of planted-rank weights needs few samples to verify


def build_demo_model(folder: Path) -> Path:
    from convlint import fixtures

    model = fixtures.inception_3a_naive(planted_rank=DEMO_RANK, seed=0)
    return fixtures.save(model, folder / "inception_3a_naive.onnx")


def _literature_comparison(folder: Path) -> str:
    """GoogLeNet's own design next to the naive block, costed by the same model."""
    from convlint import fixtures, loader
    from convlint.cost import model_cost
    from convlint.graph import build_graph

    lines = ["The same block as GoogLeNet built it (Szegedy et al. 2014, table 1):"]
    for label, builder in (
        ("naive", fixtures.inception_3a_naive),
        ("with 1x1 reductions", fixtures.inception_3a_reduced),
        ("with reductions and pool projection", fixtures.inception_3a),
    ):
        path = fixtures.save(builder(), folder / f"{builder.__name__}_literature.onnx")
        graph = build_graph(loader.load(path).model)
        cost = model_cost(graph)
        channels = graph.channels(graph.graph_outputs[0])
        lines.append(
            f"  {label:<37} {cost.params:>9,} params  {cost.macs or 0:>13,} MACs  "
            f"{channels} output channels"
        )
    return "\n".join(lines) + "\n"


def _verified_rewrite(path: Path, registry: Registry) -> str:
    """`convlint fix --method weight` on the demo block: the rewrites, verified by onnxruntime."""
    from convlint.rewrite.options import FixOptions
    from convlint.rewrite.pipeline import fix
    from convlint.rewrite.report import render_text as render_fix

    out = path.with_name("inception_3a_fixed.onnx")
    # Timing would make the demo's output differ from run to run: --no-latency.
    # The weights are planted at a low rank, so fitting generated noise finds it: --allow-noise.
    options = FixOptions(
        output=out, method="weight", samples=DEMO_SAMPLES, latency=False, allow_noise=True
    )
    result = fix(path, registry, Settings(), options)
    result.report.path, result.output = path.name, out.name
    return (
        f"convlint fix {path.name} -o {out.name} --method {options.method} "
        f"--samples {options.samples} --no-latency --allow-noise (the rewrites, verified with "
        "onnxruntime):\n" + render_fix(result)
    )


def run_demo(registry: Registry, fmt: str = "text") -> int:
    with tempfile.TemporaryDirectory(prefix="convlint-demo-") as tmp:
        path = build_demo_model(Path(tmp))
        report = analyze(path, registry, Settings())
        report.path = path.name
        if fmt == "json":
            sys.stdout.write(render_json([report], registry))
            return 0
        cost = report.cost
        assert cost is not None
        out = sys.stdout
        out.write(
            "convlint demo: naive GoogLeNet Inception 3a on a 1x192x28x28 input\n"
            "(1x1/64, 3x3/128 and 5x5/32 convs straight off 192 channels, plus a 3x3 max-pool,\n"
            f" concatenated; k×k weights planted at rank {DEMO_RANK})\n\n"
            f"model: {cost.params:,} params, {cost.macs or 0:,} MACs\n\n"
        )
        out.write(render_text([report], registry))
        out.write("\n" + _literature_comparison(Path(tmp)))
        out.write("\n" + _verified_rewrite(path, registry))
    return 0


def cmd_demo(args: argparse.Namespace, registry: Registry) -> int:
    return run_demo(registry, args.format)
