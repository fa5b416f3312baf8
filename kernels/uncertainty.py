"""Uncertain inputs as samples, and sample quantiles: pure JAX, for the estimate and the sweep alike.

A distribution is a code and three parameters (``DIST``): normal (mean, sd), lognormal (median,
sigma of ln), uniform (low, high), triangular (low, mode, high). A *relative* distribution draws a
factor (mean 1, median 1, or around 1) that multiplies the input's nominal value; an absolute one
draws the value itself. Zero width gives the nominal value exactly: every form reduces to
``a + 0`` or ``a · exp(0)``.

Quantiles follow NumPy's default ("linear", Hyndman & Fan 1996 definition 7): with the n feasible
samples sorted, q sits at position h = (n - 1)·q between the order statistics ⌊h⌋ and ⌊h⌋ + 1.
``sample_quantiles`` finds those two order statistics without sorting (a sort of 1,000 values per
point costs ~40× the chain itself on CPU): bisection on the floats' bit patterns, counting the
samples at or below a threshold, ends on the k-th value exactly; the next one is a min above it.
"""

import jax
import jax.numpy as jnp
import numpy as np

DIST = {"normal": 0, "lognormal": 1, "uniform": 2, "triangular": 3}


def draw(key, codes, a, b, c, n: int):
    """``n`` draws of each of D distributions: an (n, D) array.

    codes, a, b, c: (D,) arrays (``DIST`` codes and parameters, as the module docstring). Normal
    and lognormal use a standard normal z, uniform and triangular a standard uniform u (inverse
    CDF of the triangular distribution: low + sqrt(u·(high-low)·(mode-low)) below F(mode), else
    high - sqrt((1-u)·(high-low)·(high-mode))).
    """
    kz, ku = jax.random.split(key)
    d = jnp.shape(codes)[0]
    dtype = jnp.result_type(a)
    z = jax.random.normal(kz, (n, d), dtype)
    u = jax.random.uniform(ku, (n, d), dtype)
    normal = a + b * z
    lognormal = a * jnp.exp(b * z)
    uniform = a + (b - a) * u
    width = c - a
    safe = jnp.where(width > 0, width, 1.0)
    f_mode = jnp.where(width > 0, (b - a) / safe, 0.0)
    tri = jnp.where(u < f_mode, a + jnp.sqrt(u * safe * (b - a)), c - jnp.sqrt((1.0 - u) * safe * (c - b)))
    tri = jnp.where(width > 0, tri, b)
    return jnp.select([codes == 0, codes == 1, codes == 2], [normal, lognormal, uniform], tri)


def apply(nominal, sample, relative):
    """The input's value in a sample: nominal × factor for a relative distribution, else the draw."""
    return jnp.where(relative, nominal * sample, sample)


def sortable_bits(v):
    """Integers in the order of the floats (IEEE-754 bits, negatives flipped): bisection on them
    finds an order statistic exactly in at most 32 (float32) or 64 (float64) halvings."""
    itype = jnp.int32 if v.dtype == jnp.float32 else jnp.int64
    bits = jax.lax.bitcast_convert_type(v, itype)
    return jnp.where(bits < 0, jnp.iinfo(itype).min - bits, bits)


def _from_bits(keys, dtype):
    itype = keys.dtype
    bits = jnp.where(keys < 0, jnp.iinfo(itype).min - keys, keys)
    return jax.lax.bitcast_convert_type(bits, dtype)


def _quantiles_tile(v, ok, qs):
    """``sample_quantiles`` on one tile of points (a few, so the samples stay in cache)."""
    keys = sortable_bits(v)
    itype = keys.dtype
    top = jnp.iinfo(itype).max
    keys = jnp.where(ok, keys, top)  # infeasible samples sort last and are never counted
    n = jnp.sum(ok, axis=-1)
    h = (jnp.maximum(n, 1) - 1)[None, :] * jnp.asarray(qs, v.dtype)[:, None]  # (Q, points)
    k = jnp.floor(h).astype(itype)
    # counted in rows of 32 samples, then over the rows: XLA on CPU splits a longer reduction into a
    # reduce-window and a reduce (tree reduction) and materialises the comparisons between them
    s = keys.shape[-1]
    rows = jnp.concatenate([keys, jnp.full(keys.shape[:-1] + ((-s) % 32,), top, itype)], axis=-1)
    rows = rows.reshape(keys.shape[:-1] + (-1, 32))  # padding with `top`: never at or below a threshold

    def count_le(t):
        return jnp.sum(jnp.sum((rows[None] <= t[..., None, None]).astype(jnp.int32), axis=-2), axis=-1)
    lo0 = jnp.min(keys, axis=-1) - 1  # count(≤ lo) = 0 ≤ k
    hi0 = jnp.max(jnp.where(ok, keys, jnp.iinfo(itype).min), axis=-1)  # count(≤ hi) = n > k
    lo = jnp.broadcast_to(lo0, k.shape)
    hi = jnp.broadcast_to(jnp.maximum(hi0, lo0 + 1), k.shape)

    def more(state):
        lo, hi = state
        return jnp.any(hi - lo > 1)

    def halve(state):  # keeps count(≤ lo) ≤ k < count(≤ hi)
        lo, hi = state
        mid = lo + (hi - lo) // 2
        below = count_le(mid) <= k
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.while_loop(more, halve, (lo, hi))
    kth = hi  # the smallest key with more than k samples at or below it: the k-th exactly
    nxt = jnp.min(jnp.where(keys[None, :, :] > kth[..., None], keys[None, :, :], top), axis=-1)
    kplus = jnp.where((count_le(kth) > k + 1) | (k + 1 >= n[None, :]), kth, nxt)
    lo_v, hi_v = _from_bits(kth, v.dtype), _from_bits(kplus, v.dtype)
    frac = (h - k).astype(v.dtype)
    return jnp.where(n[None, :] > 0, lo_v + frac * (hi_v - lo_v), jnp.nan)


def _tiled(fn, v, ok, tile, *more):
    """``fn(v_tile, ok_tile, *more_tiles)`` over tiles of ``tile`` points of (..., samples) arrays, by
    ``jax.lax.map``: a tile's samples stay in cache, and every tile has the same shape whatever the
    number of points, so XLA rounds a reduction over the samples the same way in any chunk."""
    lead, s = v.shape[:-1], v.shape[-1]
    p = int(np.prod(lead)) if lead else 1
    arrays = [jnp.reshape(a, (p, s)) for a in (v, ok) + more]
    pad = (-p) % tile
    if pad:
        arrays = [jnp.concatenate([a, jnp.broadcast_to(a[-1:], (pad, s))]) for a in arrays]
    tiles = jax.lax.map(lambda a: fn(*a), tuple(a.reshape(-1, tile, s) for a in arrays))  # (tiles, K, tile)
    k = tiles.shape[1]
    return jnp.moveaxis(tiles, 1, 0).reshape(k, -1)[:, :p].reshape((k,) + lead)


def _mean_tile(v, ok):
    n = jnp.sum(ok, axis=-1)
    return jnp.where(n > 0, jnp.sum(jnp.where(ok, v, 0.0), axis=-1) / jnp.maximum(n, 1), jnp.nan).astype(v.dtype)


def sample_quantiles(v, ok, qs, tile: int = 64):
    """Quantiles ``qs`` of ``v`` over the samples where ``ok`` (last axis), NumPy's "linear" rule,
    exact: (len(qs),) + v.shape[:-1]; NaN where no sample is feasible.

    The two order statistics each quantile sits between come from bisection on the floats' bits
    (``sortable_bits``), counting the samples at or below a threshold, all quantiles at once, in
    tiles of ``tile`` points (``_tiled``).
    """
    return _tiled(lambda a, b: _quantiles_tile(a, b, qs), v, ok, tile)


def sample_mean(v, ok, tile: int = 64):
    """Mean over the feasible samples (last axis); NaN where none is. In tiles (``_tiled``), so the
    rounding is the same whatever the number of points."""
    return _tiled(lambda a, b: _mean_tile(a, b)[None, :], v, ok, tile)[0]


def usable(v, ok, finite=None):
    """The samples a summary uses: ``ok`` and finite in ``v`` (and in ``finite``, if given)."""
    return ok & jnp.isfinite(v) & (True if finite is None else jnp.isfinite(finite))


def sample_summary(v, ok, qs, tile: int = 64, finite=None):
    """(quantiles as ``sample_quantiles``, mean as ``sample_mean``, the number of samples used) in one
    pass over the tiles, over the samples where ``ok`` and ``v`` (and ``finite``, if given) are
    finite. The finiteness is checked inside each tile: a caller passes the values once, where a
    mask computed outside would make XLA compute the values' expression twice (into the values and
    into the mask). The count is exact below 2^24 samples in float32."""
    def one(a, b, c=None):
        good = usable(a, b, c)
        return jnp.concatenate([_quantiles_tile(a, good, qs), _mean_tile(a, good)[None, :],
                                jnp.sum(good, axis=-1).astype(a.dtype)[None, :]])
    out = _tiled(one, v, ok, tile, *(() if finite is None else (finite,)))
    return out[:-2], out[-2], out[-1]


def pick_freeze(a, b):
    """The rows a first-order/total Sobol analysis evaluates (Saltelli 2002; Saltelli et al. 2010),
    in SALib's order: for each base sample i, A_i, then A_i with column j taken from B_i for each j,
    then B_i. a, b: (N, D) → (N·(D + 2), D)."""
    n, d = a.shape
    ab = jnp.where(jnp.eye(d, dtype=bool)[None, :, :], b[:, None, :], a[:, None, :])  # (N, D, D)
    return jnp.concatenate([a[:, None, :], ab, b[:, None, :]], axis=1).reshape(n * (d + 2), d)
