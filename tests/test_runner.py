"""Many models: in parallel or not, results come in the order of the paths as soon as they can,
and what is printed as it comes is byte for byte what one render of every report prints."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

from convlint import fixtures, runner, skeleton
from convlint.baseline import Baseline, model_key
from convlint.engine import ModelReport, Settings, analyze, iter_model_paths
from convlint.registry import load_registry
from convlint.reporters import RENDERERS, render_text

MODELS = [
    "inception_3a_naive",
    "vgg_stack",
    "resnet_bottleneck",
    "squeezenet_fire",
    "dense_head_bad",
    "linear_conv_chain_bad",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("models")
    for index, name in enumerate(MODELS):
        fixtures.save(fixtures.BUILDERS[name](), root / f"{index}_{name}.onnx")
    (root / "9_broken.onnx").write_bytes(b"not a model")
    return [str(path) for path in iter_model_paths([str(root)])]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _serial(paths: list[str], verbose: bool = False) -> list[ModelReport]:
    registry = load_registry()
    return [analyze(path, registry, Settings(verbose=verbose)) for path in paths]


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize(
    ("fmt", "verbose", "quiet", "color"),
    [
        ("text", False, False, False),
        ("text", True, False, True),
        ("text", False, True, False),
        ("text", True, True, True),
        ("github", True, False, False),
        ("json", False, False, False),
        ("markdown", True, False, False),
    ],
)
def test_printed_as_it_comes_is_the_whole_report(
    folder: list[str],
    jobs: int,
    fmt: str,
    verbose: bool,
    quiet: bool,
    color: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner, "SERIAL_SECONDS", 0.0)  # to the pool after the first model
    registry = load_registry()
    stream = io.StringIO()
    reports, rest = runner.check_and_render(
        folder,
        registry,
        [Settings(verbose=verbose)] * len(folder),
        jobs=jobs,
        format=fmt,
        verbose=verbose,
        quiet=quiet,
        color=color,
        stream=stream,
    )
    expected = _serial(folder, verbose)
    if fmt == "text":
        whole = render_text(expected, registry, verbose=verbose, color=color)
        if quiet:
            whole = "".join(line + "\n" for line in whole.splitlines()[:-1])
    else:
        whole = RENDERERS[fmt](expected, registry, verbose=verbose)
    assert stream.getvalue() + rest == whole
    if fmt in runner.STREAMED_FORMATS:
        assert stream.getvalue() and len(rest) < 200  # the summary line at most
    else:
        assert stream.getvalue() == ""  # a document is written once, whole
    assert [r.path for r in reports] == folder
    assert [r.as_dict() for r in reports] == [r.as_dict() for r in expected]


def test_known_findings_are_applied_to_each_report_as_it_comes(folder: list[str]) -> None:
    registry = load_registry()
    expected = _serial(folder)
    known = Baseline(
        str(Path(folder[0]).parent / "baseline.json"),
        frozenset(
            (model_key(r.path, str(Path(folder[0]).parent)), f.code, f.node)
            for r in expected[:2]
            for f in r.findings
        ),
    )
    stream = io.StringIO()
    reports, rest = runner.check_and_render(
        folder, registry, [Settings()] * len(folder), jobs=2, known=known, stream=stream
    )
    known.apply(expected)
    assert stream.getvalue() + rest == render_text(expected, registry)
    assert "(baseline)" in stream.getvalue()
    assert [len(r.baselined or []) for r in reports] == [len(r.baselined or []) for r in expected]


def _slow_for_early_models(
    path: str,
    registry: object,
    settings: Settings,
    keep: list[object] | None = None,
    freeze: bool = False,
    background: bool = False,
    record_skips: bool = True,
) -> ModelReport:
    # The first models take longest: later ones finish first and must wait their turn.
    index = int(Path(path).name.split("_")[0])
    time.sleep(0.05 * max(0, len(MODELS) - index))
    return ModelReport(path=path, opset=index, notes=[f"pid {os.getpid()}"])


def test_reports_keep_the_order_of_the_paths_and_progress_counts_every_model(
    folder: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "analyze", _slow_for_early_models)
    monkeypatch.setattr(runner, "SERIAL_SECONDS", 0.0)
    done: list[int] = []
    reports = list(
        runner.iter_reports(
            folder, load_registry(), [Settings()] * len(folder), 3, lambda: done.append(1)
        )
    )
    assert [r.path for r in reports] == folder
    assert len(done) == len(folder)
    assert len({r.notes[0] for r in reports}) > 1  # more than one worker did the work


def test_progress_line_on_a_terminal_only(folder: list[str]) -> None:
    registry = load_registry()
    terminal, pipe = Terminal(), io.StringIO()
    for progress in (terminal, pipe):
        runner.check_and_render(
            folder[:3], registry, [Settings()] * 3, jobs=1, stream=io.StringIO(), progress=progress
        )
    shown = terminal.getvalue()
    assert "\rconvlint: 1/3 models checked" in shown and "3/3 models checked" in shown
    assert shown.endswith("\r")  # the line is cleared at the end
    assert pipe.getvalue() == ""
    quiet = Terminal()
    runner.check_and_render(
        folder[:3], registry, [Settings()] * 3, jobs=1, quiet=True, progress=quiet
    )
    assert quiet.getvalue() == ""


def test_a_reader_that_goes_away_stops_the_printing_not_the_run(folder: list[str]) -> None:
    read, write = os.pipe()
    os.close(read)
    with open(write, "w", closefd=False) as stream:
        reports, _ = runner.check_and_render(
            folder, load_registry(), [Settings()] * len(folder), jobs=1, stream=stream
        )
    os.close(write)
    assert len(reports) == len(folder) and any(r.findings for r in reports)


def test_small_folders_are_checked_without_a_pool(
    folder: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "analyze", _slow_for_early_models)
    monkeypatch.setattr(runner, "SERIAL_SECONDS", 60.0)
    reports = list(runner.iter_reports(folder, load_registry(), [Settings()] * len(folder), 2))
    assert [r.path for r in reports] == folder
    assert {r.notes[0] for r in reports} == {f"pid {os.getpid()}"}


def test_jobs_default_to_the_cores_and_must_be_positive(folder: list[str]) -> None:
    assert runner.default_jobs() >= 1
    with pytest.raises(runner.ConvlintError, match="at least 1"):
        list(runner.iter_reports(folder, load_registry(), [Settings()] * len(folder), 0))


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("verbose", [False, True])
def test_reports_carry_what_the_command_line_renders(
    folder: list[str], jobs: int, verbose: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "SERIAL_SECONDS", 0.0)  # jobs=2: the pool checks all but one
    settings = [Settings(verbose=verbose)] * len(folder)
    reports = list(runner.iter_reports(folder, load_registry(), settings, jobs))
    whole = _serial(folder, verbose)
    assert [r.cost.nodes for r in reports if r.cost] == [{}] * sum(1 for r in whole if r.cost)
    assert [r.cost.as_dict() if r.cost else None for r in reports] == [
        r.cost.as_dict() if r.cost else None for r in whole
    ]
    assert [r.findings for r in reports] == [r.findings for r in whole]
    expected_skips = [r.skips for r in whole] if verbose else [[] for _ in whole]
    assert [r.skips for r in reports] == expected_skips
    assert any(expected_skips) == verbose


@pytest.mark.parametrize("chunk", [1, 3])
def test_a_worker_that_dies_is_its_models_error_and_the_run_goes_on(
    folder: list[str], chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20, item 3: the test hook makes the worker that gets the second model kill itself
    (as the OOM killer would); in chunks of three, the models queued behind it in its chunk
    are checked by the worker that replaces it."""
    monkeypatch.setattr(runner, "SERIAL_SECONDS", 0.0)
    monkeypatch.setenv(runner.WORKER_FAULT_ENV, f"kill:{Path(folder[1]).name}")
    registry = load_registry()
    settings = [Settings()] * len(folder)
    reports = list(runner._pooled(folder, registry, settings, 0, 2, None, chunk))
    expected = _serial(folder)
    assert [r.path for r in reports] == folder
    assert reports[1].error == "worker died: signal 9 (SIGKILL)"
    for got, want in zip(reports, expected, strict=True):
        if got is not reports[1]:
            assert got.error == want.error
            assert [f.code for f in got.findings] == [f.code for f in want.findings]


def test_check_finishes_when_a_worker_dies(tmp_path: Path) -> None:
    """The command line: the dead worker's model is one error line, the others are reported."""
    import subprocess
    import sys

    data = fixtures.big_chain().SerializeToString()
    for index in range(8):  # each takes long enough that the later ones go to workers
        (tmp_path / f"chain{index}.onnx").write_bytes(data)
    fixtures.save(fixtures.vgg_stack(), tmp_path / "vgg.onnx")
    env = {**os.environ, runner.WORKER_FAULT_ENV: "kill:chain5.onnx"}
    result = subprocess.run(
        [sys.executable, "-m", "convlint", "check", "--jobs", "2", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"convlint: error: {tmp_path / 'chain5.onnx'}: worker died: signal 9 (SIGKILL)\n"
    )
    assert "vgg.onnx:features.conv1: CL001" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("Found 4 findings in 9 models")
    assert result.stdout.endswith("; 1 model could not be read.\n")


def test_a_run_of_large_graphs_starts_the_pool_at_once(
    folder: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21: the workers start before any model is checked, and this process checks the
    first model while they start; the reports keep the order of the paths."""
    monkeypatch.setattr(runner, "analyze", _slow_for_early_models)
    judged: list[int] = []

    def long_graphs(paths: list[str]) -> bool:
        judged.append(len(paths))
        return True

    monkeypatch.setattr(runner, "_looks_long", long_graphs)
    reports = list(runner.iter_reports(folder, load_registry(), [Settings()] * len(folder), 3))
    assert judged == [len(folder) - 1]  # once, the files after the first one
    assert [r.path for r in reports] == folder
    here = f"pid {os.getpid()}"
    assert [r.notes[0] == here for r in reports] == [True] + [False] * (len(folder) - 1)
    assert len({r.notes[0] for r in reports[1:]}) > 1  # the workers shared the rest


def test_the_size_of_a_graph_is_read_from_the_start_of_its_file(
    folder: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph's nodes, not its weights: the bytes of the nodes that open the file's graph."""
    chain = tmp_path / "chain.onnx"
    fixtures.save(fixtures.big_chain(nodes=200), chain)
    model = onnx.load(str(chain), load_external_data=False)
    sizes = [len(node.SerializeToString()) for node in model.graph.node]
    nodes = sum(1 + (1 if size < 128 else 2) + size for size in sizes)  # tag, length, node
    assert skeleton.node_bytes(chain) == nodes  # all of them: under the 64 KiB read
    assert skeleton.node_bytes(chain, limit=4096) == pytest.approx(4096, abs=200)
    heavy = next(p for p in folder if "vgg_stack" in p)  # 8 MB of weights, 11 nodes
    assert os.stat(heavy).st_size > 100 * skeleton.node_bytes(heavy) > 0
    assert skeleton.node_bytes(folder[-1]) == 0  # not a model
    assert skeleton.node_bytes(tmp_path / "gone.onnx") == 0
    os.mkfifo(tmp_path / "fifo.onnx")  # not opened for a read that would wait for a writer
    assert skeleton.node_bytes(tmp_path / "fifo.onnx") == 0
    # Small graphs alone: models are checked here first (the adaptive start, as before).
    monkeypatch.setattr(runner, "analyze", _slow_for_early_models)
    monkeypatch.setattr(runner, "SERIAL_SECONDS", 60.0)
    assert not runner._looks_long(folder)
    reports = list(runner.iter_reports(folder, load_registry(), [Settings()] * len(folder), 2))
    assert {r.notes[0] for r in reports} == {f"pid {os.getpid()}"}
    monkeypatch.setattr(runner, "SERIAL_SECONDS", nodes * runner.SECONDS_PER_NODE_BYTE * 0.9)
    assert runner._looks_long([str(chain)]) and not runner._looks_long(folder[-1:])


@pytest.mark.parametrize("jobs", [1, 2])
def test_findings_come_without_sketches_unless_asked(
    folder: list[str], jobs: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21: the neighbourhood sketches (drawn by markdown alone) are most of what a worker
    would send for a finding; the command line asks for them with --format markdown only."""
    monkeypatch.setattr(runner, "SERIAL_SECONDS", 0.0)
    registry = load_registry()
    settings = [Settings()] * len(folder)
    bare = list(runner.iter_reports(folder, registry, settings, jobs, sketches=False))
    drawn = list(runner.iter_reports(folder, registry, settings, jobs, sketches=True))
    assert sum(len(r.findings) for r in bare) == sum(len(r.findings) for r in drawn) > 0
    assert all(f.context is None for r in bare for f in r.findings)
    assert all(f.context is not None for r in drawn for f in r.findings)
    assert [r.findings for r in bare] == [r.findings for r in drawn]  # context is not compared


def test_the_last_model_checked_is_left_for_the_process_exit(folder: list[str]) -> None:
    """Issue 21: freeing a large graph one object at a time costs a process that is about to
    end (with os._exit) for nothing; the model before it is freed when the next one starts."""
    import gc
    import weakref

    from convlint.graph import ModelGraph

    registry = load_registry()
    _, first = runner._analyze_task((0, folder[0], Settings()), registry)
    graph = next(kept for kept in runner._LAST_MODEL if isinstance(kept, ModelGraph))
    costs = next(kept for kept in runner._LAST_MODEL if isinstance(kept, dict))
    assert first.cost is not None and first.cost.nodes == {}  # not sent, but kept here
    assert len(costs) == first.nodes == len(graph.nodes) > 0
    held = weakref.ref(graph)
    del graph
    runner._analyze_task((1, folder[1], Settings()), registry)
    gc.collect()
    assert held() is None
    assert any(isinstance(kept, ModelGraph) for kept in runner._LAST_MODEL)


def _recording(asked: list[bool], keyword: str) -> Callable[..., ModelReport]:
    """A stand-in for ``engine.analyze`` that notes what it was asked for ``keyword``
    (``freeze``, ``background`` or ``record_skips``) and checks nothing."""

    def recording(
        path: str,
        registry: object,
        settings: Settings,
        keep: list[object] | None = None,
        freeze: bool = False,
        background: bool = False,
        record_skips: bool = True,
    ) -> ModelReport:
        asked.append({"freeze": freeze, "background": background}.get(keyword, record_skips))
        return ModelReport(path=path)

    return recording


def test_only_the_last_model_of_a_process_that_ends_is_frozen_out_of_collection(
    folder: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21: the first collection after a large graph's analysis walks every object it made
    (0.07 s at 100,000 nodes); a process that ends with os._exit next need not pay for it."""
    import gc

    from convlint.graph import ModelGraph

    asked: list[bool] = []
    monkeypatch.setattr(runner, "analyze", _recording(asked, "freeze"))
    for freeze in (False, True):
        asked.clear()
        list(
            runner.iter_reports(
                folder, load_registry(), [Settings()] * len(folder), 1, None, True, freeze
            )
        )
        assert asked == [False] * (len(folder) - 1) + [freeze]
    monkeypatch.undo()
    frozen = gc.get_freeze_count()
    try:
        runner._analyze_task((0, folder[0], Settings()), load_registry(), freeze=True)
        graph = next(kept for kept in runner._LAST_MODEL if isinstance(kept, ModelGraph))
        assert gc.get_freeze_count() > frozen
        assert not any(graph is each for each in gc.get_objects())  # out of every generation
    finally:
        gc.unfreeze()


def test_a_model_checked_before_any_worker_runs_may_infer_in_a_child_unless_jobs_is_1(
    folder: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21: with a second core to spare (``--jobs`` 2 or more, and no pool running), a
    large model's shape inference runs beside the reading of its graph; ``--jobs 1`` is one
    process."""
    asked: list[bool] = []
    monkeypatch.setattr(runner, "analyze", _recording(asked, "background"))
    for jobs, expected in ((1, False), (2, True)):
        asked.clear()
        list(runner.iter_reports(folder, load_registry(), [Settings()] * len(folder), jobs))
        assert asked == [expected] * len(folder)


def test_the_rules_reasons_for_passing_nodes_over_are_kept_for_verbose_only(
    folder: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only --verbose shows why rules passed nodes over (see _for_rendering): without it, the
    reasons are not made (one per conv of a large graph)."""
    asked: list[bool] = []
    monkeypatch.setattr(runner, "analyze", _recording(asked, "record_skips"))
    for verbose in (False, True):
        asked.clear()
        settings = [Settings(verbose=verbose)] * len(folder)
        list(runner.iter_reports(folder, load_registry(), settings, 1))
        assert asked == [verbose] * len(folder)


def test_a_report_without_the_rules_reasons_is_the_same_report_otherwise(
    tmp_path: Path,
) -> None:
    path = fixtures.save(fixtures.BUILDERS["vgg16"](), tmp_path / "m.onnx")
    registry = load_registry()
    kept = analyze(path, registry, Settings())
    dropped = analyze(path, registry, Settings(), record_skips=False)
    assert len(kept.skips) == 4 and dropped.skips == []
    assert kept.findings == dropped.findings and len(kept.findings) == 11
    assert render_text([dropped], registry) == render_text([kept], registry)
