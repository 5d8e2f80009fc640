"""Stage 5, `convlint fix`'s output: where OUT may be written, the kept rewrites as the report
states them, and the atomic write of the rewritten model (``convlint.atomic``).

The model is written beside OUT (weights streamed from the runtime's data file), checked with
``onnx.checker`` (full check), verified again from the file, and only then moved over OUT. Its
external data, if any, goes under a name no file has yet (``OUT.data``, else ``OUT.1.data``,
...), so that the rename of the model is the one step that replaces the old model and its data
by the new pair (``atomic.replace_pair``); the old data file is removed after that rename.
Replaced files keep their modes; a symlink OUT stays a link and its target is replaced. When
no rewrite applies, OUT is still written (MODEL with its nodes named as ``check`` names them).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx

from convlint.atomic import new_file_mode, replace_pair, special_kind, write_target
from convlint.cost import ModelCost
from convlint.errors import ModelError, UsageError
from convlint.findings import ModelReport
from convlint.paths import external_data_files, same_file
from convlint.rewrite import weightstore
from convlint.rewrite.prepare import Prepared, infer_skeleton
from convlint.rewrite.state import Bench, Choice, FixRun, Rewrite, sum_macs
from convlint.rewrite.verify import Errors, Runtime


def resolve_output(model: Path, output: Path | None, in_place: bool) -> Path:
    """OUT, checked before any work: MODEL itself only with --in-place, in a folder that
    exists and can be written, and a regular file (or a name not taken yet)."""
    if output is None:
        if not in_place:
            raise UsageError("fix needs -o OUT (or --in-place to overwrite MODEL)")
        return model
    if same_file(output, model) and not in_place:
        raise UsageError(f"-o {output} is the input model; pass --in-place to overwrite it")
    if not output.parent.is_dir():
        raise UsageError(f"-o {output}: no such folder {str(output.parent)!r}")
    try:  # before any work: a folder that cannot be written fails now, not after it
        with tempfile.TemporaryFile(dir=output.parent):
            pass
    except OSError as exc:
        raise UsageError(
            f"-o {output}: cannot write in {str(output.parent)!r}: {exc.strerror or exc}"
        ) from None
    if output.is_dir():
        raise UsageError(f"-o {output} is a folder; give the file to write")
    kind = special_kind(write_target(output))
    if kind is not None:  # a rename would replace the device node; OUT.data cannot go beside it
        raise UsageError(f"-o {output} is {kind}, not a regular file; give the file to write")
    return output


def describe(choice: Choice, report: ModelReport, after: ModelCost) -> Rewrite:
    """A kept rewrite as the report states it, its costs counted on the written model."""
    before = report.cost
    assert before is not None
    old = [before.nodes[n] for n in choice.target.replaced_nodes()]
    new = [after.nodes[n] for n in choice.edit.new_nodes if n in after.nodes]
    factors = choice.factors
    kept = None
    pruned = choice.target.pruned(factors)
    if factors is not None and factors.kept is not None and pruned is not None:
        kept = list(factors.kept)
        producer = pruned.producer
        if producer in after.nodes:  # narrowed in place, not rewritten by another finding
            old.append(before.nodes[producer])
            new.append(after.nodes[producer])
    rank = None if factors is None else factors.rank
    return Rewrite(
        code=choice.target.code,
        node=choice.target.node,
        kind=choice.target.kind if factors is None else factors.kind,
        method="weight" if factors is None else factors.method,
        rank=list(rank) if isinstance(rank, tuple) else rank,
        params_before=sum(c.params for c in old),
        params_after=sum(c.params for c in new),
        macs_before=sum_macs(old),
        macs_after=sum_macs(new),
        verified=choice.errors,
        unsafe=choice.target.unsafe,
        latency=choice.latency,
        kept_channels=kept,
    )


def fill_output_types(model: onnx.ModelProto, path: Path) -> None:
    """Give graph outputs declared without a shape (or type) the inferred one, in place.

    Hand-built models often declare ``make_tensor_value_info("y", FLOAT, None)``; runtimes
    accept that, but ``onnx.checker``'s full check, which OUT must pass, does not.
    """
    missing = [
        value
        for value in model.graph.output
        if value.type.WhichOneof("value") in (None, "tensor_type")
        and (not value.type.tensor_type.HasField("shape") or not value.type.tensor_type.elem_type)
    ]
    if not missing:
        return
    inferred = infer_skeleton(model, path)
    known = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]}
    for value in missing:
        found = known.get(value.name)
        if found is not None and found.type.tensor_type.HasField("shape"):
            value.type.CopyFrom(found.type)


def write(
    model: onnx.ModelProto, prepared: Prepared, bench: Bench, runtime: Runtime, run: FixRun
) -> tuple[Errors, bool]:
    """Save beside OUT, check, verify from the file; move into place only if it holds."""
    analysis = prepared.analysis
    assert run.options.output is not None
    out = run.options.output
    target = write_target(out)  # a symlink's target: the link stays a link
    try:
        folder = Path(tempfile.mkdtemp(prefix=".convlint-fix-", dir=target.parent))
    except OSError as exc:
        raise UsageError(f"{out}: cannot write: {exc.strerror or exc}") from None
    try:
        staged = folder / target.name
        previous = _previous_data(target, analysis.path, analysis.data_files)
        data_name = free_data_name(target) if analysis.external else None
        with run.timer("writing"):
            fill_output_types(model, analysis.path)
            try:
                weightstore.save(model, staged, runtime.folder, data_name)
                if data_name is not None:
                    os.chmod(folder / data_name, _mode(previous, target))
                    if (folder / data_name).stat().st_size == 0:
                        # every weight is small enough to stay inline
                        (folder / data_name).unlink()
                        data_name = None
                os.chmod(staged, new_file_mode(target))
            except OSError as exc:
                raise UsageError(f"{out}: cannot write: {exc.strerror or exc}") from None
            # In the runtime's process: the checker reads the whole file, twice over.
            problem = runtime.check(staged)
            if problem:
                raise ModelError(
                    analysis.path, f"the rewritten model fails onnx.checker: {problem}"
                )
        errors = bench.measure(staged, "verifying the written model", confirm=True)
        if not errors.ok:
            return errors, False
        keep = set() if same_file(target, analysis.path) else set(analysis.data_files)
        obsolete = [p for p in previous if named_after(p, target) and p not in keep]
        with run.timer("writing"):
            try:
                staged_data = None if data_name is None else folder / data_name
                replace_pair(staged, staged_data, target, obsolete)
            except OSError as exc:
                raise UsageError(f"{out}: cannot write: {exc.strerror or exc}") from None
        return errors, True
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _previous_data(target: Path, path: Path, data_files: Sequence[Path]) -> list[Path]:
    """The data files of the model OUT replaces (MODEL's own with --in-place)."""
    if same_file(target, path):
        return list(data_files)
    if not target.is_file():
        return []
    try:
        old = weightstore.read_graph(target)
    except ModelError:  # not a model: it has no data files to replace
        return []
    return external_data_files(old, target)


def free_data_name(out: Path) -> str:
    """The first of ``OUT.data``, ``OUT.1.data``, ... that no file in OUT's folder has."""
    for number in range(1000):
        name = f"{out.name}.data" if number == 0 else f"{out.name}.{number}.data"
        if not os.path.lexists(out.parent / name):
            return name
    raise UsageError(f"{out}: cannot write: {out.name}.data to .999.data all exist already")


def named_after(data: Path, out: Path) -> bool:
    """A data file `fix` (or onnx's default naming) would have written for OUT: removing it
    when OUT stops using it cannot take the weights of another model."""
    same_folder = os.path.realpath(data.parent) == os.path.realpath(out.parent)
    return same_folder and bool(re.fullmatch(re.escape(out.name) + r"(\.[0-9]+)?\.data", data.name))


def _mode(previous: Sequence[Path], out: Path) -> int:
    """The mode of a new data file: the replaced data file's, else OUT's."""
    for data in previous:
        with contextlib.suppress(OSError):
            return data.stat().st_mode & 0o777
    return new_file_mode(out)
