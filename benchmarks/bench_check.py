"""Time `convlint check` against what any ONNX tool pays to read the same files, whole process.

Every measurement is a fresh process, as a user or CI runs it, timed from start to exit with its
peak resident memory (``wait4``'s rusage of that child alone); the reference and convlint run
alternately, and each row gives the medians of ``--repeat`` runs. Sections:

- ``big``: a ``--nodes``-node graph (``fixtures.big_chain``, 3×3 convs and ReLUs, weights in
  the file): ``convlint check`` against ``onnx.load`` + ``onnx.shape_inference.infer_shapes``
  (strict, data propagation: what check needs) in one process. Issue 10 asks for at most 1.5×.
- ``embedded``: VGG-16 (138 M params) with its 553 MB of weights inside the .onnx file, against a
  plain ``onnx.load`` of it (issue 10: at most 1.3× the time and 1.2× the peak memory), and
  with the same weights in an external data file.
- ``folder``: folders of 40 models checked with ``--jobs 1`` and ``--jobs 2`` (issue 10: at
  least 1.6× on 2 cores): the fixture models (cycled), and 2,000-node chains.
- ``scale``: check time and peak memory at 1,000, 10,000 and 100,000 nodes.

The models are built in child processes, so that this process stays small: Linux carries a
parent's peak memory over into a child it starts. Bytecode of convlint's own modules is written
and used as after ``pip install`` (``PYTHONDONTWRITEBYTECODE`` is dropped for the children, and
one warm-up run compiles it).
Rerun with:

    python benchmarks/bench_check.py [--repeat 7] [--nodes 20000] \
        [--sections big,embedded,folder,scale]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

SECTIONS = ("big", "embedded", "folder", "scale")
# The references, as one-line programs: what any tool pays to read (and shape-infer) a model.
LOAD_AND_INFER = (
    "import sys, onnx; model = onnx.load(sys.argv[1], load_external_data=False); "
    "onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)"
)
LOAD = "import sys, onnx; onnx.load(sys.argv[1])"
# Models of the folder section: small, and the same kind a repository of models holds.
FOLDER_SKIP = ("big_chain", "vgg16", "resnet50")
FOLDER_MODELS = 40
CHAIN_NODES = 2_000


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


ENV = _environment()


def build(kind: str, path: Path, nodes: int = 0) -> Path:
    """Build and save a fixture model in a child process (see the module docstring)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, __file__, "--build", kind, str(nodes), str(path)], check=True, env=ENV
    )
    return path


def _build_here(kind: str, nodes: int, path: str) -> None:
    from convlint import fixtures

    if kind in ("folder", "chains"):
        Path(path).mkdir(parents=True, exist_ok=True)
    if kind == "big_chain":
        model = fixtures.big_chain(nodes=nodes)
    elif kind == "folder":
        builders = [b for name, b in fixtures.BUILDERS.items() if name not in FOLDER_SKIP]
        for index in range(FOLDER_MODELS):
            builder = builders[index % len(builders)]
            fixtures.save(builder(), Path(path) / f"{index:02d}_{builder.__name__}.onnx")
        return
    elif kind == "chains":
        for index in range(FOLDER_MODELS):
            chain = fixtures.big_chain(nodes=nodes, seed=index)
            fixtures.save(chain, Path(path) / f"{index:02d}_chain.onnx")
        return
    else:
        model = fixtures.vgg16(weights="random" if kind == "vgg16_embedded" else "external")
    fixtures.save(model, path)


def run(argv: Sequence[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process."""
    start = time.perf_counter()
    child = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
        cwd=tempfile.gettempdir(),
    )
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode not in (0, 1):  # 1: findings
        raise SystemExit(f"{' '.join(argv)} exited {child.returncode}")
    return seconds, usage.ru_maxrss / 1024  # KiB on Linux


def python(code: str, *args: str | Path) -> list[str]:
    return [sys.executable, "-c", code, *map(str, args)]


def check(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "convlint", "check", *map(str, args)]


def measure(repeat: int, commands: Sequence[Sequence[str]]) -> list[tuple[float, float]]:
    """Median (seconds, MiB) of each command, the commands run alternately ``repeat`` times."""
    return [
        (statistics.median(t for t, _ in found), statistics.median(m for _, m in found))
        for found in sample(repeat, commands)
    ]


def sample(repeat: int, commands: Sequence[Sequence[str]]) -> list[list[tuple[float, float]]]:
    """(seconds, MiB) of each run of each command, the commands run alternately ``repeat``
    times after one warm-up run each (bytecode, the page cache)."""
    for command in commands:
        run(command)
    samples: list[list[tuple[float, float]]] = [[] for _ in commands]
    for _ in range(repeat):
        for command, found in zip(commands, samples, strict=True):
            found.append(run(command))
    return samples


def spread(ratios: Sequence[float]) -> str:
    """The middle half of ``ratios``: how much one run's ratio moves on a busy machine."""
    if len(ratios) < 4:
        return ""
    low, _, high = statistics.quantiles(ratios, n=4)
    return f" (runs {low:.2f}-{high:.2f})"


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def section_big(repeat: int, nodes: int, tmp: Path) -> list[str]:
    path = build("big_chain", tmp / f"big_chain_{nodes}.onnx", nodes)
    references, checks = sample(repeat, [python(LOAD_AND_INFER, path), check(path)])
    base, base_mem = (statistics.median(s[i] for s in references) for i in (0, 1))
    ours, ours_mem = (statistics.median(s[i] for s in checks) for i in (0, 1))
    # Each check against the reference run just before it, for the spread.
    ratios = [mine[0] / theirs[0] for theirs, mine in zip(references, checks, strict=True)]
    return [
        row("model", "`onnx.load` + shape inference", "`convlint check`", "ratio (target ≤ 1.5)"),
        row("---", "---", "---", "---"),
        row(
            f"big_chain ({nodes:,} nodes, {path.stat().st_size / 1e6:.0f} MB)",
            f"{base:.2f} s, {base_mem:.0f} MiB",
            f"{ours:.2f} s, {ours_mem:.0f} MiB",
            f"{ours / base:.2f}{spread(ratios)}",
        ),
    ]


def section_embedded(repeat: int, tmp: Path) -> list[str]:
    embedded = build("vgg16_embedded", tmp / "embedded" / "vgg16.onnx")
    external = build("vgg16_external", tmp / "external" / "vgg16.onnx")
    size = embedded.stat().st_size / 1e6
    (load, load_mem), (ours, ours_mem), (ext, ext_mem) = measure(
        repeat, [python(LOAD, embedded), check(embedded), check(external)]
    )
    return [
        row(
            "VGG-16, 138 M params",
            "time",
            "peak memory",
            "time ratio (≤ 1.3)",
            "memory ratio (≤ 1.2)",
        ),
        row("---", "---", "---", "---", "---"),
        row(
            f"`onnx.load`, weights in the file ({size:.0f} MB)",
            f"{load:.2f} s",
            f"{load_mem:.0f} MiB",
            "1",
            "1",
        ),
        row(
            "`convlint check`, weights in the file",
            f"{ours:.2f} s",
            f"{ours_mem:.0f} MiB",
            f"{ours / load:.2f}",
            f"{ours_mem / load_mem:.2f}",
        ),
        row(
            "`convlint check`, weights in an external file",
            f"{ext:.2f} s",
            f"{ext_mem:.0f} MiB",
            "",
            "",
        ),
    ]


def section_folder(repeat: int, tmp: Path) -> list[str]:
    lines = [
        row(f"folder of {FOLDER_MODELS} models", "`--jobs 1`", "`--jobs 2`", "speed-up (≥ 1.6)"),
        row("---", "---", "---", "---"),
    ]
    for kind, nodes, label in (
        ("folder", 0, "the fixture models (4-175 nodes)"),
        ("chains", CHAIN_NODES, f"chains of {CHAIN_NODES:,} nodes"),
    ):
        folder = build(kind, tmp / kind, nodes)
        size = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
        (one, _), (two, _) = measure(
            repeat, [check(folder, "--jobs", "1"), check(folder, "--jobs", "2")]
        )
        lines.append(
            row(f"{label}, {size:.0f} MB", f"{one:.2f} s", f"{two:.2f} s", f"{one / two:.2f}")
        )
    return lines


def section_scale(repeat: int, tmp: Path) -> list[str]:
    lines = [
        row("nodes", "file", "`onnx.load` + shape inference", "`convlint check`", "ratio"),
        row("---", "---", "---", "---", "---"),
    ]
    for nodes in (1_000, 10_000, 100_000):
        path = build("big_chain", tmp / f"scale_{nodes}.onnx", nodes)
        (base, base_mem), (ours, ours_mem) = measure(
            repeat, [python(LOAD_AND_INFER, path), check(path)]
        )
        lines.append(
            row(
                f"{nodes:,}",
                f"{path.stat().st_size / 1e6:.1f} MB",
                f"{base:.2f} s, {base_mem:.0f} MiB",
                f"{ours:.2f} s, {ours_mem:.0f} MiB",
                f"{ours / base:.2f}",
            )
        )
    return lines


def main() -> None:
    if sys.argv[1:2] == ["--build"]:
        _build_here(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--nodes", type=int, default=20_000)
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}"
    )
    args = parser.parse_args()
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    today = time.strftime("%Y-%m-%d")
    print(f"medians of {args.repeat} runs, whole process, {os.cpu_count()} cores, {today}")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        for section in chosen:
            print()
            if section == "big":
                lines = section_big(args.repeat, args.nodes, tmp)
            elif section == "embedded":
                lines = section_embedded(args.repeat, tmp)
            elif section == "folder":
                lines = section_folder(args.repeat, tmp)
            else:
                lines = section_scale(args.repeat, tmp)
            print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
