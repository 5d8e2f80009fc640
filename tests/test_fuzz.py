"""A seeded mutation fuzz of check, stats and fix: bit flips, wrong attribute types, bad dims,
hostile names, cycles, external-data locations and text that is not UTF-8 (names, op types,
locations) over the fixtures.

Every case must end with exit 0, 1 or 2, never "internal error", with the file named in every
error line, within a time bound; `fix` must leave its input as it was and write only a model
onnx.checker accepts. A bounded number of cases runs on every CI run (48 of check and stats, 10
of fix); a longer run:

    CONVLINT_FUZZ_CASES=2000 CONVLINT_FUZZ_FIX_CASES=200 CONVLINT_FUZZ_SEED=7 pytest tests/test_fuzz.py
"""

from __future__ import annotations

import os
import random
import resource
import time
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

from convlint import fixtures

CASES = int(os.environ.get("CONVLINT_FUZZ_CASES", "48"))
SEED = int(os.environ.get("CONVLINT_FUZZ_SEED", "0"))
SECONDS_PER_CASE = 20.0
BASES = ("conv3x3", "linear_conv_chain_bad", "dense_head_bad", "squeezenet_fire", "regnet_block")
KINDS = (bool, int, float, str, bytes, list)


def _bit_flips(model: onnx.ModelProto, rng: random.Random) -> bytes:
    data = bytearray(model.SerializeToString())
    for _ in range(rng.randint(1, 8)):
        index = rng.randrange(len(data))
        data[index] ^= 1 << rng.randrange(8)
    return bytes(data)


def _attribute_type(model: onnx.ModelProto, rng: random.Random) -> bytes:
    node = rng.choice(list(model.graph.node))
    value = rng.choice([float("nan"), "two", -3, 0, [1.5, 2.5], 2**40, b"\xff\x00"])
    name = rng.choice([a.name for a in node.attribute] or ["group"])
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, onnx.helper.make_attribute(name, value)])
    return model.SerializeToString()


def _bad_dims(model: onnx.ModelProto, rng: random.Random) -> bytes:
    value = rng.choice([-1, 0, 2**62, 7])
    if rng.random() < 0.5 and model.graph.initializer:
        tensor = rng.choice(list(model.graph.initializer))
        if tensor.dims:
            tensor.dims[rng.randrange(len(tensor.dims))] = value
    else:
        dims = model.graph.input[0].type.tensor_type.shape.dim
        dims[rng.randrange(len(dims))].dim_value = value
    return model.SerializeToString()


def _hostile_names(model: onnx.ModelProto, rng: random.Random) -> bytes:
    node = rng.choice(list(model.graph.node))
    node.name = rng.choice(["a\nAll checks passed!", "\x1b[2J", "n\x00", "", "x" * 5000])
    if rng.random() < 0.3:
        node.op_type = rng.choice(["", "Co\x00nv", "NotAnOp"])
    return model.SerializeToString()


def _cycle(model: onnx.ModelProto, rng: random.Random) -> bytes:
    nodes = list(model.graph.node)
    early, late = sorted(rng.sample(range(len(nodes)), 2)) if len(nodes) > 1 else (0, 0)
    nodes[early].input[0] = nodes[late].output[0]
    return model.SerializeToString()


def _external_location(model: onnx.ModelProto, rng: random.Random) -> bytes:
    tensor = rng.choice(list(model.graph.initializer))
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    location = rng.choice(["../../etc/passwd", "/etc/passwd", "w\x00.bin", "", "missing.bin"])
    for key, value in (("location", location), ("offset", "0"), ("length", str(2**40))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def _undecodable_text(model: onnx.ModelProto, rng: random.Random) -> bytes:
    """A node name, op type, tensor name or external-data location that is not UTF-8 (protobuf
    reads it back as bytes, not str): written as a placeholder, then its bytes replaced."""
    placeholder = b"QQTEXTQQ"
    node = rng.choice(list(model.graph.node))
    where = rng.choice(["name", "op_type", "tensor", "location"])
    if where == "name":
        node.name = placeholder.decode()
    elif where == "op_type":
        node.op_type = placeholder.decode()
    elif where == "tensor" and node.output:
        old = node.output[0]
        for each in model.graph.node:
            each.input[:] = [placeholder.decode() if n == old else n for n in each.input]
            each.output[:] = [placeholder.decode() if n == old else n for n in each.output]
        for value in [*model.graph.output, *model.graph.value_info]:
            if value.name == old:
                value.name = placeholder.decode()
    else:
        tensor = rng.choice(list(model.graph.initializer))
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", placeholder.decode()
    raw = rng.choice([b"\xffQTEXT\xfeQ", b"QQ\xc3(EXTQQ", b"\x80QTEXTQQ"])
    return model.SerializeToString().replace(placeholder, raw)


MUTATIONS: list[Callable[[onnx.ModelProto, random.Random], bytes]] = [
    _bit_flips,
    _attribute_type,
    _bad_dims,
    _hostile_names,
    _cycle,
    _external_location,
    _undecodable_text,
]
FIX_CASES = int(os.environ.get("CONVLINT_FUZZ_FIX_CASES", "10"))
FIX_OPTIONS = ["--method", "weight", "--samples", "2", "--allow-noise", "--no-latency", "--quiet"]


@pytest.mark.parametrize("case", range(CASES))
def test_mutated_model_gets_a_clean_verdict(
    case: int, tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    rng = random.Random(SEED * 100_003 + case)
    mutate = MUTATIONS[case % len(MUTATIONS)]
    model = fixtures.BUILDERS[rng.choice(BASES)]()
    path = tmp_path / f"case{case}.onnx"
    path.write_bytes(mutate(model, rng))
    for command in ("check", "stats"):
        start = time.perf_counter()
        code, _, err = cli(command, str(path))
        assert time.perf_counter() - start < SECONDS_PER_CASE, (mutate.__name__, command)
        assert code in (0, 1, 2), (mutate.__name__, command, code, err)
        assert "internal error" not in err, (mutate.__name__, command, err)
        assert "Traceback" not in err
        for line in err.splitlines():
            if line.startswith("convlint: error:"):
                assert str(path) in line, (mutate.__name__, line)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert peak_kib < 3 * 1024 * 1024  # the whole test process, KiB: under 3 GiB


@pytest.mark.parametrize("case", range(FIX_CASES))
def test_mutated_model_through_fix_gets_a_clean_verdict(
    case: int, tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    """`fix` on small mutated seeds: exit 0, 1 or 2 with the file named, the input untouched,
    and what it wrote a model onnx.checker accepts."""
    rng = random.Random(SEED * 100_003 + 50_000 + case)
    mutate = MUTATIONS[case % len(MUTATIONS)]
    model = fixtures.BUILDERS[rng.choice(BASES)]()
    path = tmp_path / f"case{case}.onnx"
    data = mutate(model, rng)
    path.write_bytes(data)
    out = tmp_path / "out.onnx"
    code, _, err = cli("fix", str(path), "-o", str(out), "--timeout", "120", *FIX_OPTIONS)
    assert code in (0, 1, 2), (mutate.__name__, code, err)
    assert "internal error" not in err and "Traceback" not in err, (mutate.__name__, err)
    for line in err.splitlines():
        if line.startswith("convlint: error:"):
            assert str(path) in line, (mutate.__name__, line)
    assert path.read_bytes() == data
    if code == 0:
        onnx.checker.check_model(str(out), full_check=True)
    else:
        assert not out.exists()
