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


def _inline_constant_model(path: Path) -> int:
    """A model of 72 MiB whose weight is a Constant's inline value, not an initializer."""
    elements = 18 * 1024 * 1024
    value = numpy_helper.from_array(np.ones((1, elements), np.float32), "c")
    nodes = [
        helper.make_node("Constant", [], ["k"], value=value, name="const"),
        helper.make_node("Add", ["x", "k"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", 1, [1, elements])],
        [helper.make_tensor_value_info("y", 1, [1, elements])],
    )
    path.write_bytes(helper.make_model(graph).SerializeToString())
    return elements


def test_a_large_inline_constant_is_read_without_its_values(tmp_path: Path) -> None:
    """Issue 20, item 7: a Constant of 64 MiB and more is walked past as an initializer is."""
    import onnx

    path = tmp_path / "constant.onnx"
    elements = _inline_constant_model(path)
    encoded = skeleton.read_without_weights(path)
    assert encoded is not None and len(encoded) < 4096
    model = onnx.load_model_from_string(encoded)
    (value,) = model.graph.node[0].attribute
    assert list(value.t.dims) == [1, elements]
    assert not value.t.raw_data and not value.t.float_data
    loaded = loader.load(path)
    assert [n.op_type for n in loaded.model.graph.node] == ["Constant", "Add"]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's VmHWM")
def test_checking_a_large_inline_constant_holds_no_copy_of_it(tmp_path: Path) -> None:
    """The peak memory of `check` on it, in its own process: well under the file's 72 MiB
    (it was 412 MiB, the values held several times over)."""
    path = tmp_path / "constant.onnx"
    _inline_constant_model(path)
    # VmHWM, not ru_maxrss: that one keeps the peak of the process it was forked from.
    code = (
        "import sys\n"
        "from convlint.cli import main\n"
        f"code = main(['check', {str(path)!r}, '--quiet'])\n"
        "status = open('/proc/self/status').read().split('VmHWM:')[1]\n"
        "print(status.split()[0])\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    peak_kib = int(result.stdout.split()[-1])
    assert peak_kib < path.stat().st_size // 1024, peak_kib
