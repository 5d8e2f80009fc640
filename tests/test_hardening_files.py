"""Stage 1 (load): a model file that another program shrinks while convlint reads it is a named
error, never SIGBUS (issue 20, item 3). Nothing is memory-mapped: the large-file walk reads a
block at a time, the whole-file parse reads into one buffer."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from onnx import helper, numpy_helper

from convlint import loader, skeleton
from convlint.errors import ModelError


def _model_bytes(weight_elements: int) -> bytes:
    weight = numpy_helper.from_array(np.ones((weight_elements,), np.float32), "w")
    node = helper.make_node("Add", ["x", "w"], ["y"], name="add")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", 1, [weight_elements])],
        [helper.make_tensor_value_info("y", 1, [weight_elements])],
        [weight],
    )
    return helper.make_model(graph).SerializeToString()


def test_a_large_file_that_shrinks_while_walked_is_a_named_error(tmp_path: Path) -> None:
    """The walk of a 64 MiB+ file; the file is cut short after it was opened. Run in its own
    process: were the file mapped, the signal would end that process, not the suite."""
    path = tmp_path / "large.onnx"
    path.write_bytes(_model_bytes(skeleton.WIRE_READ_BYTES // 4 + 1024))
    assert path.stat().st_size >= skeleton.WIRE_READ_BYTES
    code = textwrap.dedent(
        f"""
        import os, sys
        from convlint import skeleton
        from convlint.cli import main
        walk = skeleton._message
        def shrinking(data, start, end, rewrite):
            if start == 0:
                os.truncate({str(path)!r}, 4096)
            return walk(data, start, end, rewrite)
        skeleton._message = shrinking
        sys.exit(main(["check", {str(path)!r}]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stderr.startswith(f"convlint: error: {path}: changed size while being read")
    assert "another program wrote it?" in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_file_that_shrinks_before_it_is_read_whole_is_a_named_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole-file parse: the size it goes by (fstat) is more than what is left to read."""
    path = tmp_path / "small.onnx"
    data = _model_bytes(1024)
    path.write_bytes(data)
    inode = path.stat().st_ino
    fstat = os.fstat

    def before_the_cut(fd: int) -> os.stat_result:
        result = fstat(fd)
        if result.st_ino != inode:
            return result
        fields = list(result)
        fields[6] = result.st_size + 100  # st_size: the file was longer when looked at
        return os.stat_result(fields)

    monkeypatch.setattr(os, "fstat", before_the_cut)
    with pytest.raises(ModelError) as caught:
        loader.read_model(path)
    assert str(caught.value) == (
        f"{path}: changed size while being read "
        f"(it had {len(data) + 100:,} bytes; another program wrote it?)"
    )
