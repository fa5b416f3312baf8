"""Uncertain inputs as samples, and sample quantiles: pure JAX, for the estimate and the sweep alike.

A distribution is a code and three parameters (``DIST``): normal (mean, sd), lognormal (median,
sigma of ln), uniform (low, high), triangular (low, mode, high). A *relative* distribution draws a
factor (mean 1, median 1, or around 1) that multiplies the input's nominal value; an absolute one
draws the value itself. Zero width gives the nominal value exactly: every form reduces to
``a + 0`` or ``a · exp(0)``.

Quantiles follow NumPy's default ("linear", Hyndman & Fan 1996 definition 7): with the n feasible
samples sorted, q sits at position h = (n - 1)·q between the order statistics ⌊h⌋ and ⌊h⌋ + 1.
``sample_quantiles`` finds those two order statistics without sorting (a sort of 1,000 values per
point costs ~40× the chain itself on CPU): bisection on the value, counting the samples below a
threshold, then the exact values by a min over the samples above the bracket's floor.
"""

import jax
import jax.numpy as jnp

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


def _order_statistics(v, ok, k, iterations):
    """The k-th and (k+1)-th smallest (0-based) of ``v`` over ``ok`` along the last axis.

    Bisection on [min, max] keeps count(v ≤ lo) ≤ k < count(v ≤ hi); ``iterations`` halvings leave
    (almost always) one distinct value in (lo, hi], found exactly by a min over v > lo; where the
    bracket still holds several, the count below decides. The (k+1)-th is then the next value up.
    """
    big = jnp.asarray(jnp.inf, v.dtype)
    vv = jnp.where(ok, v, big)
    lo0 = jnp.min(vv, axis=-1)
    hi0 = jnp.max(jnp.where(ok, v, -big), axis=-1)
    count_le = lambda t: jnp.sum((vv <= t[..., None]) & ok, axis=-1)  # noqa: E731

    def body(_, bracket):
        lo, hi = bracket
        mid = lo + 0.5 * (hi - lo)
        below = count_le(mid) <= k
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    # start just below the minimum so that count(v ≤ lo) = 0 ≤ k always holds
    lo, hi = jax.lax.fori_loop(0, iterations, body, (lo0 - jnp.abs(lo0) * 1e-6 - 1e-30, hi0))
    above = jnp.where(vv > lo[..., None], vv, big)
    first = jnp.min(above, axis=-1)
    c_lo = count_le(lo)
    n_first = jnp.sum(vv == first[..., None], axis=-1)
    # the k-th is `first` when it falls among the copies of `first`; else (a bracket still holding
    # several values: an extremely rare tie of bisection steps) fall back to the nearest value
    kth = first
    second = jnp.min(jnp.where(vv > first[..., None], vv, big), axis=-1)
    kplus = jnp.where(c_lo + n_first > k + 1, first, second)
    return kth, kplus


def sample_quantiles(v, ok, qs, iterations: int = 40):
    """Quantiles ``qs`` of ``v`` over the samples where ``ok`` (last axis), NumPy's "linear" rule.

    Returns (len(qs),) + v.shape[:-1]; NaN where no sample is feasible.
    """
    n = jnp.sum(ok, axis=-1)
    out = []
    for q in qs:
        h = (jnp.maximum(n, 1) - 1) * q
        k = jnp.floor(h).astype(n.dtype)
        lo, hi = _order_statistics(v, ok, k, iterations)
        hi = jnp.where(k + 1 < n, hi, lo)
        frac = (h - k).astype(v.dtype)
        val = lo + frac * (hi - lo)
        out.append(jnp.where(n > 0, val, jnp.nan))
    return jnp.stack(out)


def sample_mean(v, ok):
    """Mean over the feasible samples (last axis); NaN where none is.

    Summed sample by sample in a loop, so the rounding is the same whatever the number of points
    (XLA orders a vectorised reduction by the array's shape: a chunked sweep would differ by an ulp).
    """
    n = jnp.sum(ok, axis=-1)
    terms = jnp.moveaxis(jnp.where(ok, v, 0.0), -1, 0)
    total = jax.lax.fori_loop(0, terms.shape[0], lambda i, acc: acc + terms[i], jnp.zeros(terms.shape[1:], v.dtype))
    return jnp.where(n > 0, total / jnp.maximum(n, 1), jnp.nan)


def pick_freeze(a, b):
    """The rows a first-order/total Sobol analysis evaluates (Saltelli 2002; Saltelli et al. 2010),
    in SALib's order: for each base sample i, A_i, then A_i with column j taken from B_i for each j,
    then B_i. a, b: (N, D) → (N·(D + 2), D)."""
    n, d = a.shape
    ab = jnp.where(jnp.eye(d, dtype=bool)[None, :, :], b[:, None, :], a[:, None, :])  # (N, D, D)
    return jnp.concatenate([a[:, None, :], ab, b[:, None, :]], axis=1).reshape(n * (d + 2), d)
