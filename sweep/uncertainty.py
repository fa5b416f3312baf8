"""The `[uncertainty]` section: named distributions of the chain's inputs, their samples through
the same kernels, quantiles, elasticities and Sobol indices.

A spec's ``[uncertainty]`` section holds ``samples`` (default 1,000), ``seed`` (default 0),
``outputs`` (the sweep's quantile outputs; default ``["total_tco2e"]``), ``keep_samples`` (a sweep
that keeps its full grid also keeps every sample of those outputs, on a ``sample`` dimension:
``<output>_samples``; default false) and one entry per uncertain
input, named as the chain's input (``carbon_intensity_kg_per_kwh``; the spec keys
``carbon_intensity`` and ``wue`` name the same inputs)::

    pue = {dist = "triangular", low = 1.08, mode = 1.1, high = 1.3}   # absolute
    carbon_intensity = {rel = 0.15}                                   # lognormal, median = nominal
    power_util = {dist = "uniform", rel = 0.1}                        # nominal × U(0.9, 1.1)

The shipped defaults (``hardware_db/uncertainty.toml``, each with its basis and source) apply to
every input the section does not name; ``{rel = 0}`` turns one off. Samples are drawn with
jax.random from ``seed``, so a seed reproduces a result exactly, and the same draws serve every
point of a sweep (common random numbers: differences between designs are not sampling noise).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from hardware_db import closest
from kernels import uncertainty as ku
from kernels.footprint import OUTPUTS
from kernels.reasons import CODE

from .names import NOT_SAMPLED
from .spec import SpecError

SECTION = "uncertainty"
SETTINGS = ("samples", "seed", "outputs", "keep_samples")
DEFAULT_SAMPLES = 1000
SOBOL_BASE = 2048  # base draws of the Sobol design at most (N·(D + 2) evaluations)
QUANTILES = {"p5": 0.05, "p50": 0.5, "p95": 0.95}
# the chain's continuous inputs a distribution may describe, with the range a sample must fall in
# (low, high, low inclusive?); a sample outside it is infeasible (counted, not used)
UNCERTAIN_INPUTS: dict[str, tuple[float, float, bool]] = {
    "carbon_intensity_kg_per_kwh": (0.0, math.inf, True), "pue": (1.0, math.inf, True),
    "wue_l_per_kwh": (0.0, math.inf, True), "power_util": (0.0, 1.0, False), "avg_power_w": (0.0, math.inf, False),
    "tdp_w": (0.0, math.inf, False), "idle_w": (0.0, math.inf, True), "host_power_w": (0.0, math.inf, True),
    "device_embodied_kgco2e": (0.0, math.inf, True), "host_embodied_kgco2e": (0.0, math.inf, True),
    "material_kg_per_device": (0.0, math.inf, True), "lifespan_years": (0.0, math.inf, False),
    "goodput": (0.0, 1.0, False), "mfu": (0.0, 1.0, False), "mfu_scale": (0.0, math.inf, False),
    "tokens": (0.0, math.inf, False), "peak_flops": (0.0, math.inf, False),
    "served_tokens_per_day": (0.0, math.inf, True), "serving_days": (0.0, math.inf, False),
    "experiment_factor": (0.0, math.inf, True), "storage_tb": (0.0, math.inf, True),
}
ALIASES = {"carbon_intensity": "carbon_intensity_kg_per_kwh", "wue": "wue_l_per_kwh"}
# parameters of each distribution: absolute form, and the relative form's single width `rel`
PARAMS = {"normal": ("mean", "sd"), "lognormal": ("median", "sigma"), "uniform": ("low", "high"),
          "triangular": ("low", "mode", "high")}
# the outputs summarised by quantiles in an estimate (continuous ones; dp and reason are not sampled)
SUMMARY_OUTPUTS = tuple(k for k in OUTPUTS if k not in NOT_SAMPLED)


@dataclass(frozen=True)
class Dist:
    """One input's distribution: ``relative`` = a factor on the nominal value."""
    input: str
    dist: str
    params: tuple[float, float, float]
    relative: bool
    source: str = "spec"  # "spec" or "default" (hardware_db/uncertainty.toml)

    @property
    def zero_width(self) -> bool:
        a, b, c = self.params
        return {"normal": b == 0, "lognormal": b == 0, "uniform": a == b, "triangular": a == c}[self.dist]


@dataclass(frozen=True)
class Uncertainty:
    samples: int
    seed: int
    dists: tuple[Dist, ...]
    outputs: tuple[str, ...] = ("total_tco2e",)
    keep_samples: bool = False  # a sweep keeps <output>_samples on a `sample` dimension

    @property
    def active(self) -> tuple[Dist, ...]:
        """Distributions of non-zero width (the ones that vary)."""
        return tuple(d for d in self.dists if not d.zero_width)

    def arrays(self, dtype=np.float64):
        """(codes, a, b, c, relative) as arrays over the distributions, for kernels.uncertainty."""
        codes = np.array([ku.DIST[d.dist] for d in self.dists], np.int32)
        p = np.array([d.params for d in self.dists], dtype).reshape(len(self.dists), 3)
        rel = np.array([d.relative for d in self.dists], bool)
        return codes, p[:, 0], p[:, 1], p[:, 2], rel


MAX_KEPT_VALUES = 100_000_000  # kept samples at most (0.8 GB in float64, held in memory and in grid.nc)


def check_kept_samples(file, unc: Uncertainty, options, n_points: int, max_points: int) -> None:
    """``keep_samples`` needs the full grid kept in memory (at most ``max_points`` points) and at
    most MAX_KEPT_VALUES sample values: a SpecError before any work otherwise."""
    if not options["keep_full_grid"]:
        raise SpecError(file, SECTION, "keep_samples", "needs [study] keep_full_grid = true (the samples are kept "
                        "with the grid); a reductions-only sweep streams the quantile outputs instead "
                        "(total_tco2e_p5, _p50, _p95, _mean)")
    values = n_points * unc.samples * len(unc.outputs)
    if n_points > max_points or values > MAX_KEPT_VALUES:
        raise SpecError(file, SECTION, "keep_samples", f"would keep {values:,} values ({n_points:,} points × "
                        f"{unc.samples:,} samples × {len(unc.outputs)} outputs); allowed: at most "
                        f"{MAX_KEPT_VALUES:,} values on at most {max_points:,} points. Use fewer samples or "
                        "points, or the streamed quantile outputs")


def kernel_spec(unc: Uncertainty, mfu_given: bool) -> tuple:
    """The section as a hashable tuple for the engine's jitted grid function: (names, relative,
    codes, a, b, c, seed, samples) over the distributions that vary."""
    ds = [d for d in unc.dists if not d.zero_width and (d.input != "mfu" or mfu_given)
          and (d.input != "mfu_scale" or not mfu_given)]
    return (tuple(d.input for d in ds), tuple(d.relative for d in ds), tuple(ku.DIST[d.dist] for d in ds),
            tuple(d.params[0] for d in ds), tuple(d.params[1] for d in ds), tuple(d.params[2] for d in ds),
            unc.seed, unc.samples)


def distribution(file, section, name, body, source="spec") -> Dist:
    """One validated distribution table (``{rel = 0.1}``, ``{dist = "normal", mean = ..., sd = ...}``,
    ...); a SpecError naming ``[section] name`` otherwise. Also the request mix's token counts
    (sweep.serving)."""
    err = lambda msg: SpecError(file, section, name, msg)  # noqa: E731
    if isinstance(body, (int, float)) and not isinstance(body, bool):
        raise err(f"must be a distribution such as {{rel = 0.1}} or {{dist = \"normal\", mean = ..., sd = ...}}, "
                  f"not a number (a fixed value goes in its own section)")
    if not isinstance(body, dict):
        raise err(f"must be a table such as {{rel = 0.1}}, not {body!r}")
    body = {k: v for k, v in body.items() if k not in ("basis", "source", "notes")}
    kind = body.get("dist", "lognormal" if "rel" in body else None)
    if kind is None:
        raise err("needs dist (one of: " + ", ".join(PARAMS) + ") or the shorthand {rel = 0.1}")
    if kind not in PARAMS:
        raise err(f"dist '{kind}' is not allowed{closest(str(kind), PARAMS)} (allowed: {', '.join(PARAMS)})")
    given = set(body) - {"dist"}
    for k, val in body.items():
        if k != "dist" and (isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val)):
            raise err(f"{k} must be a finite number, not {val!r}")
    if "rel" in given:
        if given != {"rel"}:
            raise err(f"give either rel or {', '.join(PARAMS[kind])}, not both ({', '.join(sorted(given))})")
        r = float(body["rel"])
        if r < 0:
            raise err(f"rel must be at least 0, not {r}")
        if kind in ("uniform", "triangular") and r > 1:
            raise err(f"rel must be at most 1 for a {kind} factor (it spans 1 - rel to 1 + rel), not {r}")
        params = {"normal": (1.0, r, 0.0), "lognormal": (1.0, r, 0.0), "uniform": (1.0 - r, 1.0 + r, 0.0),
                  "triangular": (1.0 - r, 1.0, 1.0 + r)}[kind]
        return Dist(name, kind, params, True, source)
    need = PARAMS[kind]
    if given != set(need):
        missing, extra = set(need) - given, given - set(need)
        what = (f"missing {', '.join(sorted(missing))}" if missing else "") + \
               ("; " if missing and extra else "") + (f"unknown {', '.join(sorted(extra))}" if extra else "")
        raise err(f"a {kind} distribution takes {', '.join(need)} (or rel): {what}")
    vals = tuple(float(body[k]) for k in need)
    if kind in ("normal", "lognormal") and vals[1] < 0:
        raise err(f"{need[1]} must be at least 0, not {vals[1]}")
    if kind == "lognormal" and vals[0] <= 0:
        raise err(f"median must be greater than 0, not {vals[0]}")
    if kind == "uniform" and vals[0] > vals[1]:
        raise err(f"low ({vals[0]}) must not exceed high ({vals[1]})")
    if kind == "triangular" and not vals[0] <= vals[1] <= vals[2]:
        raise err(f"needs low ≤ mode ≤ high, not {vals}")
    return Dist(name, kind, vals + (0.0,) * (3 - len(vals)), False, source)


def parse(file, section: dict | None, db, *, samples: int | None = None, seed: int | None = None,
          mfu_given: bool = False, moe: bool = False, sweep: bool = False) -> Uncertainty | None:
    """The validated ``[uncertainty]`` section with the shipped defaults for the inputs it does not
    name (None when there is no section and no ``samples`` override: a point estimate). ``sweep``:
    the section is a study's (``keep_samples`` applies to sweeps only)."""
    if section is None and samples is None:
        return None
    section = dict(section or {})
    n = section.pop("samples", DEFAULT_SAMPLES) if samples is None else samples
    s = section.pop("seed", 0) if seed is None else seed
    outputs = section.pop("outputs", ["total_tco2e"])
    keep = section.pop("keep_samples", False)
    if not isinstance(keep, bool):
        raise SpecError(file, SECTION, "keep_samples", f"must be true or false, not {keep!r}")
    if keep and not sweep:
        raise SpecError(file, SECTION, "keep_samples", "applies to a sweep (carbon-sweep run), which keeps every "
                        "sample on a `sample` dimension; an estimate prints its quantiles (--json: the same)")
    section.pop("samples", None), section.pop("seed", None)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise SpecError(file, SECTION, "samples", f"must be a whole number of at least 2, not {n!r}")
    if isinstance(s, bool) or not isinstance(s, int) or s < 0:
        raise SpecError(file, SECTION, "seed", f"must be a whole number ≥ 0, not {s!r}")
    if isinstance(outputs, str):
        outputs = [outputs]
    if not isinstance(outputs, list) or not outputs:
        raise SpecError(file, SECTION, "outputs", f"must be a list of output names, not {outputs!r}")
    for o in outputs:
        if o not in SUMMARY_OUTPUTS:
            raise SpecError(file, SECTION, "outputs", f"'{o}' is not an output with a distribution"
                            f"{closest(str(o), SUMMARY_OUTPUTS)} (allowed: {', '.join(SUMMARY_OUTPUTS)})")
    given = {}
    for name, body in section.items():
        key = ALIASES.get(name, name)
        if key not in UNCERTAIN_INPUTS:
            allowed = sorted(UNCERTAIN_INPUTS) + sorted(ALIASES)
            raise SpecError(file, SECTION, name, f"is not an input a distribution can describe{closest(name, allowed)} "
                            f"(allowed: {', '.join(SETTINGS)}, and the inputs {', '.join(sorted(UNCERTAIN_INPUTS))})")
        if key in given:
            raise SpecError(file, SECTION, name, f"names the same input as another entry ({key})")
        given[key] = distribution(file, SECTION, name, body, "spec")
        given[key] = Dist(key, *[getattr(given[key], f) for f in ("dist", "params", "relative", "source")])
    defaults = {}
    for name, body in db.docs.get("uncertainty.toml", {}).items():
        if not isinstance(body, dict) or name in given:
            continue
        body = dict(body)
        # the layout model's residual and the goodput apply to a predicted MFU only (a given MFU
        # is the user's figure, and already averages the booked time)
        if body.pop("only_when", None) == "mfu_predicted" and mfu_given:
            continue
        rel_moe = body.pop("rel_moe", None)  # a default's width for mixture-of-experts designs
        if moe and rel_moe is not None:
            body["rel"] = rel_moe
        defaults[name] = distribution("hardware_db/uncertainty.toml", None, name, body, "default")
    dists = tuple(given.values()) + tuple(defaults.values())
    return Uncertainty(int(n), int(s), tuple(sorted(dists, key=lambda d: d.input)), tuple(outputs), keep)


# ---------------------------------------------------------------------------------------------
# samples through the chain


def draws_for(spec: tuple, dtype=jnp.float64):
    """The (samples, D) draws of a ``kernel_spec`` from its seed (the sweep draws the same ones)."""
    names, rel, codes, a, b, c, seed, samples = spec
    return ku.draw(jax.random.key(seed), jnp.asarray(codes, jnp.int32), jnp.asarray(a, dtype), jnp.asarray(b, dtype),
                   jnp.asarray(c, dtype), samples)


def sampled_inputs(x: dict, names, rel, draws, codes=None):
    """The chain's inputs with each sampled one replaced by nominal × factor (or the draw) on a
    trailing sample axis; ``x``'s arrays must already end in a length-1 axis (or be scalars).
    Returns (inputs, in_range): False for a sample with a value outside its input's allowed range
    (``UNCERTAIN_INPUTS``); a NaN nominal (a figure not given) stays not given. The one rule the
    estimate and the sweep engine share.

    ``codes`` (the distributions' kinds, ``kernels.uncertainty.DIST``): a lognormal factor is
    positive, so on a range from 0 to infinity its samples are in range exactly where the nominal
    is: checked once per point, not per sample (the same result, at the points' rank)."""
    xs = dict(x)
    ok = jnp.ones((1, draws.shape[-2]), bool)
    for j, name in enumerate(names):
        nominal = jnp.asarray(x.get(name, 1.0))  # (mfu_scale's nominal: 1)
        val = ku.apply(nominal, draws[..., j], rel[j])
        lo, hi, lo_incl = UNCERTAIN_INPUTS[name]
        positive = codes is not None and codes[j] == ku.DIST["lognormal"] and rel[j] and lo == 0 and hi == math.inf
        at = nominal if positive else val
        inside = ((at >= lo) if lo_incl else (at > lo)) & (at <= hi)
        xs[name] = val
        ok = ok & (inside | ~jnp.isfinite(at))
    return xs, ok


# the layout model's outputs the chain reads (kernels.footprint's ``step``)
STEP_KEYS = ("step_time_s", "compute_s", "comm_exposed_s", "bubble_s", "tokens_per_s", "mfu", "hfu",
             "memory_bytes", "dp", "reason")


@functools.lru_cache(maxsize=16)
def _sampled_fn(with_cal: bool, names: tuple[str, ...], rel: tuple[bool, ...], with_step: bool = False,
                codes: tuple[int, ...] | None = None):
    from kernels.footprint import footprint

    from .compiled import deployment_stage

    def run(x, cal, draws, step=None):
        xs, ok = sampled_inputs({k: jnp.asarray(v)[..., None] for k, v in x.items()}, names, rel, draws, codes)
        ok = ok[0]
        held = {k: jnp.asarray(v)[..., None] for k, v in step.items()} if with_step else None
        out = footprint(xs, cal if with_cal else None, step=held, deploy=deployment_stage(xs))
        feasible = ok & (out["reason"] == 0) & jnp.isfinite(out["total_tco2e"])
        reason = jnp.where(ok, out["reason"], CODE["sample_out_of_range"])
        return {k: out[k] for k in SUMMARY_OUTPUTS}, feasible, reason
    return jax.jit(run)


def _spec_for(unc: Uncertainty, x: dict) -> tuple:
    return kernel_spec(unc, mfu_given=bool(np.isfinite(x.get("mfu", np.nan))))


def sample_point(x: dict, cal, unc: Uncertainty, draws=None, step: dict | None = None):
    """Outputs of one configuration over the samples: ({output: (samples,)}, feasible, reason).
    The draws are those of ``kernel_spec`` (the sweep's, for the same section); ``draws`` given:
    rows over those columns (a Sobol design). ``step``: the layout model's outputs of the point
    estimate (``STEP_KEYS``), which no sampled input changes: held, not recomputed, so a zero-width
    section gives the point estimate to the bit (a second compiled program may round a·b + c once
    where the first rounded twice)."""
    spec = _spec_for(unc, x)
    draws = draws_for(spec) if draws is None else draws
    fn = _sampled_fn(cal is not None, spec[0], spec[1], step is not None, spec[2])
    held = None if step is None else {k: jnp.asarray(step[k], jnp.float64 if k != "reason" else jnp.int32)
                                      for k in STEP_KEYS}
    return fn({k: jnp.asarray(v) for k, v in x.items()}, cal, draws, held)


def summarise(values: dict, feasible, reason) -> dict:
    """p5 / p50 / p95 / mean of each output over the feasible samples (JSON-ready), and the count
    of infeasible samples by reason."""
    ok = np.asarray(feasible)
    out = {}
    for k, v in values.items():
        v = np.broadcast_to(np.asarray(v, np.float64), ok.shape)  # (an output no input moves is one value)
        sel = v[ok & np.isfinite(v)]
        if sel.size == 0:
            out.update({f"{k}_{q}": None for q in QUANTILES}, **{f"{k}_mean": None})
            continue
        qs = np.quantile(sel, list(QUANTILES.values()))
        out.update({f"{k}_{q}": float(val) for q, val in zip(QUANTILES, qs)})
        out[f"{k}_mean"] = float(sel.mean())
    from kernels.reasons import REASONS
    r = np.asarray(reason)
    counts = {REASONS[int(c)]: int((r == c).sum()) for c in np.unique(r[~ok]) if int(c) != 0}
    if (~ok & (r == 0)).any():
        counts["missing_data"] = counts.get("missing_data", 0) + int((~ok & (r == 0)).sum())
    return out, counts


# ---------------------------------------------------------------------------------------------
# sensitivities


def sensitivity_inputs(x: dict, predicted_mfu: bool) -> list[str]:
    """The continuous inputs an elasticity is taken for: present, finite and non-zero."""
    names = [k for k in UNCERTAIN_INPUTS if k in x and np.isfinite(x[k]) and x[k] != 0]
    names += [k for k in ("hbm_bw_bytes_s", "intra_bw_bytes_s", "inter_bw_bytes_s") if predicted_mfu and k in x
              and np.isfinite(x[k]) and x[k] > 0]
    if predicted_mfu:
        names = [k for k in names if k != "mfu"] + ["mfu_scale"]
    return names


@functools.lru_cache(maxsize=16)
def _elasticity_fn(with_cal: bool, names: tuple[str, ...]):
    from kernels.footprint import footprint

    def log_out(s, x, cal):
        xs = dict(x)
        for j, k in enumerate(names):
            xs[k] = x.get(k, 1.0) * jnp.exp(s[j])
        out = footprint(xs, cal if with_cal else None)
        return {k: jnp.log(jnp.abs(out[k])) for k in SUMMARY_OUTPUTS}

    def elasticities(x, cal):
        s0 = jnp.zeros(len(names), jnp.result_type(float))
        return jax.jacfwd(log_out)(s0, x, cal)
    return jax.jit(elasticities)


def elasticities(x: dict, cal, names: list[str]) -> dict[str, dict[str, float]]:
    """d ln(output) / d ln(input) for every summary output and input of ``names``, by forward-mode
    differentiation through the chain (jax.jacfwd). An output that is zero or not finite gets None."""
    xa = {k: jnp.asarray(v, jnp.float64) for k, v in x.items()}
    jac = _elasticity_fn(cal is not None, tuple(names))(xa, cal)
    out = {}
    for k, row in jac.items():
        row = np.asarray(row, np.float64)
        out[k] = {n: (float(e) if np.isfinite(e) else None) for n, e in zip(names, row)}
    return out


def sobol(x: dict, cal, unc: Uncertainty, output: str = "total_tco2e") -> dict[str, dict[str, float]]:
    """First-order and total Sobol indices of ``output`` for each varying input: the pick-freeze
    design (kernels.uncertainty.pick_freeze) of 2 × ``samples`` base draws through the chain, then
    SALib's estimator (Saltelli et al. 2010, Jansen 1999) with bootstrap confidence intervals. At
    most ``SOBOL_BASE`` base draws (their standard error is then ~0.02; the confidence intervals
    say so), as the estimator's bootstrap costs more than the chain.
    Base samples with an infeasible row are left out whole (the design needs every row)."""
    from SALib.analyze import sobol as salib_sobol

    names = list(_spec_for(unc, x)[0])
    d = len(names)
    if not d:
        return {}
    n = min(unc.samples, SOBOL_BASE)
    both = _spec_for(Uncertainty(2 * n, unc.seed + 1, unc.dists), x)
    d2 = draws_for(both)
    rows = ku.pick_freeze(d2[:n], d2[n:])
    values, feasible, _ = sample_point(x, cal, unc, rows)
    y = np.asarray(values[output], np.float64)
    ok = np.asarray(feasible) & np.isfinite(y)
    blocks = ok.reshape(n, d + 2).all(axis=1)
    y = y.reshape(n, d + 2)[blocks].reshape(-1)
    if blocks.sum() < 2 or np.var(y) == 0:
        return {n: {"S1": None, "S1_conf": None, "ST": None, "ST_conf": None} for n in names}
    problem = {"num_vars": d, "names": names, "bounds": [[0.0, 1.0]] * d}
    res = salib_sobol.analyze(problem, y, calc_second_order=False, num_resamples=100, seed=unc.seed,
                              print_to_console=False)
    return {n: {"S1": float(res["S1"][i]), "S1_conf": float(res["S1_conf"][i]), "ST": float(res["ST"][i]),
                "ST_conf": float(res["ST_conf"][i])} for i, n in enumerate(names)}
