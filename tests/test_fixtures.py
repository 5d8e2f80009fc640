"""Fixture builders build what they claim: valid models, the right shapes, the paper's numbers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from convlint.fixtures import BAD_WRITERS, BUILDERS, external_data_sizes, save
from convlint.fixtures.bad import write_uninferable

Dims = list[int | str]

EXPECTED_OUTPUT_SHAPES: dict[str, list[Dims]] = {
    "inception_3a_naive": [[1, 416, 28, 28]],
    "inception_3a_reduced": [[1, 416, 28, 28]],
    "inception_3a": [[1, 256, 28, 28]],
    "resnet_basic_block": [[1, 128, 28, 28]],
    "resnet_bottleneck": [[1, 256, 56, 56]],
    "conv3x3": [[1, 256, 14, 14]],
    "vgg_stack": [[1, 10]],
    "resnet50": [[1, 1000]],
    "vgg16": [[1, 1000]],
    "inception_v3_grid_reduction": [[1, 576, 17, 17]],
    "densenet_block": [[1, 160, 28, 28]],
    "mobilenetv2_blocks": [[1, 32, 28, 28]],
    "mobilenetv2_tail": [[1, 1280, 7, 7]],
    "mobilenetv3_small_head_blocks": [[1, 24, 28, 28]],
    "squeezenet_fire": [[1, 512, 28, 28]],
    "shufflenet_unit": [[1, 240, 28, 28]],
    "convnext_block": [[1, 96, 56, 56]],
    "convnext_downsample": [[1, 384, 14, 14]],
    "regnet_block": [[1, 192, 28, 28]],
    "linear_conv_chain_bad": [[1, 64, 14, 14]],
    "linear_conv_chain_good": [[1, 64, 14, 14]],
    "dense_head_bad": [[1, 10]],
    "dense_head_good": [[1, 10]],
    "spatial_expansion_bad": [[1, 256, 14, 14]],
    "spatial_expansion_good": [[1, 256, 14, 14]],
    "stem_only": [[1, 64, 112, 112]],
    # ONNX inference cannot carry H and W through a padded conv: it invents fresh names ("?").
    "symbolic_dims_model": [["N", 8, "?", "?"]],
    "weights_as_constants": [[1, 32, 14, 14]],
    "weights_as_inputs": [[1, 32, 14, 14]],
    "opset7_model": [[1, 10]],
    "with_if_subgraph": [[1, 8, 14, 14]],
    "custom_domain_op": [[1, 32, 14, 14]],
    # The point of this fixture: ONNX inference alone loses the dims a computed Slice keeps.
    "chunk_by_computed_slice": [["?", 58, "?", "?"]],
    "big_chain": [[1, 8, 8, 8]],
    "yolov8_c2f_sppf": [[1, 256, 20, 20]],
    "yolox_spp": [[1, 512, 20, 20]],
    "bn_inception_double3x3": [[1, 576, 14, 14]],
    "craft_fc_conv": [[1, 1024, 16, 16]],
    "fused_mbconv_stage": [[1, 48, 28, 28]],
    "crnn_lstm": [[32, 1, 37]],
    "crnn_lstm_batch_first": [[1, 32, 37]],
    "vgg_head_constant_of_shape": [[1, 10]],
    "convnext_head": [[1, 1000]],
    "convnext_head_reduce_mean": [[1, 1000]],
    "tcn_block_1d": [[1, 128, 250]],
    "tcn_block_1d_k7": [[1, 128, 250]],
    "yolo_seg_proto": [[1, 32, 40, 40]],
    "yolo_seg_proto_no_bias": [[1, 32, 40, 40]],
    "relu_low_rank_response": [[1, 128, 12, 12]],
    "prunable_channels": [[1, 128, 12, 12]],
    "decaying_spectrum_chain": [[1, 128, 8, 8]],
    "pool_branch_through_transposes": [[1, 6, 9, 9]],
    # computed shapes: ONNX inference alone (no data propagation) loses these dims
    "crnn_bilstm_computed_rows": [["?", "?", "?"]],
    "tf_flatten_dense": [["?", 10]],
    "tf_flatten_dense_vector": [["?", 10]],
    "tf_pad_computed": [["?", 16, "?", "?"]],
    "quantized_convs": [[1, 16, 16, 16]],
    "recurrent_stack": [[12, 1, 5]],
    "computed_weights": [[1, 10]],
    "upsample_by_computed_size": [["?", 4, "?", "?"]],
}

EXTERNAL = {"resnet50", "vgg16"}


def _is_external(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def _output_shapes(model: onnx.ModelProto) -> list[Dims]:
    """Output shapes as strict shape inference derives them, declared output shapes erased."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    for output in stripped.graph.output:
        output.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(stripped, strict_mode=True)
    return [
        [
            ("?" if d.dim_param.startswith("unk__") else d.dim_param)
            if d.HasField("dim_param")
            else d.dim_value
            for d in o.type.tensor_type.shape.dim
        ]
        for o in inferred.graph.output
    ]


def test_symbolic_model_declares_symbolic_output() -> None:
    model = BUILDERS["symbolic_dims_model"]()
    dims = model.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 8, "H", "W"]


def learned_params(model: onnx.ModelProto) -> int:
    """Conv/Gemm weights and biases plus BN scale and B (running stats are not learned)."""
    sizes = {t.name: int(np.prod(t.dims, dtype=np.int64)) for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            total += sum(sizes.get(name, 0) for name in node.input[1:])
        elif node.op_type == "BatchNormalization":
            total += sum(sizes.get(name, 0) for name in node.input[1:3])
    return total


def test_every_builder_has_an_expected_shape() -> None:
    assert set(BUILDERS) == set(EXPECTED_OUTPUT_SHAPES)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_builder_is_valid_with_expected_output(name: str, tmp_path: Path) -> None:
    model = BUILDERS[name]()
    assert model.graph.input[0].name == "input"
    assert [o.name for o in model.graph.output] == ["output"]
    node_names = [n.name for n in model.graph.node]
    assert all(node_names) and len(set(node_names)) == len(node_names)
    if name in EXTERNAL:
        assert _is_external(model)
        # The checker stats external files even for an in-memory proto, so check it saved.
        path = save(model, tmp_path / f"{name}.onnx")
        onnx.checker.check_model(str(path), full_check=True)
    else:
        onnx.checker.check_model(model, full_check=True)
        if name not in ("weights_as_inputs", "opset7_model"):
            assert model.opset_import[0].version == 17 and model.ir_version == 8
    assert _output_shapes(model) == EXPECTED_OUTPUT_SHAPES[name]


def test_checker_needs_external_file_even_for_a_proto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = BUILDERS["resnet50"]()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model, full_check=True)
    save(model, tmp_path / "resnet50.onnx")
    onnx.checker.check_model(model, full_check=True)  # resolved against the working directory


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("inception_3a_naive", 387_072),
        ("inception_3a_reduced", 157_184),
        ("resnet50", 25_557_032),
        ("vgg16", 138_357_544),
    ],
)
def test_param_counts_from_the_literature(name: str, expected: int) -> None:
    assert learned_params(BUILDERS[name]()) == expected


def test_inception_3a_pool_projection_adds_its_weights() -> None:
    assert learned_params(BUILDERS["inception_3a"]()) == 157_184 + 192 * 32


@pytest.mark.parametrize(
    ("name", "rank"), [("inception_3a_naive", 8), ("inception_3a", 12), ("conv3x3", 48)]
)
def test_planted_rank_is_exact(name: str, rank: int) -> None:
    model = BUILDERS[name](planted_rank=rank)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    checked = 0
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        weight = weights[node.input[1]]
        cout, cin, kh, kw = weight.shape
        if kh * kw == 1:
            continue
        unfolded = weight.transpose(0, 2, 3, 1).reshape(cout * kh * kw, cin)
        assert np.linalg.matrix_rank(unfolded) == rank, node.name
        checked += 1
    assert checked > 0


def test_seeds_are_reproducible_and_distinct() -> None:
    def first_weight(seed: int) -> np.ndarray:
        model = BUILDERS["conv3x3"](seed=seed)
        return numpy_helper.to_array(model.graph.initializer[0])

    np.testing.assert_array_equal(first_weight(1), first_weight(1))
    assert not np.array_equal(first_weight(1), first_weight(2))


def test_save_writes_a_sparse_external_data_file(tmp_path: Path) -> None:
    model = BUILDERS["resnet50"]()
    path = save(model, tmp_path / "resnet50.onnx")
    sizes = external_data_sizes(model)
    assert list(sizes) == ["resnet50.weights"]
    data = tmp_path / "resnet50.weights"
    assert data.stat().st_size == sizes["resnet50.weights"] >= 4 * 25_557_032
    assert data.stat().st_blocks * 512 < 1 << 20  # sparse: nothing actually written
    assert path.stat().st_size < 1 << 20
    reloaded = onnx.load(str(path), load_external_data=False)
    assert _is_external(reloaded)


def test_random_weights_save_is_plain(tmp_path: Path) -> None:
    path = save(BUILDERS["inception_3a"](), tmp_path / "m.onnx")
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]
    onnx.checker.check_model(str(path), full_check=True)


@pytest.mark.parametrize("kind", sorted(BAD_WRITERS))
def test_bad_writer_produces_a_file(kind: str, tmp_path: Path) -> None:
    directory = tmp_path / "models"
    directory.mkdir()
    path = BAD_WRITERS[kind](directory)
    assert path.is_file() and path.parent == directory
    if kind != "empty":
        assert path.stat().st_size > 0


@pytest.mark.parametrize("kind", sorted(set(BAD_WRITERS) - {"empty"}))
def test_bad_files_fail_the_checker(kind: str, tmp_path: Path) -> None:
    path = BAD_WRITERS[kind](tmp_path)
    with pytest.raises((onnx.checker.ValidationError, onnx.shape_inference.InferenceError)):
        onnx.checker.check_model(str(path), full_check=True)


def test_uninferable_raises_in_strict_inference(tmp_path: Path) -> None:
    model = onnx.load(str(write_uninferable(tmp_path)))
    with pytest.raises(onnx.shape_inference.InferenceError):
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
