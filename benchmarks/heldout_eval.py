"""Benchmark measurement: an original and a rewritten model compared on held-out samples.

Independent of convlint on purpose (numpy and onnxruntime only), so that it checks what `fix`
reports rather than repeating its code:

- top-1 agreement of the rewritten model with the original, on every held-out sample, with its
  count and a 95% Wilson score interval (for a sequence of class scores, such as a CTC head's,
  a sample agrees when the top class agrees at every position);
- relative L2 error of the outputs, ``||y' - y|| / ||y||`` over the whole held-out set (first
  output), and the median and worst of the same per sample;
- latency on the CPU provider at a fixed number of intra-op threads, batch 1: the two models
  run interleaved (original, rewritten, original, ...), each on the same sample, after warm-up;
  the report gives each side's median and interquartile range, the ratio of the medians and
  a 95% bootstrap interval of that ratio (pairs resampled). The sessions' threads do not spin
  between runs (``session.intra_op.allow_spinning`` 0): with two sessions alive on a machine of
  few cores, the pool of the one that ran last spins on the cores the next one needs, so both
  sides measure the other's leftover spinning (``--spin`` keeps onnxruntime's default).

    python benchmarks/heldout_eval.py ORIGINAL REWRITTEN HELDOUT.npz [--threads 2] [--runs 60]
        [--spin]

prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


def wilson(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion."""
    if total == 0:
        return (0.0, 1.0)
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def session(path: Path, threads: int, spin: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # exporters' wrong declared output shapes warn on every run
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def batch(samples: np.ndarray, index: int, rank: int) -> np.ndarray:
    """Sample ``index`` as a batch of one: ``samples[index]`` where each sample already carries
    its batch axis (the array has one axis more than the input), else ``samples[index:index+1]``."""
    return samples[index] if samples.ndim == rank + 1 else samples[index : index + 1]


def outputs(sess: ort.InferenceSession, name: str, samples: np.ndarray) -> np.ndarray:
    """The first output for every sample, run one at a time (batch 1, as the models are timed),
    stacked on a new first axis."""
    rank = len(sess.get_inputs()[0].shape)
    return np.stack(
        [sess.run(None, {name: batch(samples, i, rank)})[0] for i in range(len(samples))]
    )


def accuracy(before: np.ndarray, after: np.ndarray) -> dict[str, Any]:
    flat_before = before.reshape(len(before), -1)
    flat_after = after.reshape(len(after), -1)
    result: dict[str, Any] = {
        "samples": len(before),
        "rel_l2": float(np.linalg.norm(flat_after - flat_before) / np.linalg.norm(flat_before)),
    }
    per_sample = np.linalg.norm(flat_after - flat_before, axis=1) / np.maximum(
        np.linalg.norm(flat_before, axis=1), 1e-30
    )
    result["rel_l2_median"] = float(np.median(per_sample))
    result["rel_l2_max"] = float(per_sample.max())
    if before.shape[-1] > 1:  # class scores (over the last axis, at each position of a sequence)
        same = before.argmax(-1) == after.argmax(-1)
        agree = int(same.reshape(len(before), -1).all(axis=1).sum())
        if same[0].size > 1:
            result["positions"] = int(same[0].size)
            result["position_agreement"] = float(same.mean())
        result["top1_agree"] = agree
        result["top1_agreement"] = agree / len(before)
        result["top1_interval"] = list(wilson(agree, len(before)))
    return result


def latency(
    original: ort.InferenceSession,
    rewritten: ort.InferenceSession,
    name: str,
    samples: np.ndarray,
    runs: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Interleaved timing, batch 1: per pair, the rewritten model's time over the original's."""
    rank = len(original.get_inputs()[0].shape)
    for sess in (original, rewritten):
        for i in range(3):
            sess.run(None, {name: batch(samples, i % len(samples), rank)})
    times: dict[str, list[float]] = {"before": [], "after": []}
    for run in range(runs):
        x = batch(samples, run % len(samples), rank)
        order = [("before", original), ("after", rewritten)]
        if run % 2:  # alternate who goes first, so drift does not favour one side
            order.reverse()
        for key, sess in order:
            start = time.perf_counter()
            sess.run(None, {name: x})
            times[key].append(time.perf_counter() - start)
    before, after = np.array(times["before"]), np.array(times["after"])
    # Ratio of the medians: on a shared machine single runs stall for 10-30x their time, which
    # ruins a per-pair ratio; the bootstrap resamples the pairs, so drift stays matched.
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, runs, size=(2000, runs))
    boot = np.median(after[picks], axis=1) / np.median(before[picks], axis=1)
    return {
        "runs": runs,
        "before_ms": float(np.median(before) * 1e3),
        "after_ms": float(np.median(after) * 1e3),
        "before_iqr_ms": [float(v * 1e3) for v in np.percentile(before, [25, 75])],
        "after_iqr_ms": [float(v * 1e3) for v in np.percentile(after, [25, 75])],
        "ratio": float(np.median(after) / np.median(before)),
        "ratio_interval": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
    }


def evaluate(
    original: Path, rewritten: Path, heldout: Path, threads: int, runs: int, spin: bool = False
) -> dict[str, Any]:
    sess_before = session(original, threads, spin)
    sess_after = session(rewritten, threads, spin)
    name = sess_before.get_inputs()[0].name
    with np.load(heldout) as archive:
        samples = archive[name]
    result = accuracy(outputs(sess_before, name, samples), outputs(sess_after, name, samples))
    result["latency"] = latency(sess_before, sess_after, name, samples, runs)
    result["latency"]["threads"] = threads
    result["latency"]["spinning"] = spin
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("original", type=Path)
    parser.add_argument("rewritten", type=Path)
    parser.add_argument("heldout", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--spin", action="store_true", help="let the sessions' threads spin")
    args = parser.parse_args(argv)
    result = evaluate(
        args.original, args.rewritten, args.heldout, args.threads, args.runs, args.spin
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
