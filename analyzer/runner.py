"""Stage 4 over many models: check them in parallel, each model's results shown as they come.

Models are checked in this process while those left would take less time than starting workers
costs; the rest go to a pool of worker processes created once per run (``fork`` on Linux, so a
worker starts with everything this process imported and the registry it loaded; one model per
message, or chunks of a few when each takes under 10 ms, answered model by model: a worker that
dies, of a SIGBUS or the OOM killer's SIGKILL, makes the model it was checking that model's error,
``worker died: signal 9 (SIGKILL)``, and another worker takes its place). When the sizes of the
graphs (the bytes of their nodes, at the start of each file) say that the run is long enough for
a pool, the pool starts at once, each worker with its first models as soon as it is forked, and
this process checks the first model meanwhile.
Reports come back without per-node costs, without the findings' neighbourhood sketches unless
the format draws them (markdown), and without the rules' reasons for passing nodes over unless
``--verbose``: no format shows them otherwise. They come back in any order and are handed on in
the order of the paths given: each as soon as it and every model before it are done, so what is
printed is the same bytes whatever ``jobs`` is. ``text`` and ``github`` reports are printed that
way, model by model; the other formats are documents (``json``, ``sarif``, ``junit``,
``markdown``), rendered whole at the end. On a terminal, a progress line on stderr counts the
models done.
"""

from __future__ import annotations

import collections
import gc
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from convlint.baseline import Baseline
from convlint.engine import Settings, analyze
from convlint.errors import ConvlintError
from convlint.findings import ModelReport
from convlint.output import write_stream
from convlint.registry import Registry, load_registry
from convlint.reporters import RENDERERS, STREAMED, render_text
from convlint.skeleton import node_bytes

STREAMED_FORMATS = tuple(STREAMED)
MAX_CHUNK = 8  # models per message to a worker: fewer messages, and results still come soon
# Checking this much in this process costs less than starting workers (fork, first messages).
SERIAL_SECONDS = 0.25
SOLO_SECONDS = 0.01  # models that take this long each are sent to workers one by one
# What checking a model costs per byte of its graph's nodes (a 2,000-node graph's nodes take
# 227 KB, and 40-70 ms to check; a file's size says little, as weights make it large, not slow):
# models whose nodes, as the start of each file shows them, take longer than SERIAL_SECONDS start
# the pool at once.
SECONDS_PER_NODE_BYTE = 1 / 5e6


def default_jobs() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def check_and_render(
    paths: Sequence[str],
    registry: Registry,
    settings: Sequence[Settings],
    *,
    jobs: int | None = None,
    format: str = "text",
    verbose: bool = False,
    quiet: bool = False,
    color: bool = False,
    known: Baseline | None = None,
    stream: TextIO | None = None,
    progress: TextIO | None = None,
    names: Mapping[str, str] | None = None,
    freeze: bool = False,
) -> tuple[list[ModelReport], str]:
    """Check ``paths`` (each with its own settings) in ``jobs`` processes (default: the number
    of cores) and render the report in ``format``.

    With a ``stream``, a text or github report (``reporters.STREAMED``) is written to it model
    by model as the models are done, each model's part rendered alone, and what is returned is
    the rest (the summary line); otherwise all of it is returned. ``known`` findings (a
    baseline) are applied to each report as it comes. A ``progress`` stream that is a
    terminal shows how many models are done (not with ``quiet``). ``names`` reports a path
    under another name (a model read from stdin, as ``-``). ``freeze``: this process ends
    with ``os._exit`` once the report is written (see :func:`iter_reports`).
    """
    streamed = STREAMED.get(format) if stream is not None else None
    shown = _Progress(progress if not quiet else None, len(paths))
    reports: list[ModelReport] = []
    sketches = format == "markdown"  # the only format that draws a finding's neighbourhood
    checked = iter_reports(paths, registry, settings, jobs, shown.advance, sketches, freeze)
    for report in checked:
        if names:
            report.path = names.get(report.path, report.path)
        if known is not None:
            known.apply([report])
        reports.append(report)
        if streamed is not None:
            assert stream is not None
            chunk = streamed.model(report, registry, verbose, color)
            if chunk:
                shown.clear()
                write_stream(stream, chunk)
                shown.draw()
    shown.clear()
    if streamed is not None:  # quiet: findings only, the summary left out
        return reports, "" if quiet else streamed.tail(reports, color)
    return reports, _render(reports, registry, format, verbose, color, quiet)


def iter_reports(
    paths: Sequence[str],
    registry: Registry,
    settings: Sequence[Settings],
    jobs: int | None = None,
    on_done: Callable[[], None] | None = None,
    sketches: bool = True,
    freeze: bool = False,
) -> Iterator[ModelReport]:
    """The reports of ``paths`` in their order, each as soon as it and every one before it are
    done; ``on_done`` is called whenever a model is done (in any order). Without ``sketches``,
    findings come without their neighbourhood (``Finding.context``, which markdown draws).

    ``freeze`` says that this process ends with ``os._exit`` after the run (convlint's command
    line does): the last model it checks itself is then left out of garbage collection
    (``engine.lint``'s ``freeze``), as the process will never free it."""
    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise ConvlintError("--jobs must be at least 1")
    if len(settings) != len(paths):
        raise ValueError("one Settings per path")
    if jobs > 1 and len(paths) > 2 and _looks_long(paths[1:]):
        # Long enough by the graphs' sizes: the workers start now, on all but the first model,
        # which this process checks while they start.
        workers = min(jobs, len(paths) - 1)
        yield from _pooled(paths, registry, settings, 0, workers, on_done, None, sketches, True)
        return
    # Models are checked here, in order, while those left would take less time than starting
    # workers costs (a folder of small models is done before a pool would be up); the rest go
    # to the pool.
    started, first = time.perf_counter(), 0
    while first < len(paths):
        spent = time.perf_counter() - started
        if jobs > 1 and first and spent / first * (len(paths) - first) > SERIAL_SECONDS:
            break
        _fault(paths[first])
        last = freeze and first == len(paths) - 1
        task = (first, paths[first], settings[first])
        # No worker runs yet: with jobs to spare, a large model infers its shapes in a child.
        report = _analyze_task(task, registry, sketches, last, jobs > 1)[1]
        first += 1
        if on_done is not None:
            on_done()
        yield report
    if first < len(paths):
        # Models that take a while each go to the workers one at a time, so that no worker
        # is left idle at the end while another finishes a chunk.
        spent = time.perf_counter() - started
        chunk = 1 if spent / max(first, 1) >= SOLO_SECONDS else None
        workers = min(jobs, len(paths) - first)
        yield from _pooled(paths, registry, settings, first, workers, on_done, chunk, sketches)


def _looks_long(paths: Sequence[str]) -> bool:
    """Whether checking ``paths`` takes longer than SERIAL_SECONDS, judged by the bytes of
    their graphs' nodes at the start of each file (each file's first 64 KiB, read until the
    answer is known: a few milliseconds)."""
    seconds = 0.0
    for path in paths:
        seconds += node_bytes(path) * SECONDS_PER_NODE_BYTE
        if seconds > SERIAL_SECONDS:
            return True
    return False


def _for_rendering(
    report: ModelReport, settings: Settings, sketches: bool = True, keep: list[object] | None = None
) -> ModelReport:
    """The report less what no format the command line renders shows: the cost of each node
    (reports show the model's totals), the findings' neighbourhood sketches unless
    ``sketches``, and, without ``--verbose``, why rules passed nodes over. A worker sends back a
    tenth of what it would on a large graph, and a finding a third."""
    if keep is not None:  # what is dropped here is left to ``keep`` (see _LAST_MODEL)
        keep.extend((report.cost.nodes if report.cost else None, report.skips, report.findings))
    if report.cost is not None:
        report.cost.nodes = {}
    if not settings.verbose:
        report.skips = []
    if not sketches:
        report.findings = [replace(f, context=None) for f in report.findings]
        report.suppressed = [replace(f, context=None) for f in report.suppressed]
    return report


def _pooled(
    paths: Sequence[str],
    registry: Registry,
    settings: Sequence[Settings],
    first: int,
    workers: int,
    on_done: Callable[[], None] | None,
    chunk: int | None = None,
    sketches: bool = True,
    here: bool = False,
) -> Iterator[ModelReport]:
    """The reports of ``paths[first:]`` from ``workers`` processes, in order; with ``here``,
    this process checks ``paths[first]`` itself once the workers are started.

    Each worker is given a few models at a time and answers model by model, so this process
    knows which model a worker was checking when it died (a SIGBUS, the OOM killer's SIGKILL):
    that model's report is the error ``worker died: signal N (NAME)``, the worker's other
    models go back in the queue, a new worker takes its place, and the run goes on."""
    import multiprocessing  # only runs that start workers pay for importing it
    from multiprocessing.connection import wait

    method = "fork" if _can_fork(multiprocessing.get_all_start_methods()) else "spawn"
    context: Any = multiprocessing.get_context(method)
    pooled = range(first + 1 if here else first, len(paths))
    queue = collections.deque((i, paths[i], settings[i]) for i in pooled)
    if chunk is None:
        chunk = max(1, min(MAX_CHUNK, len(queue) // (workers * 4)))
    # A forked worker inherits the registry; a spawned one loads its own (plugins too).
    inherited = registry if method == "fork" else None
    running: dict[Any, _Worker] = {}  # by the worker's end of its pipe

    def start() -> _Worker:
        ours, theirs = context.Pipe()
        process = context.Process(target=_work, args=(theirs, inherited, sketches), daemon=True)
        # Ctrl-C is held back while the worker starts: it must not get one before it ignores
        # it (a traceback each).
        with _sigint_held():
            process.start()
        theirs.close()
        running[ours] = _Worker(process, ours)
        return running[ours]

    def give(worker: _Worker) -> None:
        tasks = [queue.popleft() for _ in range(min(chunk, len(queue)))]
        worker.pending = collections.deque(tasks)
        worker.connection.send(tasks if tasks else None)

    waiting: dict[int, ModelReport] = {}
    following = first
    # Objects that exist now are left out of the cyclic GC's passes, so that a forked worker's
    # collections do not touch (and copy) every page it shares with this process.
    gc.freeze()
    try:
        for _ in range(workers):  # each to work as soon as it is forked
            give(start())
        if here:
            _fault(paths[first])
            task = (first, paths[first], settings[first])
            waiting[first] = _analyze_task(task, registry, sketches)[1]
            if on_done is not None:
                on_done()
        while following < len(paths):
            while following in waiting:
                yield waiting.pop(following)
                following += 1
            if following == len(paths):
                break
            for ready in wait(list(running)):
                worker = running[ready]
                try:
                    index, report = worker.connection.recv()
                except (EOFError, OSError):  # the worker ended: told to, or it died
                    del running[ready]
                    worker.connection.close()
                    worker.process.join()
                    if not worker.pending:
                        continue
                    index, path, _ = worker.pending.popleft()
                    report = ModelReport(path=path, error=_death(worker.process.exitcode))
                    queue.extendleft(reversed(worker.pending))
                    if queue:
                        give(start())
                else:
                    worker.pending.popleft()
                    if not worker.pending:
                        give(worker)
                if on_done is not None:
                    on_done()
                waiting[index] = report
                while following in waiting:
                    yield waiting.pop(following)
                    following += 1
    finally:
        gc.unfreeze()
        for worker in running.values():
            if worker.process.is_alive():
                worker.process.terminate()
        for worker in running.values():
            worker.process.join()
            worker.connection.close()


@dataclass
class _Worker:
    process: Any  # multiprocessing's Process of the context in use
    connection: Any  # this process's end of the pipe to it
    pending: collections.deque[tuple[int, str, Settings]] = field(default_factory=collections.deque)


def _death(exitcode: int | None) -> str:
    """How a worker ended, as the error of the model it was checking."""
    if exitcode is not None and exitcode < 0:
        try:
            return f"worker died: signal {-exitcode} ({signal.Signals(-exitcode).name})"
        except ValueError:
            return f"worker died: signal {-exitcode}"
    return f"worker died: exit code {exitcode}"


def _work(connection: Any, registry: Registry | None, sketches: bool = True) -> None:
    """A worker: check the models it is sent, answering model by model, until told to stop."""
    _start_worker(registry)
    assert _REGISTRY is not None
    while True:
        try:
            tasks = connection.recv()
        except (EOFError, OSError):  # the run ended
            return
        if tasks is None:
            return
        for task in tasks:
            _fault(task[1], worker=True)
            try:
                answer = _analyze_task(task, _REGISTRY, sketches)
            except Exception as exc:  # the model's error, not the run's
                message = f"internal error: {type(exc).__name__}: {exc}"
                answer = (task[0], ModelReport(path=task[1], error=message))
            connection.send(answer)


def _can_fork(methods: Sequence[str]) -> bool:
    # macOS system libraries are not fork-safe; elsewhere fork is the Unix default.
    return "fork" in methods and sys.platform != "darwin"


@contextmanager
def _sigint_held() -> Iterator[None]:
    """SIGINT blocked in this thread (and the processes it starts) while inside; one that came
    meanwhile is delivered on leaving."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


_REGISTRY: Registry | None = None
# A test hook: "hang:NAME" makes the process (a worker, or this one) that checks the model
# named NAME wait until killed; "kill:NAME" makes the worker that checks it kill itself.
WORKER_FAULT_ENV = "CONVLINT_TEST_WORKER_FAULT"


def _fault(path: str, worker: bool = False) -> None:
    """The test hook (``WORKER_FAULT_ENV``), for the model at ``path``."""
    fault, _, name = os.environ.get(WORKER_FAULT_ENV, "").partition(":")
    if os.path.basename(path) != name:
        return
    if fault == "hang":
        while True:
            signal.pause()
    if fault == "kill" and worker:
        os.kill(os.getpid(), signal.SIGKILL)


def _start_worker(registry: Registry | None) -> None:
    # Ctrl-C reaches every process of the terminal's group: the parent stops the pool, and
    # workers stay quiet (no traceback each). It was blocked since the fork (_sigint_held).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    global _REGISTRY
    _REGISTRY = registry if registry is not None else load_registry()


# What the last model checked in this process left (its model, graph and views, its per-node
# costs): convlint's command line and its workers end with os._exit, without freeing their
# objects, so freeing the last model's one by one (0.1-0.15 s at 100,000 nodes) would be paid for
# nothing. Each model checked frees the one before it.
_LAST_MODEL: list[object] = []


def _analyze_task(
    task: tuple[int, str, Settings],
    registry: Registry,
    sketches: bool = True,
    freeze: bool = False,
    background: bool = False,
) -> tuple[int, ModelReport]:
    """One model checked, by a worker or by this process: its index and its report; with
    ``freeze``, the last this process checks before it ends with ``os._exit``; with
    ``background``, no worker runs and shape inference may take a core of its own."""
    index, path, settings = task
    _LAST_MODEL.clear()
    report = analyze(
        path,
        registry,
        settings,
        keep=_LAST_MODEL,
        freeze=freeze,
        background=background,
        record_skips=settings.verbose,  # shown with --verbose only (see _for_rendering)
    )
    return index, _for_rendering(report, settings, sketches, _LAST_MODEL)


# -- rendering ------------------------------------------------------------------------------


def _render(
    reports: Sequence[ModelReport],
    registry: Registry,
    format: str,
    verbose: bool,
    color: bool,
    quiet: bool,
) -> str:
    """The whole report, as the command line prints it."""
    if format != "text":
        return RENDERERS[format](reports, registry, verbose=verbose)
    text = render_text(reports, registry, verbose=verbose, color=color)
    if quiet:  # findings only: the summary line left out
        text = "".join(line + "\n" for line in text.splitlines()[:-1])
    return text


class _Progress:
    """``convlint: 12/40 models checked`` on one line of a terminal, redrawn as models finish."""

    def __init__(self, stream: TextIO | None, total: int) -> None:
        self.stream = stream if total > 1 and stream is not None and _is_terminal(stream) else None
        self.total = total
        self.done = 0
        self.shown = 0  # characters on the line now

    def advance(self) -> None:
        self.done += 1
        self.draw()

    def draw(self) -> None:
        if self.stream is None:
            return
        line = f"convlint: {self.done}/{self.total} models checked"
        self.stream.write("\r" + line)
        self.stream.flush()
        self.shown = len(line)

    def clear(self) -> None:
        if self.stream is None or not self.shown:
            return
        self.stream.write("\r" + " " * self.shown + "\r")
        self.stream.flush()
        self.shown = 0


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
