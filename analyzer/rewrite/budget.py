"""Stage 5d: one accuracy budget for the whole model, and refitting to the original response.

Numbers only, like ``factorize``: candidates, their costs and estimated errors, the choice of
one candidate per layer, and the least-squares refit of a layer's last conv. The fixer
(``pipeline``) runs the models and measures.

**Candidates.** Each lossy target (a conv to factorize, a pooling branch to project) offers
forms at ranks that are multiples of ``STEP`` (8: the width onnxruntime's CPU kernels work in;
every rank below it where the layer is small), each with its exact MACs and a proxy of the
layer's relative response error (``factorize``: the energy a truncation discards). A candidate
must save at least ``MIN_SAVING`` of its layer's MACs: a rewrite that saves less is not worth
any of the error budget. Only the Pareto front (no other candidate both cheaper and closer) is
kept.

**One budget.** Ranks are chosen for every layer together, as Zhang et al. (2015, section 3.3)
choose them under one whole-model constraint: for a multiplier ``μ`` each layer independently
takes the candidate minimizing ``MACs / model MACs + μ · proxy²`` (no rewrite: its own MACs,
error 0), so every layer spends error where it buys the most MACs per unit of added (squared)
error. Sweeping ``μ`` from large to small gives a path of allocations from "rewrite nothing" to
"the cheapest form everywhere"; the fixer bisects that path for the most aggressive allocation
whose *whole model*, measured end to end on held-out samples, stays within ``--tolerance``
and ``--min-top1``. No layer gets a fixed share of the tolerance.

**Response reconstruction** (Zhang et al. section 3.2, asymmetric). The factors above come from
the original layer's own statistics; each layer's last conv is then refitted by least squares so
that, fed with the inputs the *approximated* model produces (earlier layers already rewritten:
their errors do not accumulate), it reproduces the *original* model's response on the fitting
samples. Where a ReLU follows the conv, the fit targets the response after it: entries the
original ReLU zeroes only need to stay at or below zero, so the targets there are
``min(prediction, 0)``, re-solved a few times (alternating least squares). The refit needs
rows of the last conv's input patches (sampled pixels, ``verify.PatchSpec``); it is skipped
for a layer whose patch is wider than ``MAX_REFIT_WIDTH``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from convlint.rewrite.factorize import Array, ConvFactorizer, PoolProjection

STEP = 8
MIN_SAVING = 0.10
PATH_POINTS = 481  # multipliers from 1e12 down to 1e-12, 20 per decade
MAX_EVALS = 12  # whole-model verifications while bisecting the path
ALS_ITERATIONS = 6
MAX_REFIT_WIDTH = 1152  # patch width (channels × kernel area) of a refitted conv, at most
REFIT_ROWS = 4  # sampled rows per unknown of the refit, at least
MIN_ROWS, MAX_ROWS = 2048, 8192
RIDGE = 1e-6  # of the mean diagonal of the normal equations


@dataclass(frozen=True)
class Candidate:
    """One form of one layer: its kind, rank, cost and estimated relative response error."""

    kind: str
    rank: int | tuple[int, int]
    macs: int
    params: int
    proxy: float


def ladder(maximum: int, step: int = STEP) -> list[int]:
    """Ranks from small to ``maximum``: multiples of ``step``, and every rank below ``2·step``
    when that is all the layer has."""
    if maximum < 2 * step:
        return list(range(1, maximum + 1))
    return list(range(step, maximum + 1, step))


def factor_candidates(search: ConvFactorizer, baseline: int) -> list[Candidate]:
    """The Pareto front of every factored form of one conv that saves ``MIN_SAVING``."""
    found: list[Candidate] = []
    limit = (1 - MIN_SAVING) * baseline
    inputs, outputs = search.input_side, search.output_side
    for kind in search.kinds:
        if kind == "svd-reduce":
            for rank in ladder(inputs.max_rank):
                macs, params = search.cost(kind, rank)
                if macs <= limit:
                    found.append(Candidate(kind, rank, macs, params, inputs.proxy(rank)))
        elif kind == "svd-expand":
            for rank in ladder(outputs.max_rank):
                macs, params = search.cost(kind, rank)
                if macs <= limit:
                    found.append(Candidate(kind, rank, macs, params, outputs.proxy(rank)))
        else:
            for r1 in ladder(inputs.max_rank):
                for r2 in ladder(outputs.max_rank):
                    macs, params = search.cost(kind, (r1, r2))
                    if macs <= limit:
                        proxy = math.hypot(inputs.proxy(r1), outputs.proxy(r2))
                        found.append(Candidate(kind, (r1, r2), macs, params, proxy))
    return pareto(found)


def pool_candidates(search: PoolProjection) -> list[Candidate]:
    """The projection widths of a pooling branch that save ``MIN_SAVING`` of its consumers."""
    baseline = search.baseline()[0]
    found = []
    for rank in ladder(search.max_rank):
        macs, params = search.cost(rank)
        if macs <= (1 - MIN_SAVING) * baseline:
            found.append(Candidate("pool-projection", rank, macs, params, search.proxy(rank)))
    return pareto(found)


def pareto(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Candidates no other one beats on both MACs and proxy error, cheapest first."""
    front: list[Candidate] = []
    for candidate in sorted(candidates, key=lambda c: (c.macs, c.proxy, c.params)):
        if not front or candidate.proxy < front[-1].proxy:
            front.append(candidate)
    return front


Allocation = dict[str, Candidate]  # target key -> its chosen form (absent: not rewritten)


def allocate(
    curves: Mapping[str, Sequence[Candidate]],
    baselines: Mapping[str, int],
    total_macs: int,
    multiplier: float,
) -> Allocation:
    """Each layer's candidate minimizing ``MACs / total + multiplier · proxy²``."""
    chosen: Allocation = {}
    scale = max(total_macs, 1)
    for key, candidates in curves.items():
        best_score, best = baselines[key] / scale, None
        for candidate in candidates:
            score = candidate.macs / scale + multiplier * candidate.proxy**2
            if score < best_score:
                best_score, best = score, candidate
        if best is not None:
            chosen[key] = best
    return chosen


def allocation_path(
    curves: Mapping[str, Sequence[Candidate]], baselines: Mapping[str, int], total_macs: int
) -> list[Allocation]:
    """Distinct allocations from the most careful (nothing rewritten) to the most aggressive,
    each saving more MACs than the one before."""
    path: list[Allocation] = [{}]
    saved = 0
    for multiplier in np.logspace(12, -12, PATH_POINTS):
        chosen = allocate(curves, baselines, total_macs, float(multiplier))
        saving = sum(baselines[key] - c.macs for key, c in chosen.items())
        if saving > saved:
            path.append(chosen)
            saved = saving
    return path


def most_aggressive(path: Sequence[Allocation], holds: Callable[[Allocation], bool]) -> int:
    """The index of the last allocation on ``path`` that ``holds``, by bisection (the errors
    grow along the path); 0 (nothing rewritten) when none does. At most ``MAX_EVALS`` calls."""
    good, bad = 0, len(path)
    evals = 0
    # The whole path often holds (planted low-rank weights): try its end first.
    candidate = len(path) - 1
    while good + 1 < bad and evals < MAX_EVALS:
        evals += 1
        if holds(path[candidate]):
            good = candidate
        else:
            bad = candidate
        candidate = (good + bad) // 2
    return good


# -- refitting the last conv -------------------------------------------------------------


def refit_rows(width: int, samples: int, pixels: int) -> int:
    """Output pixels to sample per fitting sample for a refit with ``width`` unknowns."""
    rows = min(max(REFIT_ROWS * (width + 1), MIN_ROWS), MAX_ROWS)
    return max(1, min(pixels, math.ceil(rows / max(samples, 1))))


def refit(features: Array, response: Array, relu: bool) -> tuple[Array, Array]:
    """(W, b) minimizing ``‖features·Wᵀ + b − response‖`` (after a ReLU on both sides when
    ``relu``): W is (C_out × width), b (C_out). Rows are sampled pixels."""
    # The products in float32 (the rows are float32 activations; float64 is twice the time),
    # the normal equations solved in float64.
    x = np.concatenate([features, np.ones((len(features), 1), np.float32)], axis=1)
    y = response.astype(np.float32)
    gram = (x.T @ x).astype(np.float64)
    gram[np.diag_indices_from(gram)] += RIDGE * float(np.trace(gram)) / len(gram)
    inverse = np.linalg.inv(gram)  # once: the ALS iterations only change the right side

    def solve(target: Array) -> Array:
        return inverse @ (x.T @ target.astype(np.float32)).astype(np.float64)

    solution = solve(y)
    if relu:
        active = y > 0
        for _ in range(ALS_ITERATIONS):
            prediction = x @ solution.astype(np.float32)
            solution = solve(np.where(active, y, np.minimum(prediction, 0.0)))
    return solution[:-1].T, solution[-1]


def relative_error(prediction: Array, response: Array, relu: bool) -> float:
    """The relative L2 error of a layer's response on sampled rows (after a ReLU if any)."""
    if relu:
        prediction, response = np.maximum(prediction, 0), np.maximum(response, 0)
    norm = float(np.linalg.norm(response))
    return float(np.linalg.norm(prediction - response)) / norm if norm > 0 else 0.0


__all__ = [
    "Allocation",
    "Candidate",
    "allocate",
    "allocation_path",
    "factor_candidates",
    "ladder",
    "most_aggressive",
    "pareto",
    "pool_candidates",
    "refit",
    "refit_rows",
]
