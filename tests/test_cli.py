"""The CLI as a user runs it: commands, formats, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from convlint.registry import load_registry

CLI = Callable[..., tuple[int, str, str]]


def test_check_text_output_in_the_manner_of_ruff(model_file: Callable[..., Path], cli: CLI) -> None:
    path = model_file("conv3x3")
    code, out, err = cli("check", str(path))
    assert code == 1 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith(f"{path}:conv: CL001 [~] warning: 3×3 conv reads 256 channels")
    assert lines[1] == "    = params 589,824 -> 69,632, MACs 115,605,504 -> 13,647,872 (8.5x fewer)"
    assert lines[2].startswith("    fix (approximate): factorize into 1×1 + k×k")
    assert lines[2].endswith("applied by `convlint fix` only with real calibration data (--inputs)")
    assert lines[-1] == (
        "Found 1 finding in 1 model ([~] 1 approximately fixable with `convlint fix --inputs DATA`)."
    )


def test_check_json_contract_fields(model_file: Callable[..., Path], cli: CLI) -> None:
    code, out, _ = cli("check", str(model_file("inception_3a_naive")), "--format", "json")
    assert code == 1
    report = json.loads(out)
    assert report["tool"]["name"] == "convlint"
    model = report["models"][0]
    assert set(model) == {"path", "opset", "nodes", "cost", "findings", "error"}
    assert model["opset"] == 17 and model["error"] is None
    assert model["cost"]["params"] == 387_072
    finding = model["findings"][0]
    assert set(finding) == {
        "code", "rule", "severity", "node", "op_type", "message", "estimate", "fix",
    }  # fmt: skip
    assert {"params_before", "params_after", "macs_before", "macs_after"} <= set(
        finding["estimate"]
    )
    assert [f["fix"]["applicability"] for f in model["findings"]] == [
        "approximate",
        "approximate",
        "display-only",  # the concat is the graph's output: a projection would narrow it
    ]
    assert report["summary"] == {
        "models": 1,
        "findings": 3,
        "by_code": {"CL001": 2, "CL002": 1},
        "errors": 0,
        "fixes": {"safe": 0, "approximate": 2, "unsafe": 0, "display-only": 1},
    }


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], 1),
        (["--fail-on", "error"], 0),
        (["--fail-on", "info"], 1),
        (["--fail-on", "never"], 0),
        (["--exit-zero"], 0),
        (["--select", "CL003"], 0),
    ],
)
def test_exit_codes(
    model_file: Callable[..., Path], cli: CLI, extra: list[str], expected: int
) -> None:
    code, _, _ = cli("check", str(model_file("inception_3a_naive")), *extra)
    assert code == expected


def test_info_findings_fail_only_with_fail_on_info(
    model_file: Callable[..., Path], cli: CLI
) -> None:
    path = str(model_file("linear_conv_chain_bad"))
    assert cli("check", path)[0] == 0  # CL003 is info
    assert cli("check", path, "--fail-on", "info")[0] == 1


def test_output_file_is_written(model_file: Callable[..., Path], cli: CLI, tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    code, out, _ = cli(
        "check", str(model_file("conv3x3")), "--format", "json", "--output", str(target)
    )
    assert code == 1 and out == ""
    assert json.loads(target.read_text())["summary"]["findings"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report")] == []


def test_folders_are_searched_and_broken_models_do_not_stop_others(
    model_file: Callable[..., Path], cli: CLI, tmp_path: Path
) -> None:
    from convlint.fixtures import BAD_WRITERS

    model_file("conv3x3")
    model_file("inception_3a")
    broken = BAD_WRITERS["truncated"](tmp_path / "conv3x3")
    code, out, err = cli("check", str(tmp_path), "--format", "json")
    assert code == 2
    report = json.loads(out)
    paths = [m["path"] for m in report["models"]]
    assert paths == sorted(paths) and len(paths) == 3
    errors = [m for m in report["models"] if m["error"]]
    assert [m["path"] for m in errors] == [str(broken)]
    assert report["summary"]["findings"] == 1
    assert err.count("\n") == 1 and str(broken) in err


def test_stats_table(model_file: Callable[..., Path], cli: CLI) -> None:
    code, out, _ = cli("stats", str(model_file("resnet_bottleneck")))
    assert code == 0
    lines = out.splitlines()
    headers = ["node", "op", "output", "shape", "params", "MACs", "share", "memory"]
    assert lines[1].split() == headers
    conv2 = next(line for line in lines if line.startswith("conv2 ") or ".conv2 " in line)
    assert "1x64x56x56" in conv2 and "36,864" in conv2 and "115,605,504" in conv2
    assert conv2.endswith("784.0 KiB")  # 64 x 56 x 56 float32
    total = next(line for line in lines if line.startswith("total "))
    assert total.split()[1:3] == ["70,400", "219,570,176"]


def test_stats_json(model_file: Callable[..., Path], cli: CLI) -> None:
    code, out, _ = cli("stats", str(model_file("conv3x3")), "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["nodes"] == [
        {
            "name": "conv",
            "op_type": "Conv",
            "output_shapes": [[1, 256, 14, 14]],
            "params": 589_824,
            "macs": 589_824 * 196,
            "macs_per_output_pixel": 589_824,
            "memory": 256 * 14 * 14 * 4,
        }
    ]
    assert data["total"] == {
        "params": 589_824,
        "macs": 589_824 * 196,
        "macs_per_input_pixel": None,
        "memory": 256 * 14 * 14 * 4,
        "peak_memory": (256 + 256) * 14 * 14 * 4,  # its input and output
    }


def test_stats_json_symbolic_dims_keep_their_names(
    model_file: Callable[..., Path], cli: CLI
) -> None:
    code, out, _ = cli("stats", str(model_file("symbolic_dims_model")), "--format", "json")
    data = json.loads(out)
    assert data["nodes"][0]["output_shapes"][0][0] == "N"
    assert data["total"]["macs"] is None


def test_rules_lists_every_rule(cli: CLI) -> None:
    code, out, _ = cli("rules")
    assert code == 0
    for rule in load_registry():
        line = next(line for line in out.splitlines() if line.startswith(rule.code))
        assert rule.name in line and rule.severity.value in line and rule.fix in line


def test_rule_shows_documentation(cli: CLI) -> None:
    code, out, _ = cli("rule", "cl001")
    assert code == 0
    assert out.startswith("# wide-conv-without-reduction (CL001)")
    assert "## Why is this bad?" in out and "589,824" in out
    code, _, err = cli("rule", "CL999")
    assert code == 2 and "unknown rule 'CL999'" in err


def test_usage_errors_are_exit_2(cli: CLI) -> None:
    assert cli("frobnicate")[0] == 2
    assert cli("check")[0] == 2
    code, _, err = cli("check", "x.onnx", "--input-shape", "input=1x3xax4")
    assert code == 2 and "dims must be integers" in err


def test_demo_shows_findings_and_literature_numbers(cli: CLI) -> None:
    code, out, _ = cli("demo")
    assert code == 0
    assert "CL001" in out and "CL002" in out
    assert "387,072 params" in out and "157,184 params" in out
    assert "416 output channels" in out and "256 output channels" in out


def test_console_script_runs(model_file: Callable[..., Path]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "convlint", "check", str(model_file("inception_3a"))],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "All checks passed! (1 model)"


def test_the_process_exits_with_main_s_code_once_its_output_is_written(
    model_file: Callable[..., Path], tmp_path: Path
) -> None:
    # convlint.entry ends the process with os._exit: what was printed must be out by then.
    paths = [str(model_file(name)) for name in ("inception_3a_naive", "vgg_stack", "conv3x3")]
    result = subprocess.run(
        [sys.executable, "-m", "convlint", "check", *paths, "--format", "sarif"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1, result.stderr
    assert len(json.loads(result.stdout)["runs"][0]["results"]) >= 2
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    result = subprocess.run(
        [sys.executable, "-m", "convlint", "check", str(broken)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(f"convlint: error: {broken}: not an ONNX")


def test_repeated_select_and_ignore_accumulate(model_file: Callable[..., Path], cli: CLI) -> None:
    path = str(model_file("inception_3a_naive"))
    code, out, _ = cli("check", path, "--ignore", "CL001", "--ignore", "CL002")
    assert code == 0 and "All checks passed" in out
    code, out, _ = cli("check", path, "--select", "CL001", "--select", "CL002", "--quiet")
    assert {line.split(": ")[1].split()[0] for line in out.splitlines() if ": CL" in line} == {
        "CL001",
        "CL002",
    }


def test_usage_errors_are_one_line(cli: CLI) -> None:
    for argv in (["check"], ["stats", "m.onnx", "--format", "sarif"], ["frobnicate"]):
        code, out, err = cli(*argv)
        assert code == 2 and out == ""
        assert len(err.strip().splitlines()) == 1 and err.startswith("convlint: error: ")


def test_unreadable_model_is_not_all_checks_passed(tmp_path: Path, cli: CLI) -> None:
    from convlint.fixtures import BAD_WRITERS

    code, out, _ = cli("check", str(BAD_WRITERS["empty"](tmp_path)))
    assert code == 2
    assert (
        out.strip()
        == "No findings in the models that could be read (1 model; 1 model could not be read)."
    )


def test_report_file_gets_an_ordinary_mode(
    model_file: Callable[..., Path], cli: CLI, tmp_path: Path
) -> None:
    import os

    target = tmp_path / "report.txt"
    old = os.umask(0o022)
    try:
        cli("check", str(model_file("conv3x3")), "--output", str(target))
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o644
    target.chmod(0o640)
    cli("check", str(model_file("conv3x3")), "--output", str(target))
    assert target.stat().st_mode & 0o777 == 0o640  # an existing report keeps its mode


def test_folder_search_skips_hidden_folders_and_repeats(
    model_file: Callable[..., Path], cli: CLI, tmp_path: Path
) -> None:
    import shutil

    visible = model_file("conv3x3")
    hidden = tmp_path / ".git" / "objects"
    hidden.mkdir(parents=True)
    shutil.copy(visible, hidden / "copy.onnx")
    code, out, _ = cli("check", str(tmp_path), str(visible), "--format", "json")
    report = json.loads(out)
    assert [m["path"] for m in report["models"]] == [str(visible)]


def test_a_stdout_that_cannot_encode_the_report_gets_ascii(tmp_path: Path) -> None:
    import os

    from convlint import fixtures

    path = fixtures.save(fixtures.conv3x3(), tmp_path / "conv3x3.onnx")
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "LC_ALL": "C", "LANG": "C"}
    result = subprocess.run(
        [sys.executable, "-m", "convlint", "check", str(path)],
        capture_output=True,
        env=env,
    )
    assert result.returncode == 1, result.stderr
    out = result.stdout.decode("ascii")
    assert "3x3 conv reads 256 channels with no 1x1 reduction" in out
    assert "internal error" not in result.stderr.decode("ascii")
