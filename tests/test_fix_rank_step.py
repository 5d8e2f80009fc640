"""Issue 16, item 5: the budget's ranks and kept channels are multiples of the target's channel
block (``--rank-step``; by default 16 on onnxruntime's CPU provider with AVX-512, where MLAS
pads a conv's channels to 16, else 8), and the report says which."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import convlint
from convlint import fixtures
from convlint.cli import main
from convlint.errors import UsageError
from convlint.rewrite import budget
from convlint.rewrite.latency import channel_step

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "fix.schema.json"
CPU = "CPUExecutionProvider"


def test_the_channel_block_follows_the_cpu_and_the_provider() -> None:
    flags = "flags\t\t: fpu sse2 avx avx2 fma"
    assert channel_step(CPU, flags) == 8
    assert channel_step(CPU, f"{flags} avx512f avx512dq avx512bw") == 16
    assert channel_step(CPU, f"{flags} avx512_vnni") == 8  # not AVX-512F itself
    assert channel_step("CUDAExecutionProvider", f"{flags} avx512f") == 8
    assert channel_step(CPU) in (8, 16)  # this machine's own /proc/cpuinfo, or none


def test_the_default_step_is_the_targets_channel_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --rank-step, the step is ``channel_step`` of the provider timed on (the
    conftest pins it to 8 for the other tests)."""
    from convlint.rewrite import state

    asked: list[str] = []
    monkeypatch.setattr(state, "channel_step", lambda provider: asked.append(provider) or 16)
    path = fixtures.save(fixtures.conv3x3(planted_rank=24, hw=6), tmp_path / "m.onnx")
    document = _fix(path, None, capsys)
    assert document["rank_step"] == 16 and set(asked) == {CPU}
    (rewrite,) = document["rewrites"]
    ranks = rewrite["rank"] if isinstance(rewrite["rank"], list) else [rewrite["rank"]]
    assert ranks[0] == 32


def test_the_ladder_takes_the_step() -> None:
    # 8 channels are read unpadded: below the block, the ranks of the narrower step stay.
    assert budget.ladder(64, 16) == [8, 16, 32, 48, 64]
    assert budget.ladder(40, 16) == [8, 16, 32]
    assert budget.ladder(96, 32) == [8, 16, 24, 32, 64, 96]
    assert budget.ladder(24, 16) == list(range(1, 25))  # a narrow layer keeps every rank
    assert budget.ladder(40, 8) == [8, 16, 24, 32, 40]


def _fix(path: Path, step: int | None, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    out = path.with_name(f"out{step}.onnx")
    argv = ["fix", str(path), "-o", str(out), "--method", "weight", "--samples", "4"]
    argv += ["--allow-noise", "--no-latency", "--format", "json"]
    if step is not None:
        argv += ["--rank-step", str(step)]
    assert main(argv) == 0
    document = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text("utf-8"))).validate(document)
    return document


@pytest.mark.parametrize(("step", "rank"), [(8, 24), (16, 32), (24, 24)])
def test_a_planted_rank_off_the_step_is_rounded_up_to_the_next_multiple(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], step: int, rank: int
) -> None:
    """A 256->256 conv of rank 24: at step 8 (and 24) the budget reduces its input to 24
    channels itself; at step 16 the cheapest exact reduction on its ladder is 32 (16 cannot
    hold the tolerance), and every rank is a multiple of the step."""
    path = fixtures.save(fixtures.conv3x3(planted_rank=24, hw=6), tmp_path / "m.onnx")
    document = _fix(path, step, capsys)
    assert document["rank_step"] == step
    (rewrite,) = document["rewrites"]
    ranks = rewrite["rank"] if isinstance(rewrite["rank"], list) else [rewrite["rank"]]
    assert rewrite["kind"] in ("svd-reduce", "reduce-spatial") and ranks[0] == rank
    assert all(r % step == 0 for r in ranks)


@pytest.mark.parametrize("value", ["0", "-16", "1.5", "sixteen"])
def test_a_bad_step_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    path = fixtures.save(fixtures.conv3x3(planted_rank=16, hw=6), tmp_path / "m.onnx")
    out = tmp_path / "out.onnx"
    argv = ["fix", str(path), "-o", str(out), "--allow-noise", f"--rank-step={value}"]
    assert main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("convlint: error: ")
    assert "--rank-step" in lines[0]
    assert not out.exists()


def test_the_api_refuses_a_bad_step_as_the_command_line(tmp_path: Path) -> None:
    path = fixtures.save(fixtures.conv3x3(planted_rank=16, hw=6), tmp_path / "m.onnx")
    message = "--rank-step (rank_step) must be a whole number of at least 1, not 0"
    with pytest.raises(UsageError, match=re.escape(message)):
        convlint.fix(path, tmp_path / "out.onnx", rank_step=0)


def test_reduce_spatial_first_ranks_stay_on_their_coarse_ladder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At 256 input channels the first ranks of reduce-spatial are multiples of 32 up to 3/4
    of the channels (at most 8 of them) at step 8 and at step 16 alike: the narrower ranks a
    wide step keeps below it are the plain ladder's, not these SVDs'. Second ranks are on the
    plain ladder of the step."""
    import numpy as np

    from convlint.rewrite.factorize import ConvFactorizer, ConvSite

    site = ConvSite(64, 256, (3, 3), 36, 36, mid_pixels=36)
    weight = np.random.default_rng(0).standard_normal((64, 256, 3, 3))
    search = ConvFactorizer(weight, site)
    asked: list[int] = []
    original = search.reduced_spatial
    monkeypatch.setattr(
        search, "reduced_spatial", lambda r1: asked.append(r1) or original(r1), raising=False
    )
    for step in (8, 16):
        asked.clear()
        found = budget._reduce_spatial_candidates(search, math.inf, step)
        assert sorted(set(asked)) == [32, 64, 96, 128, 160, 192]
        seconds = {c.rank[1] for c in found if isinstance(c.rank, tuple)}
        assert seconds and all(r2 % step == 0 or r2 == 8 for r2 in seconds)
