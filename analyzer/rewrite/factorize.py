"""Stage 5a: low-rank factorizations of conv weights, and the exact algebra of folding.

Numbers only: this module knows weights (numpy arrays) and pixel counts, never the graph.

A conv weight ``W`` has shape (C_out, C_in, kh, kw); ``K = kh·kw``. Four factored forms:

- ``svd-reduce`` (input side): a 1×1 conv C_in->r, then the k×k conv r->C_out. It factors
  ``W`` unfolded as the (C_out·K) × C_in matrix ``M_in`` (rows: output channel and kernel
  offset, columns: input channels), ``M_in ≈ B·A`` with A (r × C_in) the 1×1 conv.
- ``svd-expand`` (output side): the k×k conv C_in->r, then a 1×1 conv r->C_out. It factors
  ``W`` unfolded as the C_out × (C_in·K) matrix ``M_out`` (columns: an im2col patch).
- ``tucker2``: 1×1 C_in->r1, k×k r1->r2, 1×1 r2->C_out (HOSVD of the two channel modes,
  refined by HOOI sweeps while they lower the error).
- ``spatial-svd`` (2-D kernels with kh, kw > 1; Jaderberg, Vedaldi and Zisserman 2014, AIMET's
  "spatial SVD"): a kh×1 conv C_in->r, then a 1×kw conv r->C_out. It factors ``W`` unfolded as
  the (C_out·kw) × (C_in·kh) matrix ``M_sp`` (rows: output channel and column offset, columns:
  input channel and row offset), ``M_sp ≈ B·A``, A (r × C_in·kh) the vertical conv. The
  vertical conv takes the row stride, pads and dilation, the horizontal one the column ones;
  it runs on (output rows × input columns) pixels. Zero padding is exact here too: the
  vertical conv (no bias) of a zero column is zero.
- ``reduce-spatial`` (the same 2-D kernels; Zhang, Zou, He and Sun 2015's combined
  decomposition, their "asymmetric (3d)"): ``svd-reduce``'s 1×1 conv C_in->r1, then a spatial
  SVD of its k×k conv r1->C_out at rank r2: 1×1 C_in->r1, kh×1 r1->r2, 1×kw r2->C_out. The
  rank is ``[r1, r2]``; the spatial SVD is that of the reduced kernel ``(C_out, r1, kh, kw)``.

A 1×1 conv without bias maps zero to zero, so it commutes with zero padding: strides, pads,
dilations and auto_pad stay on the k×k conv and every form is exact at full rank.

MACs are those of one sample, counted exactly: a 1×1 conv before the k×k conv runs on every
input pixel, the k×k conv and a 1×1 conv after it on every output pixel.

Weight method (``--method weight``): truncated SVD of the unfolding; the rank-r error proxy is
the relative Frobenius error of the weight, which is the layer's relative response error for
white (identity second moment) inputs. Planted low-rank weights are found exactly this way.

Data-aware method (``--method data-aware``): trained weights are rarely low-rank over channels,
but the layer's response to real activations is. With ``x`` the conv's input at one pixel,
``p`` an im2col patch (dim C_in·K) and ``y0 = M_out·p`` the pre-bias response, the layer's
squared error is ``E||(M - M')p||² = ||(M - M')·C_p^½||²_F`` with ``C_p = E[p pᵀ]``:

- Output side: the best rank-r ``M'`` projects the response onto its top-r principal
  directions: ``M' = U_r U_rᵀ M`` with ``U`` the eigenvectors of ``E[y0 y0ᵀ] = M C_p Mᵀ``.
  That is the SVD of ``M C_p^½`` mapped back by ``C_p^-½`` without ever forming the inverse.
  ``E[y0 y0ᵀ]`` is measured directly on the conv's output (bias subtracted), so the patch
  covariance (C_in·K squared, large and rank-deficient on few samples) is never built.
- Input side: the 1×1 conv A is shared by all K kernel offsets, which couples the offsets
  through the cross-offset blocks of ``C_p``; there is no closed form. We use the per-pixel
  input-channel second moment ``C_x = E[x xᵀ]`` (the diagonal blocks of ``C_p``), i.e. we
  ignore the correlation between neighbouring pixels: SVD of ``M_in C_x^½ = U S Vᵀ``, then
  ``A = V_rᵀ C_x^-½`` and ``B = U_r S_r``. The verifier measures what this proxy ignores.
- Tucker-2: the input factor of the input side and the output factor of the output side, the
  core fitted between them.
- Spatial SVD: the input side of ``M_sp`` with the moment of a vertical patch, ``E[p pᵀ]``
  (C_in·kh square), made from the per-pixel moment and the moments between rows 1 .. kh-1
  apart (``vertical_moment``; measured on the fitting inputs, as ``C_x``): neighbouring rows of
  an image or a feature map are strongly correlated, and the vertical conv only needs to keep
  what the patch really varies in. Without the row moments (a caller that measured none), it
  is ``C_x ⊗ I_kh``, the same neglect of neighbouring pixels as the input side's. Correlation
  between columns is still ignored; ``budget``'s refit of the horizontal conv then fits the
  real patches.
- Reduce, then spatial SVD: the input side at r1, then the spatial SVD of the reduced kernel
  with the reduced channels' moments ``A C Aᵀ`` (per pixel and between rows); its proxy is
  ``hypot`` of the two steps' proxies, as Tucker-2's.

Both moments are regularized with an eigenvalue floor, ``C + ε·I`` with
``ε = DATA_FLOOR·tr(C)/dim`` (on the output side, ``E[y0 y0ᵀ] + ε·M Mᵀ``, the same floor
pushed through the conv): directions the fitting inputs never visited keep a little weight
instead of an infinite inverse. The floor (1e-6 of the mean eigenvalue) is small enough that
discarding every such direction stays well within a 1e-3 tolerance, so the method can drop
them; whether that generalizes is what the verification on held-out inputs measures. At full
rank, ``C^½`` and ``C^-½`` cancel exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

KINDS = ("svd-reduce", "svd-expand", "tucker2", "spatial-svd", "reduce-spatial")
SPLIT_KINDS = ("spatial-svd", "reduce-spatial")  # forms that split the kernel's two axes
DATA_FLOOR = 1e-6
HOOI_SWEEPS = 3


@dataclass(frozen=True)
class ConvSite:
    """Sizes of one conv: channels, kernel and the pixels of one sample in and out."""

    cout: int
    cin: int
    kernel: tuple[int, ...]
    in_pixels: int
    out_pixels: int
    has_bias: bool = False
    # A 2-D conv with kh, kw > 1 and static sizes: output rows × input columns, the pixels
    # the vertical conv of a spatial SVD runs on; 0 where the form is not offered.
    mid_pixels: int = 0

    @property
    def k(self) -> int:
        return math.prod(self.kernel)

    def macs(self) -> int:
        return self.cout * self.cin * self.k * self.out_pixels

    def params(self) -> int:
        return self.cout * self.cin * self.k + (self.cout if self.has_bias else 0)


@dataclass
class Factors:
    """One factored form at one rank: conv weights in execution order and their costs."""

    kind: str
    rank: int | tuple[int, int]
    weights: list[Array] = field(repr=False)
    proxy: float  # estimated relative response error of the layer
    macs: int
    params: int
    method: str = "weight"
    # The last conv's bias when a refit replaced the original one (``budget.refit``).
    bias: Array | None = field(default=None, repr=False)
    kept: tuple[int, ...] | None = None  # channel pruning: the input channels kept

    @property
    def key(self) -> tuple[str, int | tuple[int, int]]:
        return (self.kind, self.rank)


def unfold_in(weight: Array) -> Array:
    """(C_out, C_in, kh, kw) -> (C_out·kh·kw) × C_in."""
    cout, cin = weight.shape[:2]
    return weight.transpose(0, *range(2, weight.ndim), 1).reshape(-1, cin)


def unfold_spatial(weight: Array) -> Array:
    """(C_out, C_in, kh, kw) -> (C_out·kw) × (C_in·kh): rows (o, j), columns (c, i)."""
    cout, cin, kh, kw = weight.shape
    return weight.transpose(0, 3, 1, 2).reshape(cout * kw, cin * kh)


def fold_spatial(b: Array, a: Array, cout: int, cin: int, kernel: Sequence[int]) -> list[Array]:
    """The vertical (r, C_in, kh, 1) and horizontal (C_out, r, 1, kw) convs of ``B·A``."""
    kh, kw = kernel
    rank = a.shape[0]
    vertical = a.reshape(rank, cin, kh, 1)
    horizontal = b.reshape(cout, kw, rank).transpose(0, 2, 1).reshape(cout, rank, 1, kw)
    return [vertical, horizontal]


def fold_in(matrix: Array, cout: int, kernel: Sequence[int]) -> Array:
    """Inverse of :func:`unfold_in` for a (C_out·K) × r matrix: (C_out, r, kh, kw)."""
    rank = matrix.shape[1]
    spatial = len(kernel)
    shaped = matrix.reshape(cout, *kernel, rank)
    return shaped.transpose(0, spatial + 1, *range(1, spatial + 1))


def _tail(values: Array) -> Array:
    """tail[r] = sum(values[r:]) for r in 0..len: the energy a rank-r truncation discards."""
    return np.concatenate([np.cumsum(values[::-1])[::-1], [0.0]])


def _tail_proxy(tail: Array, total: float, rank: int) -> float:
    """The relative error of a rank-``rank`` truncation: the root of the energy share it
    discards."""
    return math.sqrt(max(tail[rank], 0.0) / total)


def _principal(gram: Array) -> tuple[Array, Array]:
    """Eigenvalues (descending, >= 0) and eigenvectors of a symmetric Gram matrix.

    The SVD of a tall (or wide) matrix through its small Gram matrix: several times faster than
    ``np.linalg.svd`` on conv unfoldings, and exact where it matters, since the factors are
    rebuilt from the matrix itself (``B = M·V``), so full rank reproduces ``M``.
    """
    values, vectors = np.linalg.eigh((gram + gram.T) / 2)
    return np.maximum(values[::-1], 0.0), vectors[:, ::-1]


def _floored(moment: Array) -> tuple[Array, Array]:
    """C^½ and C^-½ of a second moment with the eigenvalue floor applied."""
    moment = (moment + moment.T) / 2
    values, vectors = np.linalg.eigh(moment)
    floor = DATA_FLOOR * max(float(np.trace(moment)) / len(moment), 1e-30)
    values = np.maximum(values, 0.0) + floor
    root = np.sqrt(values)
    return (vectors * root) @ vectors.T, (vectors / root) @ vectors.T


class InputSide:
    """Factor a (rows × C) matrix as B (rows × r) · A (r × C), A a 1×1 conv on the C channels."""

    def __init__(self, matrix: Array, moment: Array | None = None) -> None:
        self.matrix = matrix
        if moment is None:
            weighted, self.inv_root = matrix, None
        else:
            root, self.inv_root = _floored(moment)
            weighted = matrix @ root
        self.weighted = weighted
        energy, self.v = _principal(weighted.T @ weighted)
        self.tail = _tail(energy)
        self.total = max(float(self.tail[0]), 1e-300)

    @property
    def max_rank(self) -> int:
        return min(self.matrix.shape)

    def proxy(self, rank: int) -> float:
        return _tail_proxy(self.tail, self.total, min(rank, self.max_rank))

    def factors(self, rank: int) -> tuple[Array, Array]:
        """(B, A): B = U_r S_r = (M C^½) V_r, A = V_rᵀ C^-½."""
        v = self.v[:, :rank]
        a = v.T if self.inv_root is None else v.T @ self.inv_root
        return self.weighted @ v, a


class OutputSide:
    """Factor a C_out × cols matrix as U_r (C_out × r) · (U_rᵀ M), U the principal outputs."""

    def __init__(
        self, matrix: Array, response: Array | None = None, input_trace: float = 0.0
    ) -> None:
        self.matrix = matrix
        gram = matrix @ matrix.T
        if response is not None:
            gram = response + DATA_FLOOR * input_trace / max(matrix.shape[1], 1) * gram
        values, self.u = _principal(gram)
        self.tail = _tail(values)
        self.total = max(float(self.tail[0]), 1e-300)

    @property
    def max_rank(self) -> int:
        return min(self.matrix.shape)

    def proxy(self, rank: int) -> float:
        return math.sqrt(max(self.tail[min(rank, len(self.tail) - 1)], 0.0) / self.total)

    def measure_after_relu(self, covariance: Array) -> None:
        """Estimate errors from the response after the ReLU: what a rank-r response keeps of
        its covariance (a bias carries its mean), of the total energy. The factors stay those
        of the response before it; ``budget``'s refit fits the response after it."""
        values, _ = _principal(covariance)
        self.tail = _tail(values)
        self.total = max(float(np.trace(covariance)), 1e-300)

    def factors(self, rank: int) -> tuple[Array, Array]:
        """(B, A): B = U_r (C_out × r), A = U_rᵀ M (r × cols)."""
        b = self.u[:, :rank]
        return b, b.T @ self.matrix


@dataclass
class Statistics:
    """Second moments measured on the fitting inputs (data-aware method)."""

    input_moment: Array  # C_in × C_in, E[x xᵀ] over pixels and samples
    response_moment: Array | None = None  # C_out × C_out, E[y0 y0ᵀ], y0 = conv output - bias
    # C_out × C_out, the covariance of the response after the ReLU that follows the conv
    activated_covariance: Array | None = None
    # C_in × C_in, E[x(h) x(h+d)ᵀ] for the kernel's rows d = 1 .. kh-1 apart (dilation
    # included): with ``input_moment``, the moment of the vertical patch a spatial SVD reads
    row_moments: tuple[Array, ...] = ()


def vertical_moment(moment: Array, rows: Sequence[Array], kh: int) -> Array:
    """E[p pᵀ] of a vertical patch p (C·kh, channel-major: ``unfold_spatial``'s columns) from
    the per-pixel moment and those between rows 1 .. kh-1 apart: the block of rows i and j is
    the moment between rows |j - i| apart (transposed for j < i), as a stationary input has
    it. Without those (``rows`` short), ``C_x ⊗ I``: neighbouring rows taken as unrelated."""
    if len(rows) != kh - 1:
        unrelated: Array = np.kron(moment, np.eye(kh)).astype(np.float64)
        return unrelated
    channels = len(moment)
    apart = [moment, *rows]
    full = np.empty((channels, kh, channels, kh))
    for i in range(kh):
        for j in range(kh):
            full[:, i, :, j] = apart[j - i] if j >= i else apart[i - j].T
    return full.reshape(channels * kh, channels * kh)


@dataclass
class ConvFactorizer:
    """Every factored form of one conv weight, searchable by error budget or fixed rank."""

    weight: Array
    site: ConvSite
    stats: Statistics | None = None
    kinds: Sequence[str] = KINDS
    _in: InputSide = field(init=False)
    _out: OutputSide = field(init=False)
    _spatial: InputSide | None = field(init=False, default=None)
    _reduced: dict[int, tuple[Array, InputSide]] = field(init=False, default_factory=dict)
    _reduced_tails: dict[int, tuple[Array, float, int]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.weight = np.asarray(self.weight, dtype=np.float64)
        if not self.site.mid_pixels:
            self.kinds = tuple(k for k in self.kinds if k not in SPLIT_KINDS)
        m_in, m_out = unfold_in(self.weight), self.weight.reshape(self.site.cout, -1)
        if self.stats is None:
            self._in, self._out = InputSide(m_in), OutputSide(m_out)
        else:
            trace = float(np.trace(self.stats.input_moment))
            self._in = InputSide(m_in, self.stats.input_moment)
            self._out = OutputSide(m_out, self.stats.response_moment, trace * self.site.k)
            if self.stats.activated_covariance is not None:
                self._out.measure_after_relu(self.stats.activated_covariance)

    @property
    def method(self) -> str:
        return "weight" if self.stats is None else "data-aware"

    @property
    def input_side(self) -> InputSide:
        return self._in

    @property
    def spatial_side(self) -> InputSide:
        """The vertical/horizontal split's factorization (built on first use)."""
        if self._spatial is None:
            moment = None
            if self.stats is not None:
                stats = self.stats
                moment = vertical_moment(stats.input_moment, stats.row_moments, self.site.kernel[0])
            self._spatial = InputSide(unfold_spatial(self.weight), moment)
        return self._spatial

    def reduced_spatial(self, r1: int) -> tuple[Array, InputSide]:
        """``reduce-spatial`` at a first rank r1: the 1×1 conv A (r1 × C_in) and the spatial
        SVD of the reduced kernel. The last one built is kept (tens of MB at 512 channels);
        every r1's energies are kept for the proxies."""
        if r1 not in self._reduced:
            b, a = self._in.factors(r1)
            reduced = fold_in(b, self.site.cout, self.site.kernel)  # (C_out, r1, kh, kw)
            moment = None
            if self.stats is not None:  # the reduced channels' moments: A·C·Aᵀ
                stats = self.stats
                moment = vertical_moment(
                    a @ stats.input_moment @ a.T,
                    [a @ rows @ a.T for rows in stats.row_moments],
                    self.site.kernel[0],
                )
            side = InputSide(unfold_spatial(reduced), moment)
            self._reduced = {r1: (a, side)}
            self._reduced_tails[r1] = (side.tail, side.total, side.max_rank)
        return self._reduced[r1]

    def reduced_spatial_proxy(self, r1: int, r2: int) -> float:
        if r1 not in self._reduced_tails:
            self.reduced_spatial(r1)
        tail, total, max_rank = self._reduced_tails[r1]
        return math.hypot(self._in.proxy(r1), _tail_proxy(tail, total, min(r2, max_rank)))

    @property
    def output_side(self) -> OutputSide:
        return self._out

    def side(self, kind: str) -> InputSide | OutputSide:
        """The factorization behind a one-rank form (not ``tucker2``)."""
        if kind == "svd-reduce":
            return self._in
        if kind == "svd-expand":
            return self._out
        assert kind == "spatial-svd", kind
        return self.spatial_side

    # -- costs ---------------------------------------------------------------------------
    def cost(self, kind: str, rank: int | tuple[int, int]) -> tuple[int, int]:
        """(MACs, params) of a form; the bias stays on the last conv."""
        s = self.site
        bias = s.cout if s.has_bias else 0
        if kind == "svd-reduce":
            assert isinstance(rank, int)
            per_in, per_out = s.cin * rank, rank * s.cout * s.k
            return per_in * s.in_pixels + per_out * s.out_pixels, per_in + per_out + bias
        if kind == "svd-expand":
            assert isinstance(rank, int)
            per_out = rank * s.cin * s.k + s.cout * rank
            return per_out * s.out_pixels, per_out + bias
        if kind == "spatial-svd":
            assert isinstance(rank, int)
            kh, kw = s.kernel
            per_mid, per_out = s.cin * kh * rank, rank * s.cout * kw
            return per_mid * s.mid_pixels + per_out * s.out_pixels, per_mid + per_out + bias
        assert isinstance(rank, tuple)
        r1, r2 = rank
        if kind == "reduce-spatial":
            kh, kw = s.kernel
            per_in, per_mid, per_out = s.cin * r1, r1 * kh * r2, r2 * s.cout * kw
            macs = per_in * s.in_pixels + per_mid * s.mid_pixels + per_out * s.out_pixels
            return macs, per_in + per_mid + per_out + bias
        per_in, per_out = s.cin * r1, r1 * r2 * s.k + r2 * s.cout
        return per_in * s.in_pixels + per_out * s.out_pixels, per_in + per_out + bias

    # -- search --------------------------------------------------------------------------
    def _min_rank(self, side: InputSide | OutputSide, budget: float) -> int:
        squared = budget**2 * side.total
        ranks = np.nonzero(side.tail[: side.max_rank + 1] <= squared)[0]
        return int(ranks[0]) if len(ranks) else side.max_rank

    def _tucker_ranks(self, budget: float) -> tuple[int, int] | None:
        """The cheapest (r1, r2) whose HOSVD bound q_in² + q_out² stays within budget²."""
        best: tuple[int, tuple[int, int]] | None = None
        out_tail = self._out.tail / self._out.total
        for r1 in range(1, self._in.max_rank + 1):
            left = budget**2 - self._in.proxy(r1) ** 2
            if left < 0:
                continue
            fits = np.nonzero(out_tail[: self._out.max_rank + 1] <= left)[0]
            r2 = max(int(fits[0]), 1) if len(fits) else self._out.max_rank
            macs = self.cost("tucker2", (r1, r2))[0]
            if best is None or macs < best[0]:
                best = (macs, (r1, r2))
        return best[1] if best else None

    def cheapest(self, budget: float) -> Factors | None:
        """The form with the fewest MACs whose proxy error is within ``budget`` and that
        costs fewer MACs than the conv itself; None when no form does."""
        options: list[tuple[int, int, str, int | tuple[int, int]]] = []
        for kind in self.kinds:
            rank: int | tuple[int, int] | None
            if kind == "reduce-spatial":  # two ranks: the whole-model budget's curve offers it
                continue
            if kind == "tucker2":
                rank = self._tucker_ranks(budget)
            else:
                rank = max(self._min_rank(self.side(kind), budget), 1)
            if rank is None:
                continue
            macs, params = self.cost(kind, rank)
            if macs < self.site.macs():
                options.append((macs, params, kind, rank))
        if not options:
            return None
        _, _, kind, rank = min(options, key=lambda o: (o[0], o[1]))
        return self.at_rank(kind, rank)

    def fixed(self, rank: int | None = None, ratio: float | None = None) -> Factors | None:
        """The cheapest channel form at a rank given by --rank N or --ratio F; None if none
        saves. ``spatial-svd`` and ``reduce-spatial`` are left out: a spatial rank counts
        neither side's channels, and at a given rank it is often the cheapest form however far
        it is from the weight, so it is chosen by error only (``cheapest`` for ``spatial-svd``,
        the whole-model budget for both)."""
        s = self.site
        options = []
        for kind in self.kinds:
            if kind in SPLIT_KINDS:
                continue
            if ratio is not None:
                r_in, r_out = math.ceil(ratio * s.cin), math.ceil(ratio * s.cout)
            else:
                assert rank is not None
                r_in = r_out = rank
            r_in, r_out = (
                max(1, min(r_in, self._in.max_rank)),
                max(1, min(r_out, self._out.max_rank)),
            )
            chosen: int | tuple[int, int] = (
                r_in if kind == "svd-reduce" else r_out if kind == "svd-expand" else (r_in, r_out)
            )
            macs, params = self.cost(kind, chosen)
            if macs < s.macs():
                options.append((macs, params, kind, chosen))
        if not options:
            return None
        _, _, kind, chosen = min(options, key=lambda o: (o[0], o[1]))
        return self.at_rank(kind, chosen)

    # -- factors -------------------------------------------------------------------------
    def at_rank(self, kind: str, rank: int | tuple[int, int]) -> Factors:
        s = self.site
        spatial = len(s.kernel)
        pointwise = (1,) * spatial
        if kind == "svd-reduce":
            assert isinstance(rank, int)
            b, a = self._in.factors(rank)
            weights = [a.reshape(rank, s.cin, *pointwise), fold_in(b, s.cout, s.kernel)]
            proxy = self._in.proxy(rank)
        elif kind == "svd-expand":
            assert isinstance(rank, int)
            b, a = self._out.factors(rank)
            weights = [a.reshape(rank, s.cin, *s.kernel), b.reshape(s.cout, rank, *pointwise)]
            proxy = self._out.proxy(rank)
        elif kind == "spatial-svd":
            assert isinstance(rank, int)
            b, a = self.spatial_side.factors(rank)
            weights = fold_spatial(b, a, s.cout, s.cin, s.kernel)
            proxy = self.spatial_side.proxy(rank)
        elif kind == "reduce-spatial":
            assert isinstance(rank, tuple)
            r1, r2 = rank
            a, side = self.reduced_spatial(r1)
            b2, a2 = side.factors(r2)
            weights = [
                a.reshape(r1, s.cin, *pointwise),
                *fold_spatial(b2, a2, s.cout, r1, s.kernel),
            ]
            proxy = self.reduced_spatial_proxy(r1, r2)
        else:
            assert isinstance(rank, tuple)
            weights, proxy = self._tucker(*rank)
        macs, params = self.cost(kind, rank)
        return Factors(kind, rank, weights, proxy, macs, params, self.method)

    def _tucker(self, r1: int, r2: int) -> tuple[list[Array], float]:
        s = self.site
        pointwise = (1,) * len(s.kernel)
        w = self.weight
        if self.stats is not None:
            b, a = self._in.factors(r1)
            reduced = fold_in(b, s.cout, s.kernel)  # (C_out, r1, *kernel)
            u_out = self._out.u[:, :r2]
            proxy = math.hypot(self._in.proxy(r1), self._out.proxy(r2))
        else:
            a = self._in.v[:, :r1].T
            u_out = self._out.u[:, :r2]
            error = self._tucker_error(a, u_out)
            for _ in range(HOOI_SWEEPS):
                a_new, u_new = self._hooi_sweep(a, u_out, r1, r2)
                new_error = self._tucker_error(a_new, u_new)
                if new_error >= error:
                    break
                a, u_out, error = a_new, u_new, new_error
            reduced = np.einsum("oc...,rc->or...", w, a, optimize=True)
            proxy = error
        core = np.einsum("or...,ot->tr...", reduced, u_out, optimize=True)
        weights = [
            a.reshape(r1, s.cin, *pointwise),
            core,
            u_out.reshape(s.cout, r2, *pointwise),
        ]
        return weights, proxy

    def _tucker_error(self, a: Array, u_out: Array) -> float:
        core = np.einsum("oc...,rc,ot->tr...", self.weight, a, u_out, optimize=True)
        total = float(np.sum(self.weight**2))
        return math.sqrt(max(total - float(np.sum(core**2)), 0.0) / max(total, 1e-300))

    def _hooi_sweep(self, a: Array, u_out: Array, r1: int, r2: int) -> tuple[Array, Array]:
        """One HOOI sweep: each channel factor re-fitted with the other held."""
        cin = self.site.cin
        projected_out = np.einsum("oc...,ot->tc...", self.weight, u_out, optimize=True)
        unfolded = unfold_in(projected_out)
        a = _principal(unfolded.T @ unfolded)[1][:, :r1].T
        projected_in = np.einsum("oc...,rc->or...", self.weight, a, optimize=True)
        projected_in = projected_in.reshape(self.site.cout, -1)
        u = _principal(projected_in @ projected_in.T)[1]
        assert a.shape[1] == cin
        return a, u[:, :r2]


# -- CL002: a shared projection of pooled channels, folded into the concat's consumers --------


@dataclass(frozen=True)
class Consumer:
    """A conv reading the concat: its weight slice for the pooled channels and its pixels."""

    slice: Array  # (C_out, C_pool, *kernel)
    out_pixels: int


@dataclass
class PoolProjection:
    """Joint input-side SVD of every consumer's slice: one projection P (r × C_pool), new
    slices (C_out, r, *kernel); exact at the rank of the stacked matrix."""

    consumers: Sequence[Consumer]
    pool_pixels: int
    input_moment: Array | None = None
    _side: InputSide = field(init=False)

    def __post_init__(self) -> None:
        stacked = np.concatenate(
            [unfold_in(np.asarray(c.slice, np.float64)) for c in self.consumers]
        )
        self._side = InputSide(stacked, self.input_moment)

    @property
    def channels(self) -> int:
        return int(self.consumers[0].slice.shape[1])

    @property
    def method(self) -> str:
        return "weight" if self.input_moment is None else "data-aware"

    @property
    def max_rank(self) -> int:
        return self._side.max_rank

    def proxy(self, rank: int) -> float:
        return self._side.proxy(rank)

    def cost(self, rank: int) -> tuple[int, int]:
        """(MACs, params) of the projection and the consumers' pooled slices at ``rank``."""
        macs, params = self.channels * rank * self.pool_pixels, self.channels * rank
        for c in self.consumers:
            per_pixel = c.slice.shape[0] * rank * math.prod(c.slice.shape[2:])
            macs += per_pixel * c.out_pixels
            params += per_pixel
        return macs, params

    def baseline(self) -> tuple[int, int]:
        macs = params = 0
        for c in self.consumers:
            macs += c.slice.size * c.out_pixels
            params += c.slice.size
        return macs, params

    def cheapest(self, budget: float) -> Factors | None:
        rank = max(int(np.nonzero(self._side.tail <= budget**2 * self._side.total)[0][0]), 1)
        return self.at_rank(rank) if self.cost(rank)[0] < self.baseline()[0] else None

    def fixed(self, rank: int | None = None, ratio: float | None = None) -> Factors | None:
        chosen = math.ceil(ratio * self.channels) if ratio is not None else int(rank or 1)
        chosen = max(1, min(chosen, self._side.max_rank))
        return self.at_rank(chosen) if self.cost(chosen)[0] < self.baseline()[0] else None

    def at_rank(self, rank: int) -> Factors:
        b, a = self._side.factors(rank)
        slices, row = [], 0
        for c in self.consumers:
            cout, kernel = c.slice.shape[0], tuple(c.slice.shape[2:])
            rows = cout * math.prod(kernel)
            slices.append(fold_in(b[row : row + rows], cout, kernel))
            row += rows
        pointwise = (1,) * (self.consumers[0].slice.ndim - 2)
        macs, params = self.cost(rank)
        return Factors(
            "pool-projection",
            rank,
            [a.reshape(rank, self.channels, *pointwise), *slices],
            self._side.proxy(rank),
            macs,
            params,
            self.method,
        )


# -- channel pruning (He, Zhang and Sun 2017) -----------------------------------------------


@dataclass
class ChannelPruner:
    """Keep c of a conv's input channels (and of the conv that produces them), reconstruct.

    Selection: channels in order of the energy of their contribution to the response,
    ``E[x_c²]·‖W[:, c]‖²`` (a greedy stand-in for the LASSO of He et al.). Reconstruction, per
    kernel offset, from the kept channels' correlation with the pruned ones: ``W_S' = W_S +
    W_D·C_DS·C_SS⁻¹`` (least squares at one pixel; ``budget``'s refit then fits patches of the
    approximated model's inputs, and the response after a ReLU). The proxy error is the
    response energy left unexplained, ``Σ_k tr(W_kD (C_DD − C_DS C_SS⁻¹ C_SD) W_kDᵀ)``, of the
    total ``Σ_k tr(W_k C W_kᵀ)``. ``extra_macs`` are the producer's MACs per input channel
    (they go with each pruned channel); ``producer_macs`` its MACs in all."""

    weight: Array
    site: ConvSite
    input_moment: Array
    producer_macs: int = 0

    def __post_init__(self) -> None:
        self.weight = np.asarray(self.weight, dtype=np.float64)
        moment = (self.input_moment + self.input_moment.T) / 2
        floor = DATA_FLOOR * max(float(np.trace(moment)) / len(moment), 1e-30)
        self._moment = moment + floor * np.eye(len(moment))
        offsets = self.weight.reshape(self.site.cout, self.site.cin, -1)  # (C_out, C_in, K)
        energy = np.einsum("ock,ock->c", offsets, offsets) * np.diag(self._moment)
        self.order = [int(c) for c in np.argsort(-energy, kind="stable")]
        self._offsets = np.moveaxis(offsets, 2, 0)  # (K, C_out, C_in)
        # Σ_k tr(W_k C W_kᵀ) = Σ C ∘ G with G = Σ_k W_kᵀ W_k: the energies in O(C²) each
        self._gram = np.einsum("koc,kod->cd", self._offsets, self._offsets, optimize=True)
        self._total = max(float(np.sum(self._moment * self._gram)), 1e-300)

    def kept(self, count: int) -> list[int]:
        return sorted(self.order[:count])

    def cost(self, count: int) -> tuple[int, int]:
        """(MACs, params) of the pruned conv plus the producer at ``count`` channels."""
        s = self.site
        per_pixel = s.cout * count * s.k
        producer = self.producer_macs * count // max(s.cin, 1)
        return per_pixel * s.out_pixels + producer, per_pixel + (s.cout if s.has_bias else 0)

    def baseline(self) -> int:
        return self.site.macs() + self.producer_macs

    def _split(self, count: int) -> tuple[list[int], list[int], Array]:
        kept = self.kept(count)
        dropped = sorted(set(range(self.site.cin)) - set(kept))
        c = self._moment
        # C_SS⁻¹ C_SD: how the kept channels predict the pruned ones
        mix = np.linalg.solve(c[np.ix_(kept, kept)], c[np.ix_(kept, dropped)])
        return kept, dropped, mix

    def proxy(self, count: int) -> float:
        if count >= self.site.cin:
            return 0.0
        kept, dropped, mix = self._split(count)
        c = self._moment
        schur = c[np.ix_(dropped, dropped)] - c[np.ix_(dropped, kept)] @ mix
        lost = float(np.sum(schur * self._gram[np.ix_(dropped, dropped)]))
        return math.sqrt(max(lost, 0.0) / self._total)

    def at_count(self, count: int) -> Factors:
        kept, dropped, mix = self._split(count)
        w = self._offsets
        pruned = w[:, :, kept] + w[:, :, dropped] @ mix.T  # (K, C_out, c)
        weight = np.moveaxis(pruned, 0, 2).reshape(self.site.cout, count, *self.site.kernel)
        macs, params = self.cost(count)
        return Factors(
            "prune", count, [weight], self.proxy(count), macs, params, "prune", kept=tuple(kept)
        )


# -- CL003: fold conv -> affine -> conv into one conv --------------------------------------


def compose_pointwise_first(first: Array, second: Array) -> Array:
    """W[o, i, k] = Σ_m second[o, m, k] · first[m, i]: a 1×1 conv, then ``second``."""
    return np.einsum("om...,mi->oi...", second, first.reshape(first.shape[0], -1), optimize=True)


def compose_pointwise_second(first: Array, second: Array) -> Array:
    """W[o, i, k] = Σ_m second[o, m] · first[m, i, k]: ``first``, then a 1×1 conv."""
    return np.einsum("om,mi...->oi...", second.reshape(second.shape[0], -1), first, optimize=True)


def window_mask(
    size: int, out: int, kernel: int, stride: int, pad_begin: int, dilation: int
) -> Array:
    """mask[y, k] = 1 where output position y's tap k reads inside the (unpadded) input."""
    positions = np.arange(out)[:, None] * stride - pad_begin + np.arange(kernel)[None, :] * dilation
    return ((positions >= 0) & (positions < size)).astype(np.float64)


def constant_response(
    weight: Array,
    constant: Array,
    in_size: Sequence[int],
    out_size: Sequence[int],
    strides: Sequence[int],
    pads_begin: Sequence[int],
    dilations: Sequence[int],
) -> Array:
    """The conv of a per-channel constant tensor under zero padding: (C_out, *out_size).

    Inside, every tap sees the constant; at the borders, taps that read padding see zero.
    """
    per_tap = np.einsum("om...,m->o...", weight, constant)  # (C_out, *kernel)
    result = per_tap
    for axis, (size, out, k, s, p, d) in enumerate(
        zip(in_size, out_size, weight.shape[2:], strides, pads_begin, dilations, strict=True)
    ):
        mask = window_mask(size, out, k, s, p, d)  # (out, k)
        result = np.tensordot(result, mask, axes=([1 + axis], [1]))
        result = np.moveaxis(result, -1, 1 + axis)
    return result
