"""Time `convlint fix` on full-size networks, split into its stages.

- analysis: reading the model with its weights, linting, planning the rewrites;
- factorization: SVD / Tucker-2 searches, building the rewritten graphs;
- verification: onnxruntime runs (reference, activation statistics, every confirmation, the
  combined model, the written file) in the child process;
- writing: saving OUT and ``onnx.checker`` (full check).

ResNet-50 (``fixtures.resnet50(weights="random")``, 25.6 M params) has no findings: its 3×3
convs already sit behind 1×1 reductions, so its row is the fixed cost of `fix` on a clean
network. With ``--vgg``, VGG-16 (138 M params) with its ten flagged 3×3 convs planted at rank
C_in/8 shows the factorization at work. Rerun with:

    python benchmarks/bench_fix.py [--method weight|data-aware] [--samples 4] [--vgg]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from convlint import fixtures
from convlint.engine import Settings
from convlint.fix import FixOptions, FixResult, fix
from convlint.fixtures._builder import low_rank_conv_weight
from convlint.registry import load_registry

STAGES = ("analysis", "factorization", "verification", "writing")


def planted_vgg16() -> onnx.ModelProto:
    """VGG-16 with random weights; every 3×3 conv reading >= 128 channels at rank C_in/8."""
    model = fixtures.vgg16(weights="random")
    rng = np.random.default_rng(0)
    for tensor in model.graph.initializer:
        shape = tuple(tensor.dims)
        if len(shape) == 4 and shape[2:] == (3, 3) and shape[1] >= 128:
            cout, cin = shape[:2]
            weight = low_rank_conv_weight(rng, cout, cin, 3, 3, cin // 8, 1.0 / np.sqrt(cin * 9))
            tensor.CopyFrom(numpy_helper.from_array(weight, tensor.name))
    return model


def run(path: Path, method: str, samples: int) -> tuple[FixResult, float]:
    options = FixOptions(output=path.with_name("fixed.onnx"), method=method, samples=samples)
    start = time.perf_counter()
    result = fix(path, load_registry(), Settings(), options)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--method", choices=("data-aware", "weight"), default="data-aware")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--vgg", action="store_true", help="also VGG-16 with planted ranks")
    args = parser.parse_args()
    builders = {"resnet50 (random weights)": lambda: fixtures.resnet50(weights="random")}
    if args.vgg:
        builders["vgg16 (planted rank C_in/8)"] = planted_vgg16
    header = ["model", "params", "MACs", "rewrites", *STAGES, "total s", "rel L2"]
    rows = []
    for label, build in builders.items():
        with tempfile.TemporaryDirectory() as tmp:
            path = fixtures.save(build(), Path(tmp) / "model.onnx")
            result, total = run(path, args.method, args.samples)
        before, after = result.report.cost, result.cost_after
        assert before is not None and after is not None and result.verification is not None
        rows.append(
            [
                label,
                f"{before.params:,} -> {after.params:,}",
                f"{before.macs or 0:,} -> {after.macs or 0:,}",
                str(len(result.rewrites)),
                *(f"{result.timings.get(stage, 0.0):.2f}" for stage in STAGES),
                f"{total:.2f}",
                f"{result.verification.rel_l2_error:.1e}",
            ]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"convlint fix, --method {args.method}, {args.samples} samples, times in seconds")
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
