"""Configuration that fits a repository of different models: found from each model's folder
upwards, with per-file globs for ignores, exclusions and input shapes (ruff's conventions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from convlint.config import ConfigFinder, path_matches
from convlint.errors import UsageError
from convlint.registry import load_registry


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_each_model_gets_the_configuration_of_its_own_folder(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[tool.convlint]\nselect = ["CL001"]\n')
    write(tmp_path / "detection" / "convlint.toml", 'select = ["CL002"]\n')
    finder = ConfigFinder(load_registry())
    top = finder.for_model(tmp_path / "classify" / "resnet.onnx")
    nested = finder.for_model(tmp_path / "detection" / "yolo" / "yolov8.onnx")
    assert top.path == tmp_path / "pyproject.toml" and top.table["select"] == ["CL001"]
    assert nested.path == tmp_path / "detection" / "convlint.toml"
    assert nested.table["select"] == ["CL002"]
    explicit = ConfigFinder(load_registry(), explicit=tmp_path / "pyproject.toml")
    assert explicit.for_model(tmp_path / "detection" / "a.onnx").path == tmp_path / "pyproject.toml"


def test_globs_match_relative_to_the_configuration_and_by_file_name(tmp_path: Path) -> None:
    assert path_matches(tmp_path / "models" / "a" / "x.onnx", tmp_path, "models/*.onnx")
    assert path_matches(tmp_path / "deep" / "yolov8n.onnx", tmp_path, "yolo*.onnx")
    assert not path_matches(tmp_path / "deep" / "yolov8n.onnx", tmp_path, "models/yolo*.onnx")


def test_per_file_ignores_exclude_and_input_shapes(tmp_path: Path) -> None:
    config = write(
        tmp_path / "convlint.toml",
        'extend-select = ["CL005"]\n'
        'exclude = ["third_party/*"]\n'
        'extend-exclude = ["*_fp16.onnx"]\n'
        '[per-file-ignores]\n"legacy/*.onnx" = ["CL004", "CL001"]\n'
        '[input-shape]\nimages = "1x3x224x224"\n'
        '[input-shapes]\n"yolo*.onnx" = {images = "1x3x640x640"}\n',
    )
    found = ConfigFinder(load_registry()).for_model(tmp_path / "m.onnx")
    assert found.path == config
    assert found.table["extend-select"] == ["CL005"]
    assert found.excluded(tmp_path / "third_party" / "x.onnx")
    assert found.excluded(tmp_path / "nets" / "resnet_fp16.onnx")
    assert not found.excluded(tmp_path / "nets" / "resnet.onnx")
    assert found.file_ignores(tmp_path / "legacy" / "vgg.onnx") == ["CL004", "CL001"]
    assert found.file_ignores(tmp_path / "vgg.onnx") == []
    assert found.input_shapes(tmp_path / "det" / "yolov8n.onnx") == {"images": (1, 3, 640, 640)}
    assert found.input_shapes(tmp_path / "resnet.onnx") == {"images": (1, 3, 224, 224)}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'exclude = "x"\nextend-exclude = [1]\n',
            "[tool.convlint] extend-exclude: expected a list of path globs",
        ),
        (
            'per-file-ignores = ["CL001"]\n',
            "[tool.convlint] per-file-ignores: expected a table of path glob",
        ),
        ('[per-file-ignores]\n"a/*" = ["CL999"]\n', "per-file-ignores.a/*"),
        (
            '[input-shapes]\n"yolo*" = {images = "1xAx640"}\n',
            "[tool.convlint] input-shapes.'yolo*': 'images=1xAx640': dims must be integers joined by 'x'",
        ),
        (
            'input-shapes = {images = "1x3x64x64"}\n',
            "[tool.convlint] input-shapes: expected tables of path glob",
        ),
    ],
)
def test_bad_settings_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    config = write(tmp_path / "convlint.toml", text)
    with pytest.raises(UsageError) as raised:
        ConfigFinder(load_registry()).for_model(tmp_path / "m.onnx")
    assert str(raised.value).startswith(f"{config}: ")
    assert message in str(raised.value)


def test_config_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "convlint.toml"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file, cannot be a config file"):
        ConfigFinder(load_registry(), explicit=fifo).for_model(tmp_path / "m.onnx")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[rules.CL003]\nmin-saving = inf\n", "min-saving: must be a finite number, got inf"),
        ("[rules.CL003]\nmin-saving = nan\n", "min-saving: must be a finite number, got nan"),
        ("select = " + "[" * 2000 + "]" * 2000 + "\n", "nested too deeply"),
    ],
)
def test_numbers_are_finite_and_nesting_bounded(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path / "convlint.toml", text)
    with pytest.raises(UsageError, match=message):
        ConfigFinder(load_registry()).for_model(tmp_path / "m.onnx")


def test_a_pyproject_whose_tool_is_not_a_table_is_passed_over(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "tool = 5\n")
    found = ConfigFinder(load_registry()).for_model(tmp_path / "sub" / "m.onnx")
    assert found.path is None and found.table == {}
