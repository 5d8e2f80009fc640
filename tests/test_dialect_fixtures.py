"""The dialect converters and the new families build what they claim: valid models that
onnxruntime runs, the same function as the PyTorch-style original (quantized within a measured
bound), every Conv, Gemm, MatMul, pool and Concat under its original name.

Nothing here asks convlint for findings: tests/test_dialects.py does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from convlint.fixtures import BUILDERS, dialects
from convlint.fixtures.dialects import ACTIVATION_KINDS, KEPT_NAME_OPS, random_inputs

Converter = Callable[[onnx.ModelProto], onnx.ModelProto]

# The blocks of the issue, and a few more that exercise SE, HardSigmoid, channel shuffle
# (Reshape/Transpose), LayerNorm + GELU, Flatten + Gemm and Squeeze + LSTM in each dialect.
BLOCKS = [
    "yolo_seg_proto",
    "convnext_head",
    "convnext_head_reduce_mean",
    "resnet_bottleneck",
    "resnet_basic_block",
    "densenet_block",
    "inception_3a_naive",
    "inception_3a",
    "mobilenetv2_blocks",
    "yolov8_c2f_sppf",
    "yolox_spp",
    "bn_inception_double3x3",
    "conv3x3",
    "fused_mbconv_stage",
    "mobilenetv3_small_head_blocks",
    "shufflenet_unit",
    "convnext_block",
    "dense_head_bad",
    "crnn_lstm",
]

LAYOUTS: dict[str, Converter] = {
    "caffe": dialects.to_caffe,
    "tensorflow": dialects.to_tensorflow,
    "qdq": dialects.to_qdq,
    "qdq_outputs": lambda m: dialects.to_qdq(m, quantize_outputs=True),
    "qdq_per_tensor": lambda m: dialects.to_qdq(m, per_channel=False),
    "qoperator": dialects.to_qoperator,
}

# Measured over BLOCKS (input seed 1, calibration seed 0), worst case:
#   caffe, tensorflow    max |err| 6.2e-7 · max |y|, rel. L2 4.5e-7 (float rounding)
#   qdq (all variants),  max |err| 0.121 · max |y| (shufflenet_unit's grouped 1×1s),
#   qoperator            rel. L2 0.0325 (mobilenetv2_blocks, QOperator and QDQ outputs alike)
EXACT_MAX_ABS = 1e-5  # times max |y|
QUANTIZED_MAX_ABS = 0.15  # times max |y|
QUANTIZED_REL_L2 = 0.05


@cache
def _built(name: str) -> onnx.ModelProto:
    return BUILDERS[name]()


def model(name: str) -> onnx.ModelProto:
    """A fresh copy of the cached build (converters must not need a fresh one, but tests may
    not share mutations)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(_built(name))
    return copy


def run(m: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        m.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return list(session.run(None, feeds))


@cache
def _reference(name: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    m = _built(name)
    feeds = random_inputs(m, seed=1)
    return feeds, run(m, feeds)[0]


def nhwc(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.transpose(0, 2, 3, 1) if v.ndim == 4 else v for k, v in feeds.items()}


def errors(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max |err| / max |ref|, ||err|| / ||ref||)."""
    diff = out.astype(np.float64) - ref
    peak = float(np.abs(ref).max())
    return float(np.abs(diff).max()) / peak, float(np.linalg.norm(diff) / np.linalg.norm(ref))


def kept(m: onnx.ModelProto) -> dict[str, str]:
    return {n.name: n.op_type for n in m.graph.node if n.op_type in KEPT_NAME_OPS}


def producers(m: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in m.graph.node for o in n.output}


def initializers(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def attr(node: onnx.NodeProto, name: str) -> Any:
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def assert_valid_names(original: onnx.ModelProto, converted: onnx.ModelProto) -> None:
    names = [n.name for n in converted.graph.node]
    assert all(names) and len(set(names)) == len(names)
    after = {n.name: n.op_type for n in converted.graph.node}
    for name, op_type in kept(original).items():
        assert name in after, f"{op_type} {name!r} lost its name"
        quantized = op_type == "Conv" and after[name] == "QLinearConv"
        assert after[name] == op_type or quantized, (name, op_type, after[name])


# ----------------------------------------------------------------- layouts and quantization
@pytest.mark.parametrize("dialect", sorted(LAYOUTS))
@pytest.mark.parametrize("name", BLOCKS)
def test_dialect_computes_the_same_function(name: str, dialect: str) -> None:
    original = model(name)
    before = original.SerializeToString()
    converted = LAYOUTS[dialect](original)
    assert original.SerializeToString() == before, "the converter changed its argument"
    onnx.checker.check_model(converted, full_check=True)
    assert_valid_names(original, converted)
    feeds, ref = _reference(name)
    if dialect == "tensorflow":
        out = run(converted, nhwc(feeds))[0]
        out = out.transpose(0, 3, 1, 2) if out.ndim == 4 else out
    else:
        out = run(converted, feeds)[0]
    assert out.shape == ref.shape
    max_abs, rel_l2 = errors(out, ref)
    if dialect in ("caffe", "tensorflow"):
        assert max_abs <= EXACT_MAX_ABS, max_abs
    else:
        assert max_abs <= QUANTIZED_MAX_ABS and rel_l2 <= QUANTIZED_REL_L2, (max_abs, rel_l2)


@pytest.mark.parametrize("name", ["resnet_basic_block", "bn_inception_double3x3"])
def test_caffe_batch_norm_is_mul_then_add_of_c11_constants(name: str) -> None:
    original = model(name)
    converted = dialects.to_caffe(original)
    consts = initializers(converted)
    by_name = {n.name: n for n in converted.graph.node}
    bns = [n for n in original.graph.node if n.op_type == "BatchNormalization"]
    assert bns and not any(n.op_type == "BatchNormalization" for n in converted.graph.node)
    for bn in bns:
        channels = len(initializers(original)[bn.input[1]])
        mul, add = by_name[f"{bn.name}/mul"], by_name[f"{bn.name}/add"]
        assert (mul.op_type, add.op_type) == ("Mul", "Add")
        assert mul.input[0] == bn.input[0] and add.input[0] == mul.output[0]
        assert add.output[0] == bn.output[0]
        assert consts[mul.input[1]].shape == consts[add.input[1]].shape == (channels, 1, 1)


@pytest.mark.parametrize("name", ["resnet_bottleneck", "inception_3a", "yolov8_c2f_sppf"])
def test_tensorflow_is_nhwc_with_transposed_convs_and_pools(name: str) -> None:
    original = model(name)
    converted = dialects.to_tensorflow(original)
    (graph_input,) = converted.graph.input
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    n, c, h, w = (d.dim_value for d in original.graph.input[0].type.tensor_type.shape.dim)
    assert dims == [n, h, w, c]
    made_by = producers(converted)
    read_by = Counter(i for node in converted.graph.node for i in node.input)
    consumers = {i: node for node in converted.graph.node for i in node.input}
    wrapped = [n for n in converted.graph.node if n.op_type in ("Conv", "MaxPool", "AveragePool")]
    assert wrapped
    for node in wrapped:
        before = made_by[node.input[0]]
        after = consumers[node.output[0]]
        assert before.op_type == "Transpose" and attr(before, "perm") == [0, 3, 1, 2]
        assert after.op_type == "Transpose" and attr(after, "perm") == [0, 2, 3, 1]
        assert read_by[node.output[0]] == 1
    assert not any(n.op_type == "BatchNormalization" for n in converted.graph.node)
    consts = initializers(converted)
    for node in converted.graph.node:
        if node.name.endswith(("/sub", "/mul", "/add")) and node.op_type in ("Sub", "Mul", "Add"):
            assert consts[node.input[1]].ndim == 1  # (C,): broadcasts along the last axis
        if node.op_type == "Concat":
            assert attr(node, "axis") == 3


@pytest.mark.parametrize(
    ("name", "build", "options"),
    [
        ("resnet_bottleneck", {}, {}),
        ("inception_3a", {}, {"quantize_outputs": True}),
        ("conv3x3", {"bias": True}, {}),  # the bias: int32 through DequantizeLinear
    ],
)
def test_qdq_convs_read_quantize_dequantize_and_int8_weights(
    name: str, build: dict[str, Any], options: dict[str, Any]
) -> None:
    original = BUILDERS[name](**build)
    converted = dialects.to_qdq(original, **options)
    made_by = producers(converted)
    consts = initializers(converted)
    convs = [n for n in converted.graph.node if n.op_type == "Conv"]
    assert [n.name for n in convs] == [n.name for n in original.graph.node if n.op_type == "Conv"]
    for conv in convs:
        dq = made_by[conv.input[0]]
        q = made_by[dq.input[0]]
        assert (dq.op_type, q.op_type) == ("DequantizeLinear", "QuantizeLinear")
        assert consts[dq.input[2]].dtype == np.uint8 and consts[dq.input[1]].shape == ()
        weight = made_by[conv.input[1]]
        assert weight.op_type == "DequantizeLinear" and attr(weight, "axis") == 0
        assert consts[weight.input[0]].dtype == np.int8
        assert consts[weight.input[1]].shape == (consts[weight.input[0]].shape[0],)
        if len(conv.input) > 2:
            bias = made_by[conv.input[2]]
            assert bias.op_type == "DequantizeLinear"
            assert consts[bias.input[0]].dtype == np.int32
            x_scale = consts[dq.input[1]]
            np.testing.assert_allclose(
                consts[bias.input[1]], x_scale * consts[weight.input[1]], rtol=1e-6
            )
        if options.get("quantize_outputs"):
            (after,) = [n for n in converted.graph.node if conv.output[0] in n.input]
            assert after.op_type == "QuantizeLinear"


def test_qoperator_convs_become_qlinearconv_of_the_same_name() -> None:
    original = BUILDERS["conv3x3"](bias=True)
    converted = dialects.to_qoperator(original)
    assert [(n.op_type, n.name) for n in converted.graph.node] == [
        ("QuantizeLinear", "input/QuantizeLinear"),
        ("QLinearConv", "conv"),
        ("DequantizeLinear", "output/DequantizeLinear"),
    ]
    consts = initializers(converted)
    qconv = converted.graph.node[1]
    assert consts[qconv.input[3]].dtype == np.int8 and consts[qconv.input[8]].dtype == np.int32
    feeds = random_inputs(original, seed=1)
    max_abs, rel_l2 = errors(run(converted, feeds)[0], run(original, feeds)[0])
    assert max_abs <= QUANTIZED_MAX_ABS and rel_l2 <= QUANTIZED_REL_L2


def test_quantizers_refuse_old_opsets_and_missing_weights() -> None:
    with pytest.raises(ValueError, match="opset >= 13"):
        dialects.to_qdq(BUILDERS["opset7_model"]())
    with pytest.raises(ValueError, match="weights='random'"):
        dialects.to_caffe(BUILDERS["resnet50"]())


# ----------------------------------------------------------------- activations
# The op types each Relu becomes, in the order the converter writes them.
ACTIVATION_OPS = {
    "silu": ["Sigmoid", "Mul"],
    "hardswish_hs": ["HardSigmoid", "Mul"],
    "hardswish_clip": ["Add", "Clip", "Mul", "Div"],
    "gelu_erf": ["Div", "Erf", "Add", "Mul", "Mul"],
    "gelu_tanh": ["Mul", "Pow", "Mul", "Add", "Mul", "Tanh", "Add", "Mul"],
    "mish": ["Softplus", "Tanh", "Mul"],
    "relu6": ["Clip"],
}
ACTIVATION_BLOCKS = [
    "resnet_bottleneck",
    "densenet_block",
    "inception_3a_naive",
    "mobilenetv2_blocks",
    "yolov8_c2f_sppf",
    "bn_inception_double3x3",
]


def test_every_kind_has_its_op_sequence() -> None:
    assert set(ACTIVATION_OPS) == set(ACTIVATION_KINDS)


@pytest.mark.parametrize("kind", ACTIVATION_KINDS)
@pytest.mark.parametrize("name", ACTIVATION_BLOCKS)
def test_with_activation_is_valid_and_runs(name: str, kind: Any) -> None:
    original = model(name)
    converted = dialects.with_activation(original, kind)
    onnx.checker.check_model(converted, full_check=True)
    assert_valid_names(original, converted)
    assert not any(n.op_type == "Relu" for n in converted.graph.node)
    relus = [n for n in original.graph.node if n.op_type == "Relu"]
    by_name = {n.name: n for n in converted.graph.node}
    prefix_ops = Counter(n.name.rsplit("/", 1)[0] for n in converted.graph.node if "/" in n.name)
    for relu in relus:
        assert prefix_ops[relu.name] == len(ACTIVATION_OPS[kind])
        last = next(n for n in converted.graph.node if relu.output[0] in n.output)
        assert last.name.startswith(f"{relu.name}/")
        assert by_name[last.name].op_type == ACTIVATION_OPS[kind][-1]
    if kind != "relu6":
        assert not any(n.op_type == "Clip" and "/" not in n.name for n in converted.graph.node)
    feeds, ref = _reference(name)
    out = run(converted, feeds)[0]
    assert out.shape == ref.shape and np.isfinite(out).all()


@pytest.mark.parametrize("kind", ACTIVATION_KINDS)
def test_activation_op_order(kind: Any) -> None:
    converted = dialects.with_activation(model("linear_conv_chain_good"), kind)
    ops = [n.op_type for n in converted.graph.node if n.name.startswith("expand_relu/")]
    assert ops == ACTIVATION_OPS[kind]


def test_with_activation_on_relu6_model_replaces_the_clips() -> None:
    converted = dialects.with_activation(model("mobilenetv2_blocks"), "silu")
    assert not any(n.op_type in ("Relu", "Clip") for n in converted.graph.node)
    assert any(n.name == "features.3.expand_relu6/sigmoid" for n in converted.graph.node)


def test_silu_values() -> None:
    """x·Sigmoid(x) is SiLU: one conv + ReLU becomes conv + SiLU, checked against numpy."""
    original = model("stem_only")
    silu = dialects.with_activation(original, "silu")
    probe = onnx.ModelProto()
    probe.CopyFrom(original)
    probe.graph.output[0].name = "bn1"
    kept_nodes = [n for n in probe.graph.node if n.op_type != "Relu"]
    del probe.graph.node[:]
    probe.graph.node.extend(kept_nodes)
    feeds = random_inputs(original, seed=1)
    pre = run(probe, feeds)[0].astype(np.float64)
    np.testing.assert_allclose(run(silu, feeds)[0], pre / (1 + np.exp(-pre)), atol=1e-5)


# ----------------------------------------------------------------- families
FAMILIES = [
    "yolov8_c2f_sppf",
    "yolox_spp",
    "bn_inception_double3x3",
    "craft_fc_conv",
    "fused_mbconv_stage",
    "crnn_lstm",
    "vgg_head_constant_of_shape",
    "convnext_head",
    "convnext_head_reduce_mean",
    "yolo_seg_proto",
    "tcn_block_1d",
]


@pytest.mark.parametrize("name", FAMILIES)
def test_family_is_valid_and_runs(name: str) -> None:
    m = model(name)
    onnx.checker.check_model(m, full_check=True)
    out = run(m, random_inputs(m, seed=1))[0]
    declared = [d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim]
    assert list(out.shape) == declared and np.isfinite(out).all()


def test_crnn_batch_first_is_crnn_transposed() -> None:
    """Same seed, same weights: the batch-first CRNN's N×T×37 is the sequence-first T×N×37
    transposed. onnxruntime runs layout 0 only, so the layout-1 LSTM tail is run by onnx's
    reference evaluator and compared with the layout-0 tail."""
    from onnx.reference import ReferenceEvaluator

    sequence_first = model("crnn_lstm")
    batch_first = model("crnn_lstm_batch_first")
    torch_style = BUILDERS["crnn_lstm_batch_first"](lstm_layout=0)
    for m in (batch_first, torch_style):
        onnx.checker.check_model(m, full_check=True)
    (lstm,) = [n for n in batch_first.graph.node if n.op_type == "LSTM"]
    assert attr(lstm, "layout") == 1
    feeds = random_inputs(sequence_first, seed=1)
    expected = run(sequence_first, feeds)[0].transpose(1, 0, 2)
    np.testing.assert_allclose(run(torch_style, feeds)[0], expected, atol=1e-5)

    def tail(m: onnx.ModelProto) -> onnx.ModelProto:
        inferred = onnx.shape_inference.infer_shapes(m)
        return onnx.utils.Extractor(inferred).extract_model(["permute"], ["output"])

    sequence = {"permute": np.random.default_rng(2).standard_normal((1, 32, 256), np.float32)}
    by_reference = ReferenceEvaluator(tail(batch_first)).run(None, sequence)[0]
    np.testing.assert_allclose(by_reference, run(tail(torch_style), sequence)[0], atol=1e-5)

    def params(m: onnx.ModelProto) -> int:
        return sum(
            int(np.prod(t.dims))
            for t in m.graph.initializer
            if t.data_type == onnx.TensorProto.FLOAT
        )

    assert params(sequence_first) == params(batch_first) == params(torch_style)
    (matmul,) = [n for n in batch_first.graph.node if n.op_type == "MatMul"]
    assert initializers(batch_first)[matmul.input[1]].shape == (256, 37)


def test_c2f_bottleneck_convs_read_128_channels_and_sppf_chains_pools() -> None:
    m = model("yolov8_c2f_sppf")
    consts = initializers(m)
    convs = {n.name: consts[n.input[1]].shape for n in m.graph.node if n.op_type == "Conv"}
    assert convs["model.8.m.0.cv1.conv"] == (128, 128, 3, 3)
    assert convs["model.8.cv2.conv"] == (256, 512, 1, 1)
    (split,) = [n for n in m.graph.node if n.op_type == "Split"]
    assert list(consts[split.input[1]]) == [128, 128]
    pools = [n for n in m.graph.node if n.op_type == "MaxPool"]
    assert [p.input[0] for p in pools[1:]] == [p.output[0] for p in pools[:-1]]
    (concat,) = [n for n in m.graph.node if n.name == "model.9.concat"]
    assert list(concat.input) == ["model.9.cv1.act", *(p.output[0] for p in pools)]


def test_yolox_spp_pools_read_the_same_tensor() -> None:
    m = model("yolox_spp")
    pools = [n for n in m.graph.node if n.op_type == "MaxPool"]
    assert [attr(p, "kernel_shape") for p in pools] == [[5, 5], [9, 9], [13, 13]]
    assert {p.input[0] for p in pools} == {"backbone.backbone.dark5.1.conv1.act"}


def test_vgg_head_weights_come_from_constant_of_shape() -> None:
    m = model("vgg_head_constant_of_shape")
    made_by = producers(m)
    gemms = [n for n in m.graph.node if n.op_type == "Gemm"]
    assert [g.name for g in gemms] == ["fc6", "fc7"]
    for gemm in gemms:
        for operand in gemm.input[1:]:
            source = made_by[operand]
            assert source.op_type == "ConstantOfShape"
            assert initializers(m)[source.input[0]].dtype == np.int64
    assert initializers(m)["fc6.weight.shape"].tolist() == [512, 256 * 7 * 7]
