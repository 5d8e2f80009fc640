"""Stage 5d: one accuracy budget for the whole model, and refitting to the original response.

Numbers only, like ``factorize``: candidates, their costs and estimated errors, the choice of
one candidate per layer, and the least-squares refit of a layer's last conv. The fixer
(``pipeline``) runs the models and measures.

**Candidates.** Each lossy target (a conv to factorize, a pooling branch to project) offers
forms at ranks that are multiples of a *step*, and every rank below two steps where that is
all the layer has. The step is the channel block the target's conv kernels work in
(``latency.channel_step``: 16 on onnxruntime's CPU provider with AVX-512, else ``STEP``, 8;
``--rank-step`` sets it): a conv whose channels are not a multiple of the block is padded to
the next one and costs what that costs, so a rank between two multiples would spend error on
MACs that save no time. Each form comes with its exact MACs and a proxy of the layer's
relative response error (``factorize``: the energy a truncation discards). A candidate must
save at least ``MIN_SAVING`` of its layer's MACs: a rewrite that saves less is not worth any
of the error budget. Only the Pareto front (no other candidate both cheaper and closer) is
kept.

**One budget.** Ranks are chosen for every layer together, as Zhang et al. (2015, section 3.3)
choose them under one whole-model constraint: starting from "rewrite nothing", each step moves
the one layer whose next cheaper candidate saves the most MACs per unit of added squared
error, until every layer is at its cheapest form (``allocation_path``); the fixer bisects that
path for the most aggressive allocation whose *whole model*, measured end to end on held-out
samples, stays within ``--tolerance`` and ``--min-top1``; when the bisection ends between two
neighbouring steps, the layer the failing step moved stays where it is and the others go on
(``spend``: the proxy can be far off for one layer's next form, which would otherwise stop
every layer). No layer gets a fixed share of the tolerance. Where a ReLU follows a conv, the
proxy of its output-side forms is the energy of its response *after* the ReLU (a channel the
ReLU always zeroes costs nothing to drop).

**Response reconstruction** (Zhang et al. section 3.2, asymmetric). The factors above come from
the original layer's own statistics; each layer's last conv is then refitted by least squares so
that, fed with the inputs the *approximated* model produces (earlier layers already rewritten:
their errors do not accumulate), it reproduces the *original* model's response on the fitting
samples. Where a ReLU follows the conv, the fit targets the response after it: entries the
original ReLU zeroes only need to stay at or below zero, so the targets there are
``min(prediction, 0)``, re-solved a few times (alternating least squares), from the best of
three starts, the layer's present weights one of them. The refit needs
rows of the last conv's input patches (sampled pixels, ``verify.PatchSpec``). A last conv whose
patch is wider than ``MAX_REFIT_WIDTH`` (a k×k conv after a rank above 128, a pruning that keeps
more than 128 channels) is too costly to refit at every step of the search: its *outputs* are
mixed instead, a C_out × C_out map (and bias) fitted the same way from the layer's output in the
rewritten model to the original's response, then folded into the conv's weights (``W ← M·W``,
``b ← M·b + c``): a correction of the layer's output side, bias included, cheap at any width.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from convlint.rewrite.factorize import Array, ChannelPruner, ConvFactorizer, PoolProjection
from convlint.rewrite.options import MIN_SAVING as MIN_SAVING  # the pipeline imports it from here

T = TypeVar("T")
STEP = 8
MAX_EVALS = 12  # whole-model verifications while bisecting the path
REPAIR_EVALS = 12  # ... and, after it, while bisecting the path without the layer that broke it
CONFIRM_EVALS = 8  # verifications on the confirming samples while stepping back along the path
SPLIT_FIRST_RANKS = 8  # first ranks of reduce-spatial tried per conv, at most
ALS_ITERATIONS = 20
MAX_REFIT_WIDTH = 1152  # patch width (channels × kernel area) of a refitted conv, at most
MAX_PATCH_WIDTH = 4608  # input patch width (C_in × kernel area) of a conv refitted whole
REFIT_ROWS = 12  # sampled rows per unknown of the refit, at least (4 overfitted VGG-16 2x)
MIN_ROWS, MAX_ROWS = 6144, 24576
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
    when that is all the layer has. Below a step wider than ``STEP``, its multiples of
    ``STEP`` too: MLAS reads a conv input of fewer channels than its block as it is, without
    padding (a 3×3 conv from 8 channels to 64 at 240×240: 3.2 ms, from 16: 6.0 ms)."""
    if maximum < 2 * step:
        return list(range(1, maximum + 1))
    return [*range(STEP, step, STEP), *range(step, maximum + 1, step)]


def factor_candidates(
    search: ConvFactorizer, baseline: int, min_saving: float = MIN_SAVING, step: int = STEP
) -> list[Candidate]:
    """The Pareto front of every factored form of one conv that saves ``min_saving``, at
    ranks on the ``ladder`` of ``step``."""
    found: list[Candidate] = []
    limit = (1 - min_saving) * baseline
    inputs, outputs = search.input_side, search.output_side
    for kind in search.kinds:
        if kind == "reduce-spatial":
            found.extend(_reduce_spatial_candidates(search, limit, step))
        elif kind != "tucker2":
            side = search.side(kind)
            for rank in ladder(side.max_rank, step):
                macs, params = search.cost(kind, rank)
                if macs <= limit:
                    found.append(Candidate(kind, rank, macs, params, side.proxy(rank)))
        else:
            for r1 in ladder(inputs.max_rank, step):
                for r2 in ladder(outputs.max_rank, step):
                    macs, params = search.cost(kind, (r1, r2))
                    if macs <= limit:
                        proxy = math.hypot(inputs.proxy(r1), outputs.proxy(r2))
                        found.append(Candidate(kind, (r1, r2), macs, params, proxy))
    return pareto(found)


def _reduce_spatial_candidates(
    search: ConvFactorizer, limit: float, step: int = STEP
) -> list[Candidate]:
    """``reduce-spatial`` at first ranks r1 on a coarse ladder up to 3/4 of the channels (each
    r1 is an SVD of its own, at most ``SPLIT_FIRST_RANKS`` of them; a wider reduction saves
    less than the spatial SVD alone), each with every second rank r2 that saves: the front of
    its own candidates."""
    maximum = search.input_side.max_rank
    coarse = max(step, math.ceil(maximum / SPLIT_FIRST_RANKS / step) * step)
    widest = maximum * 3 // 4
    # Multiples of the coarse step alone (no narrower ranks below it: at most 8 SVDs).
    first = range(1, widest + 1) if widest < 2 * coarse else range(coarse, widest + 1, coarse)
    found = []
    for r1 in first:
        if search.cost("reduce-spatial", (r1, 1))[0] > limit:
            break
        for r2 in ladder(search.reduced_spatial(r1)[1].max_rank, step):
            macs, params = search.cost("reduce-spatial", (r1, r2))
            if macs <= limit:
                proxy = search.reduced_spatial_proxy(r1, r2)
                found.append(Candidate("reduce-spatial", (r1, r2), macs, params, proxy))
    return pareto(found)


def pool_candidates(
    search: PoolProjection, min_saving: float = MIN_SAVING, step: int = STEP
) -> list[Candidate]:
    """The projection widths of a pooling branch that save ``min_saving`` of its consumers."""
    baseline = search.baseline()[0]
    found = []
    for rank in ladder(search.max_rank, step):
        macs, params = search.cost(rank)
        if macs <= (1 - min_saving) * baseline:
            found.append(Candidate("pool-projection", rank, macs, params, search.proxy(rank)))
    return pareto(found)


def prune_candidates(
    pruner: ChannelPruner, min_saving: float = MIN_SAVING, fewest: int = 1, step: int = STEP
) -> list[Candidate]:
    """Channel counts (``fewest`` at least) that save ``min_saving`` of the conv and its
    producer together."""
    baseline = pruner.baseline()
    found = []
    for count in ladder(pruner.site.cin - 1, step):
        if count < fewest:
            continue
        macs, params = pruner.cost(count)
        if macs <= (1 - min_saving) * baseline:
            found.append(Candidate("prune", count, macs, params, pruner.proxy(count)))
    return pareto(found)


def pareto(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Candidates no other one beats on both MACs and proxy error, cheapest first."""
    front: list[Candidate] = []
    for candidate in sorted(candidates, key=lambda c: (c.macs, c.proxy, c.params)):
        if not front or candidate.proxy < front[-1].proxy:
            front.append(candidate)
    return front


Allocation = dict[str, Candidate]  # target key -> its chosen form (absent: not rewritten)


def allocation_path(
    curves: Mapping[str, Sequence[Candidate]], baselines: Mapping[str, int]
) -> list[Allocation]:
    """Allocations from the most careful (nothing rewritten) to the most aggressive (every
    layer at its cheapest form), one step at a time: each step moves the one layer whose next
    cheaper candidate saves the most MACs per unit of added squared error (marginal analysis:
    the greedy solution of the Lagrangian ``MACs + μ · Σ proxy²`` that, unlike sweeping μ,
    also visits every candidate off the convex hull of a layer's curve)."""
    position = {key: -1 for key in curves}  # index into the layer's curve, costliest first
    ladders = {key: list(reversed(curve)) for key, curve in curves.items()}
    current: Allocation = {}
    path: list[Allocation] = [{}]
    while True:
        best_key, best_ratio = None, -1.0
        for key, ladder_ in ladders.items():
            step = position[key] + 1
            if step >= len(ladder_):
                continue
            now = current.get(key)
            macs, proxy = (now.macs, now.proxy) if now else (baselines[key], 0.0)
            following = ladder_[step]
            ratio = (macs - following.macs) / max(following.proxy**2 - proxy**2, 1e-30)
            if ratio > best_ratio:
                best_key, best_ratio = key, ratio
        if best_key is None:
            return path
        position[best_key] += 1
        current = {**current, best_key: ladders[best_key][position[best_key]]}
        path.append(current)


def most_aggressive(path: Sequence[Allocation], holds: Callable[[Allocation], bool]) -> int:
    """The index of the last allocation on ``path`` that ``holds``, by bisection (the errors
    grow along the path); 0 (nothing rewritten) when none does. At most ``MAX_EVALS`` calls."""
    return _bisect(path, holds, 0, MAX_EVALS)[0]


def _bisect(
    path: Sequence[Allocation], holds: Callable[[Allocation], bool], good: int, evals: int
) -> tuple[int, int, int]:
    """(last index known to hold, first known not to (``len(path)``: none), calls made),
    bisecting ``path`` after ``good`` (known to hold) with at most ``evals`` calls."""
    bad, calls = len(path), 0
    # The whole path often holds (planted low-rank weights): try its end first.
    candidate = len(path) - 1
    while good + 1 < bad and calls < evals:
        calls += 1
        if holds(path[candidate]):
            good = candidate
        else:
            bad = candidate
        candidate = (good + bad) // 2
    return good, bad, calls


def key_of(allocation: Allocation) -> tuple[tuple[str, str, int | tuple[int, int]], ...]:
    """An allocation as a hashable value (the same forms on two paths are one allocation)."""
    return tuple(sorted((key, c.kind, c.rank) for key, c in allocation.items()))


def moved(before: Allocation, after: Allocation) -> str | None:
    """The layer whose form differs between two neighbouring allocations of a path."""
    return next((key for key, form in after.items() if before.get(key) != form), None)


def spend(
    curves: Mapping[str, Sequence[Candidate]],
    baselines: Mapping[str, int],
    holds: Callable[[Allocation], bool],
    log: Callable[[str], object] = lambda _: None,
    confirms: Callable[[Allocation], bool] | None = None,
) -> Allocation:
    """The most aggressive allocation found to hold: the bisection of ``allocation_path``,
    then, while the step that broke the budget is known, that step's layer stays where it is
    and the path of the other layers goes on from there (bisected again). The proxy orders
    layers by an estimate; one layer whose next form is far worse than its estimate would
    otherwise stop every other layer at the same point of the path.

    ``confirms``: the budget on samples the search never measured. Keeping the most
    aggressive of some thirty allocations that ``holds`` keeps the one its samples were
    luckiest for (selection); the choice is confirmed on others, and while it fails there
    the path is stepped back, 1, 2, 4, ... steps at a time (``confirm_back``)."""
    curves = {key: list(curve) for key, curve in curves.items()}
    path = allocation_path(curves, baselines)
    if len(path) < 2:
        return {}
    good, bad, _ = _bisect(path, holds, 0, MAX_EVALS)
    left = REPAIR_EVALS
    while good + 1 == bad < len(path) and left > 0:
        best = path[good]
        layer = moved(best, path[bad])
        if layer is None:
            break
        kept = best.get(layer)
        where = "unchanged" if kept is None else f"at {kept.kind} {kept.rank}"
        log(f"budget: {layer} stays {where} (its next form broke the budget); the others go on")
        curves[layer] = [c for c in curves[layer] if kept is not None and c.macs >= kept.macs]
        path = allocation_path(curves, baselines)
        good = next(i for i, allocation in enumerate(path) if allocation == best)
        good, bad, calls = _bisect(path, holds, good, left)
        left -= calls
    if confirms is None:
        return path[good]
    return confirm_back(path, good, confirms, log)


def confirm_back(
    path: Sequence[Allocation],
    index: int,
    confirms: Callable[[Allocation], bool],
    log: Callable[[str], object] = lambda _: None,
) -> Allocation:
    """``path[index]`` if it ``confirms``, else the first allocation before it that does,
    stepping back 1, 2, 4, ... steps (at most ``CONFIRM_EVALS`` looks, each a look at the
    confirming samples: few, so that they stay an honest check); nothing rewritten (the
    path's start) when none of them does."""
    step = 1
    for _ in range(CONFIRM_EVALS):
        if index <= 0:
            return {}
        if confirms(path[index]):
            return path[index]
        back = min(step, index)
        log(f"budget: not confirmed on the held-out samples; {back} step(s) back along the path")
        index -= back
        step *= 2
    return {}


# -- refitting the last conv -------------------------------------------------------------


def refit_rows(width: int, samples: int, pixels: int) -> int:
    """Output pixels to sample per fitting sample for a refit with ``width`` unknowns."""
    rows = min(max(REFIT_ROWS * (width + 1), MIN_ROWS), MAX_ROWS)
    return max(1, min(pixels, math.ceil(rows / max(samples, 1))))


def refit(
    features: Array, response: Array, relu: bool, start: tuple[Array, Array] | None = None
) -> tuple[Array, Array]:
    """(W, b) minimizing ``‖features·Wᵀ + b − response‖`` (after a ReLU on both sides when
    ``relu``): W is (C_out × width), b (C_out). Rows are sampled pixels. ``start``: the (W, b)
    the layer has now, one more start of the alternation (``_alternate``), so that the refit
    after a ReLU is never worse on these rows than what it replaces."""
    # The products in float32 (the rows are float32 activations; float64 is twice the time),
    # the normal equations solved in float64.
    x = np.concatenate([features, np.ones((len(features), 1), np.float32)], axis=1)
    gram = (x.T @ x).astype(np.float64)
    gram[np.diag_indices_from(gram)] += RIDGE * float(np.trace(gram)) / len(gram)
    inverse = np.linalg.inv(gram)  # once: the ALS iterations only change the right side

    def solve(goal: Array) -> Array:
        return inverse @ (x.T @ goal.astype(np.float32)).astype(np.float64)

    def predict(solution: Array) -> Array:
        return (x @ solution.astype(np.float32)).astype(np.float64)

    current = None if start is None else np.vstack([start[0].T, start[1][None, :]])
    solution = _alternate(solve, predict, response.astype(np.float64), relu, current)
    return solution[:-1].T, solution[-1]


def _alternate(
    solve: Callable[[Array], T],
    predict: Callable[[T], Array],
    response: Array,
    relu: bool,
    current: T | None = None,
) -> T:
    """Least squares of the response, after a ReLU when ``relu`` (Zhang et al. 2015, section
    3.2, solved by alternating): where the original ReLU outputs zero, any value at or below
    zero reproduces it, so the targets there follow the prediction down to zero and the fit is
    solved again, ``ALS_ITERATIONS`` times at most, while the error still falls by 1%.
    ``current``: the layer's present solution, a third start (see below)."""
    plain = solve(response)
    if not relu:
        return plain
    active = response > 0
    # Two starts, the better kept: the response itself (the fit before the ReLU), and the
    # response with its negative part clipped at each channel's typical positive size (a
    # channel the ReLU always zeroes starts as a constant, no variance for a rank-limited fit
    # to keep). Each step after the start can only lower the error after the ReLU: the
    # targets it fits bound that error from above and meet it at the current solution.
    # A third start is the layer as it is (``current``): a refit that corrects a layer already
    # close to its response (a pruning's output mix starts at the identity) then stays at least
    # as close; from either other start the alternation can settle in a worse minimum than
    # the layer's own (VGG-16 block5_conv3 mixed from the plain start: 1.1% -> 3.7%; from the
    # identity: 1.1% -> 0.84%).
    positive = np.maximum(response, 0.0)
    floor = -np.sqrt(np.mean(positive**2, axis=0))
    starts = [plain, solve(np.maximum(response, floor))]
    if current is not None:
        starts.append(current)
    predictions = [predict(start) for start in starts]
    errors = [relative_error(p, response, relu=True) for p in predictions]
    best = int(np.argmin(errors))
    solution, prediction, error = starts[best], predictions[best], errors[best]
    for _ in range(ALS_ITERATIONS):
        solution = solve(np.where(active, response, np.minimum(prediction, 0.0)))
        prediction = predict(solution)
        now = relative_error(prediction, response, relu=True)
        if now > 0.99 * error:
            break
        error = now
    return solution


def reduced_rank_refit(
    responses: Array, targets: Array, rank: int, relu: bool
) -> tuple[Array, Array, Array]:
    """The output-side factors of Zhang et al. (2015, eq. 8-12): ``targets ≈ P·responses + c``
    with P of rank ``rank``, P = B·A (B: C_out × r, the 1×1 conv; A: r × C_out, applied to the
    original conv's weight to give the k×k conv). ``responses`` are the original conv's
    responses (bias left out) to the inputs the approximated model produces, ``targets`` the
    original model's own; with ``relu`` the fit is of the responses after the ReLU (alternating
    least squares, as ``refit``). Returns (B, A, c)."""
    y = responses.astype(np.float64)
    z = targets.astype(np.float64)
    y_mean = y.mean(axis=0)
    centred = y - y_mean
    gram = centred.T @ centred
    gram[np.diag_indices_from(gram)] += RIDGE * float(np.trace(gram)) / len(gram) + 1e-30
    inverse = np.linalg.inv(gram)

    def solve(goal: Array) -> tuple[Array, Array, Array]:
        goal_mean = goal.mean(axis=0)
        full = ((goal - goal_mean).T @ centred) @ inverse  # C_out × C_out, least squares
        fitted = centred @ full.T
        _, vectors = np.linalg.eigh(fitted.T @ fitted)
        b = vectors[:, ::-1][:, :rank]
        a = b.T @ full
        return b, a, goal_mean - b @ (a @ y_mean)

    # With a ReLU, start from the response after it: a channel it always zeroes is then a
    # constant (the bias takes it) rather than variance the rank must keep.
    def predict(factors: tuple[Array, Array, Array]) -> Array:
        b, a, c = factors
        prediction: Array = y @ (b @ a).T + c
        return prediction

    return _alternate(solve, predict, z, relu)


def relative_error(prediction: Array, response: Array, relu: bool) -> float:
    """The relative L2 error of a layer's response on sampled rows (after a ReLU if any)."""
    if relu:
        prediction, response = np.maximum(prediction, 0), np.maximum(response, 0)
    norm = float(np.linalg.norm(response))
    return float(np.linalg.norm(prediction - response)) / norm if norm > 0 else 0.0


__all__ = [
    "Allocation",
    "Candidate",
    "allocation_path",
    "confirm_back",
    "factor_candidates",
    "ladder",
    "most_aggressive",
    "pareto",
    "pool_candidates",
    "prune_candidates",
    "reduced_rank_refit",
    "refit",
    "refit_rows",
]
