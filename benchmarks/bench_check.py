"""Time `convlint check` against `onnx.load` + shape inference alone, on the same files.

The ratio is the cost of convlint's own code (graph building, costs, rules, report) on top of
what any ONNX tool pays to read and shape-infer a model. Rerun with:

    python benchmarks/bench_check.py [--repeat 5] [--nodes 20000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnx

from convlint import fixtures
from convlint.engine import Settings, analyze
from convlint.registry import load_registry
from convlint.reporters import render_json


def best_of(repeat: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def onnx_baseline(path: Path) -> None:
    model = onnx.load(str(path), load_external_data=False)
    onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=20_000)
    args = parser.parse_args()
    registry = load_registry()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "big").mkdir()
        models = {
            f"big_chain ({args.nodes} nodes)": fixtures.save(
                fixtures.big_chain(nodes=args.nodes), Path(tmp) / "big" / "big.onnx"
            ),
            "resnet50 (external weights)": fixtures.save(
                fixtures.resnet50(weights="external"), Path(tmp) / "resnet50.onnx"
            ),
        }
        rows = []
        for label, path in models.items():
            nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
            base = best_of(args.repeat, lambda p=path: onnx_baseline(p))
            ours = best_of(
                args.repeat,
                lambda p=path: render_json([analyze(p, registry, Settings())], registry),
            )
            rows.append((label, nodes, base, ours, ours / base))
    print(f"best of {args.repeat} runs, in-process, {time.strftime('%Y-%m-%d')}")
    print(f"{'model':<28} {'nodes':>7} {'onnx load+infer':>16} {'convlint check':>15} {'ratio':>6}")
    for label, nodes, base, ours, ratio in rows:
        print(f"{label:<28} {nodes:>7} {base:>15.3f}s {ours:>14.3f}s {ratio:>6.2f}")
    print(f"median ratio {statistics.median(r[4] for r in rows):.2f}")


if __name__ == "__main__":
    main()
