"""When a run draws its power: operational carbon over the hours it actually runs, from an hourly
carbon-intensity profile (a typical year, wrapping around), with an optional carbon-aware pause.

A profile ``ci_kg_per_kwh[h]``, h = 0 … Y−1 (Y = 8,760 hours, hour 0 = 1 January 00:00 UTC), is
piecewise constant over each hour. A run needing ``run_hours`` hours of work starts at hour
``start_h`` (floored to the hour) and runs in every hour where ``runs[h] = 1`` (all hours without a
pause; only the cleaner ones with one), the year repeating. With the cumulative tables

    C[k] = Σ_{h<k} runs[h]·ci[h],   N[k] = Σ_{h<k} runs[h],   k = 0 … Y   (C[0] = N[0] = 0)

the run ends when N has grown by run_hours: target T = N[s] + run_hours, whole years
k = ⌈T / N[Y]⌉ − 1, remainder t = T − k·N[Y] ∈ (0, N[Y]], end hour j = the first with N[j+1] ≥ t
(a running hour), fraction f = t − N[j] ∈ (0, 1]:

    ∫ ci dt over the running hours = k·C[Y] + C[j] + f·ci[j] − C[s]        (kg CO2e/kWh · h)
    wall-clock hours               = k·Y + j + f − s

so any start and duration is a gather and one binary search: vectorised over designs × starts ×
regions. A constant power P (kW) over the running hours emits P · ∫ ci dt kg; the effective carbon
intensity of the run is ∫ ci dt / run_hours. Without a pause N[k] = k and the wall-clock equals
run_hours.

Carbon-aware pause (Wiesner et al., "Let's Wait Awhile", Middleware 2021, the idea of shifting
delay-tolerant work to cleaner hours): the run pauses in the dirtiest ``pause_fraction`` of the
year's hours; ``runs[h] = 1`` for the (1 − pause_fraction)·Y cleanest hours (ties by hour order).
"""

import jax.numpy as jnp

HOURS_PER_YEAR = 8760


def running_hours(ci_kg_per_kwh, pause_fraction):
    """1 for the hours a run works in: the cleanest (1 − pause_fraction) of the year's hours (0 ≤
    pause_fraction < 1; 0 = never pause). ``ci_kg_per_kwh``: (..., Y)."""
    y = ci_kg_per_kwh.shape[-1]
    rank = jnp.argsort(jnp.argsort(ci_kg_per_kwh, axis=-1, stable=True), axis=-1, stable=True)
    keep = jnp.round((1.0 - jnp.asarray(pause_fraction)[..., None]) * y)
    return (rank < jnp.maximum(keep, 1.0)).astype(ci_kg_per_kwh.dtype)


def cumulative_tables(ci_kg_per_kwh, runs):
    """(C, N): the cumulative carbon intensity of the running hours and their count, (..., Y + 1)
    with a leading 0 (the module docstring's C and N)."""
    zero = jnp.zeros(ci_kg_per_kwh.shape[:-1] + (1,), ci_kg_per_kwh.dtype)
    c = jnp.concatenate([zero, jnp.cumsum(ci_kg_per_kwh * runs, axis=-1)], axis=-1)
    n = jnp.concatenate([zero, jnp.cumsum(runs, axis=-1)], axis=-1)
    return c, n


def run_integral(ci_kg_per_kwh, c_cum, n_cum, profile_ix, start_h, run_hours):
    """(∫ ci dt over the running hours in kg CO2e/kWh·h, wall-clock hours) of runs starting at
    ``start_h`` (hour of the year) needing ``run_hours`` of work, each on profile ``profile_ix`` (a
    row of the (P, Y) profile table; tables from ``cumulative_tables``). Broadcasts over
    ``profile_ix``, ``start_h`` and ``run_hours``; the module docstring gives the equations."""
    ci = jnp.atleast_2d(ci_kg_per_kwh)
    c_cum, n_cum = jnp.atleast_2d(c_cum), jnp.atleast_2d(n_cum)
    p, y = ci.shape
    profile_ix, start_h, run_hours = jnp.broadcast_arrays(jnp.asarray(profile_ix), jnp.asarray(start_h),
                                                          jnp.asarray(run_hours, ci.dtype))
    s = jnp.mod(jnp.floor(start_h), y).astype(jnp.int32)
    r = profile_ix.astype(jnp.int32)
    per_year = n_cum[r, y]
    target = n_cum[r, s] + run_hours
    k = jnp.maximum(jnp.ceil(target / per_year) - 1.0, 0.0)
    t = target - k * per_year
    # one binary search over every profile at once: row r's N[1:] shifted by r·(Y + 1) stays sorted
    stride = y + 1.0
    flat = (n_cum[:, 1:] + stride * jnp.arange(p, dtype=n_cum.dtype)[:, None]).ravel()
    j = jnp.searchsorted(flat, t + stride * r, side="left") - r * y
    j = jnp.clip(j, 0, y - 1)
    f = t - n_cum[r, j]
    integral = k * c_cum[r, y] + c_cum[r, j] + f * ci[r, j] - c_cum[r, s]
    wall = k * y + j + f - s
    done = run_hours > 0
    return jnp.where(done, integral, 0.0), jnp.where(done, wall, 0.0)


def effective_intensity(integral, run_hours):
    """The run's mean carbon intensity over its running hours: ∫ ci dt / run_hours (kg CO2e/kWh)."""
    return integral / run_hours


def best_start(ci_kg_per_kwh, c_cum, n_cum, profile_ix, run_hours, starts_h):
    """For each run (``profile_ix``, ``run_hours``: shape D), the start among ``starts_h`` (shape S)
    with the least ∫ ci dt: (best start hour, its ∫ ci dt, its wall-clock hours), each shape D.
    Evaluates the D × S grid at once (``run_integral``)."""
    integral, wall = run_integral(ci_kg_per_kwh, c_cum, n_cum, jnp.asarray(profile_ix)[..., None],
                                  jnp.asarray(starts_h)[None, :], jnp.asarray(run_hours)[..., None])
    i = jnp.argmin(integral, axis=-1)
    take = lambda a: jnp.take_along_axis(a, i[..., None], axis=-1)[..., 0]  # noqa: E731
    return jnp.asarray(starts_h)[i], take(integral), take(wall)
