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
- ``scale``: check time and peak memory at 1,000, 10,000 and 100,000 nodes, against the
  reference (issue 21: within 1.3× at 100,000 nodes, and a ratio that does not grow with size),
  as ``check`` runs by default and with ``--jobs 1`` (one process: no inference beside it).
- ``parallel``: 64 models of 2,000 nodes (issue 21). The serial part is measured directly: a
  ``check`` process timed from inside (``--timeline``: this process's busy time while the
  workers run, less the model it checks itself, per model received; each worker's time per
  model; how long forking the workers took), and the speed-up that predicts (Amdahl, per
  model: (p + w) / (p + w/N) for parent time p and worker time w per model; and for the whole
  run of M models, with the fixed part F of a whole ``--jobs 1`` process, its time T1 less its
  models': T1 / (F + M·(p + w/N))) is printed at 4, 8, 16 and 64
  workers next to the speed-ups measured at the worker counts this machine has (1, 2, 4, ...
  up to its cores). Issue 21 asks for at least 12× predicted at 16 workers.

The models are built in child processes, so that this process stays small: Linux carries a
parent's peak memory over into a child it starts. Bytecode of convlint's own modules is written
and used as after ``pip install`` (``PYTHONDONTWRITEBYTECODE`` is dropped for the children, and
one warm-up run compiles it).
Rerun with:

    python benchmarks/bench_check.py [--repeat 7] [--nodes 20000] \
        [--sections big,embedded,folder,scale,parallel]
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

SECTIONS = ("big", "embedded", "folder", "scale", "parallel")
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
ZOO_MODELS = 64  # the parallel section's folder (issue 21)
PREDICTED_WORKERS = (4, 8, 16, 64)


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

    if kind in ("folder", "chains", "zoo"):
        Path(path).mkdir(parents=True, exist_ok=True)
    if kind == "big_chain":
        model = fixtures.big_chain(nodes=nodes)
    elif kind == "folder":
        builders = [b for name, b in fixtures.BUILDERS.items() if name not in FOLDER_SKIP]
        for index in range(FOLDER_MODELS):
            builder = builders[index % len(builders)]
            fixtures.save(builder(), Path(path) / f"{index:02d}_{builder.__name__}.onnx")
        return
    elif kind in ("chains", "zoo"):
        for index in range(FOLDER_MODELS if kind == "chains" else ZOO_MODELS):
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
    return [medians(found) for found in sample(repeat, commands)]


def medians(found: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Median seconds and median MiB of one command's runs."""
    return statistics.median(t for t, _ in found), statistics.median(m for _, m in found)


def paired_ratios(
    references: Sequence[tuple[float, float]], runs: Sequence[tuple[float, float]]
) -> list[float]:
    """Each run's time against the reference run just before it (see ``sample``), for the
    spread."""
    return [mine / theirs for (theirs, _), (mine, _) in zip(references, runs, strict=True)]


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
    (base, base_mem), (ours, ours_mem) = medians(references), medians(checks)
    ratios = paired_ratios(references, checks)
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
    """``check`` as it runs by default (on a machine of 2 cores or more, a graph of 10,000
    nodes or more is shape-inferred in a child process while its graph is read) and with
    ``--jobs 1`` (one process), against the reference."""
    lines = [
        row(
            "nodes",
            "file",
            "`onnx.load` + shape inference",
            "`convlint check`",
            "ratio",
            "`check --jobs 1`",
            "ratio",
        ),
        row("---", "---", "---", "---", "---", "---", "---"),
    ]
    for nodes in (1_000, 10_000, 100_000):
        path = build("big_chain", tmp / f"scale_{nodes}.onnx", nodes)
        samples = sample(
            repeat, [python(LOAD_AND_INFER, path), check(path), check(path, "--jobs", "1")]
        )
        (base, base_mem), (ours, ours_mem), (alone, alone_mem) = map(medians, samples)
        ratios, alone_ratios = (paired_ratios(samples[0], runs) for runs in samples[1:])
        lines.append(
            row(
                f"{nodes:,}",
                f"{path.stat().st_size / 1e6:.1f} MB",
                f"{base:.2f} s, {base_mem:.0f} MiB",
                f"{ours:.2f} s, {ours_mem:.0f} MiB",
                f"{ours / base:.2f}{spread(ratios)}",
                f"{alone:.2f} s, {alone_mem:.0f} MiB",
                f"{alone / base:.2f}{spread(alone_ratios)}",
            )
        )
    return lines


def _timeline_here(folder: str, jobs: int) -> None:
    """``convlint check FOLDER --jobs JOBS`` in this process, timed from inside; prints JSON.

    Reaches into the runner (its private ``_analyze_task`` and ``_pooled``, and multiprocessing's
    ``wait``) to time what it does, as a profiler would: forked workers inherit the wrappers
    and append each model's span to a file of their own.
    """
    import gc
    import io
    import json
    import multiprocessing.connection

    started = time.perf_counter()
    gc.disable()  # as convlint's entry point imports
    from convlint import runner
    from convlint.cli import main as convlint_main

    gc.freeze()
    gc.enable()
    imported = time.perf_counter()
    spans_dir = tempfile.mkdtemp(prefix="convlint-timeline-")
    waited = [0.0]
    pool_started = [0.0]
    cpu = [0.0, 0.0]  # this process's CPU seconds in the pooled phase, and in its own models
    forking = [0.0]  # seconds spent starting workers
    wait = multiprocessing.connection.wait
    analyze_task = runner._analyze_task
    pooled = runner._pooled

    def timed_wait(*args: object, **kwargs: object) -> object:
        before = time.perf_counter()
        try:
            return wait(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            waited[0] += time.perf_counter() - before

    def timed_task(*args: object, **kwargs: object) -> object:
        before, cpu_before = time.perf_counter(), time.process_time()
        answer = analyze_task(*args, **kwargs)  # type: ignore[arg-type]
        cpu[1] += time.process_time() - cpu_before
        with open(os.path.join(spans_dir, str(os.getpid())), "a") as spans:
            spans.write(f"{before} {time.perf_counter()}\n")
        return answer

    def timed_pooled(*args: object, **kwargs: object) -> object:
        pool_started[0] = time.perf_counter()
        cpu[0] -= time.process_time()
        try:
            return (yield from pooled(*args, **kwargs))  # type: ignore[arg-type]
        finally:
            cpu[0] += time.process_time()

    start_process = multiprocessing.process.BaseProcess.start

    def timed_start(process: multiprocessing.process.BaseProcess) -> None:
        before = time.perf_counter()
        start_process(process)
        forking[0] += time.perf_counter() - before

    multiprocessing.process.BaseProcess.start = timed_start  # type: ignore[method-assign,assignment]
    multiprocessing.connection.wait = timed_wait  # type: ignore[assignment]
    runner._analyze_task = timed_task  # type: ignore[assignment]
    runner._pooled = timed_pooled  # type: ignore[assignment]
    stdout, sys.stdout = sys.stdout, io.StringIO()
    try:
        convlint_main(["check", folder, "--jobs", str(jobs)])
    finally:
        sys.stdout = stdout
    ended = time.perf_counter()
    parent: list[float] = []
    workers: list[float] = []
    starts: list[float] = []  # of the workers' models
    last = started  # when the last model was done
    for name in os.listdir(spans_dir):
        with open(os.path.join(spans_dir, name)) as spans:
            found = [(float(a), float(b)) for a, b in (line.split() for line in spans)]
        if int(name) != os.getpid():
            starts.extend(a for a, _ in found)
        (parent if int(name) == os.getpid() else workers).extend(b - a for a, b in found)
        last = max([last, *(b for _, b in found)])
    pooled_seconds = ended - pool_started[0] if pool_started[0] else 0.0
    # The parent's own checking inside the pooled phase is model work, not serial overhead.
    own = sum(parent) if pool_started[0] else 0.0
    busy = max(0.0, pooled_seconds - waited[0] - own) if pool_started[0] else 0.0
    print(
        json.dumps(
            {
                "jobs": jobs,
                "seconds": ended - started,
                "imports": imported - started,
                "models_here": len(parent),
                "models_pooled": len(workers),
                "here_per_model": statistics.median(parent) if parent else None,
                "worker_per_model": statistics.median(workers) if workers else None,
                "parent_per_model": busy / len(workers) if workers else None,
                # The same on the CPU clock: what it costs, not counting time it waited for a
                # core (more processes than cores, or a busy machine).
                "parent_cpu_per_model": (cpu[0] - cpu[1]) / len(workers) if workers else None,
                "checking": sum(parent),
                "forking": forking[0],
                # From the pool's start to the first model a worker starts, and from the last
                # model done to the end of the run.
                "first_worker_model": min(starts) - pool_started[0] if starts else None,
                "after_last_model": ended - last,
            }
        ),
        flush=True,
    )
    os._exit(0)  # as convlint's entry point ends: no interpreter teardown


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def timeline(folder: Path, jobs: int) -> dict[str, float]:
    """One timed ``check`` in a child process (see ``_timeline_here``)."""
    import json

    started = time.perf_counter()
    found = subprocess.run(
        [sys.executable, __file__, "--timeline", str(folder), str(jobs)],
        check=True,
        env=ENV,
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
    )
    seen = dict(json.loads(found.stdout.splitlines()[-1]))
    seen["process_seconds"] = time.perf_counter() - started  # the whole process, from outside
    return seen


def section_parallel(repeat: int, tmp: Path) -> list[str]:
    folder = build("zoo", tmp / "zoo", CHAIN_NODES)
    models = len(list(folder.iterdir()))
    counts = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= cores()]
    runs = measure(repeat, [check(folder, "--jobs", str(n)) for n in counts])
    measured = dict(zip(counts, runs, strict=True))
    # The serial part, measured from inside: one run alone, all its models here, gives each
    # model's time and the fixed part (start-up, settings, exit); runs with the most workers
    # give the parent's time per model received and the workers' time per model.
    serial = [timeline(folder, 1) for _ in range(repeat)]
    pooled = [timeline(folder, max(counts)) for _ in range(repeat)]
    # T1 and what of it is not the models', from the same runs (the speed of a shared machine
    # drifts between the measured runs above and these).
    one = statistics.median(t["process_seconds"] for t in serial)
    w1 = statistics.median(t["here_per_model"] for t in serial)
    fixed = statistics.median(t["process_seconds"] - t["checking"] for t in serial)
    p = statistics.median(t["parent_per_model"] for t in pooled)
    w = statistics.median(t["worker_per_model"] for t in pooled)
    p_cpu = statistics.median(t["parent_cpu_per_model"] for t in pooled)
    first = statistics.median(t["first_worker_model"] for t in pooled)
    forks = statistics.median(t["forking"] for t in pooled)
    after = statistics.median(t["after_last_model"] for t in pooled)
    serial_fraction = p / (p + w)
    lines = [
        f"{models} models of {CHAIN_NODES:,} nodes, {cores()} cores: parent {p * 1e3:.2f} ms "
        f"({p_cpu * 1e3:.2f} ms of CPU) and worker {w * 1e3:.1f} ms per model (with "
        f"{max(counts)} workers; {w1 * 1e3:.1f} ms per model alone), serial fraction "
        f"{serial_fraction:.2%}; fixed start-up and exit "
        f"{fixed:.2f} s of the {one:.2f} s of one process; with {max(counts)} workers, "
        f"{forks * 1e3:.0f} ms forking them (in the parent's time), "
        f"{first * 1e3:.0f} ms from the pool's start to a worker's first model and "
        f"{after * 1e3:.0f} ms from the last model done to the end",
        "",
        row("workers", "predicted, per model", "predicted, whole run", "measured", "time"),
        row("---", "---", "---", "---", "---"),
    ]
    for n in sorted({*counts, *PREDICTED_WORKERS}):
        per_model = (p + w) / (p + w / n)
        whole = one / (fixed + models * (p + w / n)) if n > 1 else 1.0
        got = measured.get(n)
        lines.append(
            row(
                n,
                f"{per_model:.1f}×",
                f"{whole:.1f}×",
                f"{measured[1][0] / got[0]:.2f}×" if got else "(not measured)",
                f"{got[0]:.2f} s" if got else "",
            )
        )
    return lines


def main() -> None:
    if sys.argv[1:2] == ["--build"]:
        _build_here(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    if sys.argv[1:2] == ["--timeline"]:
        _timeline_here(sys.argv[2], int(sys.argv[3]))
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
    print(f"medians of {args.repeat} runs, whole process, {cores()} cores, {today}")
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
            elif section == "parallel":
                lines = section_parallel(args.repeat, tmp)
            else:
                lines = section_scale(args.repeat, tmp)
            print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
