"""`carbon-sweep estimate`: the footprint of one training run from a validated spec."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

import hardware_db
from kernels.design import loss_terms
from kernels.footprint import OUTPUTS
from kernels.materials import material_kg
from kernels.selection import LAYOUT_FIELDS

from .calibration import calibration_for
from .compiled import design_terms_fn, footprint_fn
from .inputs import as_arrays, point_inputs
from .layouts import best_layouts
from .results import to_python
from .spec import LAYOUT_DEFAULTS, load_estimate, resolve
from .when import apply_estimate

# published figures the total needs (hardware_db rows): a missing one makes total_tco2e unknown (missing_data);
# material mass, water and SSD figures feed other outputs only; the link bandwidths only the layout model
TOTAL_FIGURES = ("peak_flops", "tdp_w", "idle_w", "host_power_w", "device_embodied_kgco2e", "host_embodied_kgco2e",
                 "carbon_intensity_kg_per_kwh", "pue")
LAYOUT_FIGURES = ("hbm_bytes", "hbm_bw_bytes_s", "intra_bw_bytes_s", "inter_bw_bytes_s")
# where a user supplies each (hardware_db/SCHEMA.md; a --db folder's rows replace the packaged ones)
FIGURE_SOURCE = {
    "peak_flops": "accelerators.csv peak_<precision>_tflops", "tdp_w": "accelerators.csv tdp_w",
    "idle_w": "accelerators.csv idle_w", "host_power_w": "hosts.csv (the host's power figures)",
    "device_embodied_kgco2e": "accelerators.csv die_area_mm2 and process_node (pcf_kgco2e with vendor_pcf)",
    "host_embodied_kgco2e": "hosts.csv (the host's parts)", "carbon_intensity_kg_per_kwh": "regions.csv or [site]",
    "pue": "regions.csv or [site]", "hbm_bytes": "accelerators.csv hbm_usable_mib (else hbm_gb)",
    "hbm_bw_bytes_s": "accelerators.csv hbm_bw_gbs",
    "intra_bw_bytes_s": "accelerators.csv intra_node_bw_gbs", "inter_bw_bytes_s": "accelerators.csv inter_node_bw_gbs",
}
# the layout estimate reports: its fields, with the data-parallel degree after tp and pp, and the
# settings a search keeps at the spec's values (context and expert tensor parallelism, ZeRO stage)
LAYOUT_OUT = LAYOUT_FIELDS[:2] + ("dp",) + LAYOUT_FIELDS[2:] + ("cp", "etp", "zero_stage")


def estimate(spec, db=None, **kw):
    """Footprint of one run from a spec path or a {key: value} dict (``sweep.estimate``); keywords
    as ``evaluate``'s."""
    if isinstance(spec, dict):
        return evaluate(spec, db, **kw)
    return evaluate(load_estimate(spec, db), db, file=spec, **kw)


def evaluate(values: dict, db=None, *, file="<spec>", objective="co2e", sensitivity: bool = False,
             keep_samples: bool = False, samples: int | None = None, seed: int | None = None) -> dict:
    """Footprint of one run. ``values``: spec key → value (resolved or not). Returns JSON-ready outputs.

    ``mfu`` given: time from it, no layout model. Otherwise the layout model: with the spec's layout
    when every layout key is given, else the best layout for ``objective`` among those that keep the
    keys the spec gives (a partial layout: ``tp = 8, pp = 16`` fixes those two, the optimiser picks
    the rest).

    With an ``[uncertainty]`` section (``values["uncertainty"]``, parsed by sweep.uncertainty), every
    summary output also gets ``_p5``, ``_p50``, ``_p95`` and ``_mean`` over the samples, drawn through
    the same chain with the chosen layout held fixed (``samples``/``seed`` override the section's, and
    ``samples`` alone turns sampling on with the shipped defaults); ``keep_samples`` keeps the samples themselves
    under ``"_samples"`` (for figures; not JSON). ``sensitivity``: elasticities d ln(output) /
    d ln(input) under ``"sensitivity"`` (and Sobol indices of total_tco2e when there are samples).
    """
    db = db or hardware_db.load()
    v = values if "layout_given" in values else resolve(file, values, db)
    if v.get("calibration"):
        db = db.with_calibration(v["calibration"])
    unc = uncertainty_of(v, db, file, samples, seed)  # (a bad section fails here, before any work)
    x = point_inputs(v, db)
    layout = {}
    if v.get("mfu") is not None:
        out = to_python(footprint_fn()(as_arrays(x), None))
    elif v.get("layout_complete"):
        cal = db_calibration(db, v["hardware"])
        out = to_python(footprint_fn()(as_arrays(x), cal))
        layout = {k: (v[k] if v.get(k) is not None else LAYOUT_DEFAULTS[k]) for k in LAYOUT_DEFAULTS}
        layout["shard_optimizer"] = bool(x["shard_optimizer"])
        layout["etp"] = layout["etp"] or layout["tp"]
        layout["zero_stage"] = layout["zero_stage"] if layout["zero_stage"] is not None else int(x["shard_optimizer"])
    else:
        result = best_layouts(v, db, objective=objective, top=1)
        if result["layouts"]:
            out, layout = result["best_outputs"], result["layouts"][0]
        else:  # no layout fits: report the design with its most informative reason
            out = {k: None for k in OUTPUTS}
            out.update(design_only(x))  # what the design alone fixes holds whatever the layout
            out["reason"] = result["reason"]  # (kernels.selection.no_layout_reason, as the sweep's)
    for k in LAYOUT_OUT:
        if k == "dp":
            out["dp"] = int(out["dp"]) if out.get("dp") is not None else None
        elif k == "recompute":
            out[k] = layout.get(k) if layout else None
        elif k in ("sequence_parallel", "shard_optimizer"):
            out[k] = bool(layout[k]) if layout and layout.get(k) is not None else None
        else:
            out[k] = int(layout[k]) if layout and layout.get(k) is not None else None
    out.update(quality(v, x, out, db))
    out["materials"] = materials_breakdown(db, v["hardware"], out.get("gpus_consumed"))
    out["devices"] = int(v["devices"])
    out["hardware"] = v["hardware"]
    out["region"] = v.get("region")
    out["precision"] = v["precision"]
    out["embodied_method"] = v["embodied_method"]
    out["lifespan_years"] = v["lifespan_years"]
    out["goodput"] = x["goodput"] if v.get("mfu") is None or v.get("goodput") is not None else 1.0
    out["carbon_intensity_kg_per_kwh"] = x["carbon_intensity_kg_per_kwh"]
    out["pue"] = x["pue"]
    needed = TOTAL_FIGURES + (LAYOUT_FIGURES if v.get("mfu") is None else ())
    out["missing_figures"] = [FIGURE_SOURCE[k] for k in needed if not math.isfinite(float(x[k]))]
    when = apply_estimate(v, out, db)  # a start time and a carbon-aware pause (sweep.when)
    out.update(when)
    if (unc is not None or sensitivity) and (v.get("mfu") is not None or layout):
        xs, cal = held_layout_inputs(v, x, layout, db)
        if when.get("carbon_intensity_kg_per_kwh") is not None:  # the start's effective intensity, held fixed
            xs["carbon_intensity_kg_per_kwh"] = when["carbon_intensity_kg_per_kwh"]
        if unc is not None:
            out.update(sampled(xs, cal, unc, keep_samples, held_step(out) if cal is not None else None))
        if sensitivity:
            out["sensitivity"] = sensitivities(xs, cal, unc, predicted_mfu=v.get("mfu") is None)
    return out


def uncertainty_of(v: dict, db, file, samples=None, seed=None):
    """The spec's [uncertainty] section, validated, with the shipped defaults (None: a point estimate)."""
    from . import uncertainty as su

    section = v.get("uncertainty")
    if isinstance(section, su.Uncertainty):
        return section
    return su.parse(file, section, db, samples=samples, seed=seed, mfu_given=v.get("mfu") is not None,
                    moe=(v.get("experts") or 1) > 1)


def held_layout_inputs(v: dict, x: dict, layout: dict, db) -> tuple[dict, dict | None]:
    """The chain's inputs with the chosen layout written in (the samples and derivatives hold it
    fixed: a different draw does not re-optimise the layout), and the calibrated constants (None
    when the MFU is given)."""
    from .spec import RECOMPUTE_CODE

    if v.get("mfu") is not None:
        return dict(x), None
    xs = dict(x)
    for k in ("tp", "pp", "cp", "ep", "etp", "microbatch", "interleave", "zero_stage"):
        xs[k] = float(layout[k])
    xs["recompute"] = float(RECOMPUTE_CODE[layout["recompute"]])
    xs["shard_optimizer"] = float(bool(layout["shard_optimizer"]))
    xs["sequence_parallel"] = float(bool(layout["sequence_parallel"]))
    return xs, db_calibration(db, v["hardware"])


def held_step(out: dict) -> dict:
    """The layout model's outputs of the point estimate, as kernels.footprint reads them."""
    from . import uncertainty as su

    step = {k: out[k] for k in su.STEP_KEYS if k != "memory_bytes"}
    step["memory_bytes"] = out["memory_gb"] * 1e9
    return step


def sampled(x: dict, cal, unc, keep_samples: bool = False, step: dict | None = None) -> dict:
    """Quantiles and means of the summary outputs over the samples, and what was sampled."""
    from . import uncertainty as su

    values, feasible, reason = su.sample_point(x, cal, unc, step=step)
    summary, infeasible = su.summarise(values, feasible, reason)
    summary["uncertainty"] = {
        "samples": unc.samples, "seed": unc.seed, "feasible_samples": int(np.asarray(feasible).sum()),
        "infeasible_samples": infeasible,
        "inputs": [{"input": d.input, "dist": d.dist, "relative": d.relative,
                    "params": dict(zip(("rel",) if d.relative else su.PARAMS[d.dist],
                                       (_rel_width(d),) if d.relative else d.params)),
                    "source": d.source} for d in unc.dists],
    }
    if keep_samples:
        summary["_samples"] = {k: np.asarray(a) for k, a in values.items()} | {"_feasible": np.asarray(feasible)}
    return summary


def _rel_width(d) -> float:
    a, b, c = d.params
    return float(b if d.dist in ("normal", "lognormal") else (b - a) / 2 if d.dist == "uniform" else c - b)


def sensitivities(x: dict, cal, unc, *, predicted_mfu: bool) -> dict:
    """Elasticities of every summary output (inputs ranked by their effect on total_tco2e) and,
    with samples, the Sobol indices of total_tco2e."""
    from . import uncertainty as su

    names = su.sensitivity_inputs(x, predicted_mfu)
    el = su.elasticities(x, cal, names)
    names = [n for n in names if any(row[n] for row in el.values())]  # inputs that move some output
    total = el["total_tco2e"]
    ranked = sorted(names, key=lambda n: -abs(total[n] or 0.0))
    result = {"inputs": ranked, "elasticities": {k: {n: row[n] for n in ranked} for k, row in el.items()}}
    if unc is not None:
        result["sobol_total_tco2e"] = su.sobol(x, cal, unc)
    return result


def design_only(x: dict) -> dict:
    """Parameters and training FLOPs (``kernels.footprint.design_terms``): the design's, known even
    when no layout of it can run."""
    d = to_python(design_terms_fn()(as_arrays(x)))
    return {k: d[k] for k in ("params", "active_params", "train_flops")}


def db_calibration(db, hw_id: str) -> dict:
    """Calibrated layout-model constants for a device, as arrays (kernels.layout's ``cal``)."""
    return {k: np.asarray(val) for k, val in calibration_for(db, hw_id).items()}


def quality(v: dict, x: dict, out: dict, db) -> dict:
    """Predicted loss under the spec's scaling law (``kernels.design.loss_terms``, as the sweep's
    design stage), the law's id, and whether it extrapolates."""
    law = v.get("law") or "chinchilla"
    table = db.docs["scaling_laws.toml"][law]
    params, active = out.get("params"), out.get("active_params")
    if params is None:
        return {"loss": None, "law": law, "loss_in_range": None}
    loss, in_range = loss_terms(law, table, x, params, active)
    loss = float(loss)
    return {"loss": loss if math.isfinite(loss) else None, "law": law, "loss_in_range": bool(in_range)}


def materials_breakdown(db, hw_id: str, gpus) -> list[dict] | None:
    """Masses of the devices consumed by class (and by element when a per-element table is supplied)."""
    comp = db.compositions.get(hw_id)
    if not comp or gpus is None:
        return None
    rows = [{"name": c["name"], "kind": "class", "mass_kg": float(material_kg(gpus, c["mass_kg"])),
             "derived": bool(c.get("derived", False))} for c in comp.get("class", [])]
    table = comp.get("device", {}).get("elements_csv")
    if table:
        for folder in reversed(db.folders):
            path = Path(folder) / "compositions" / table
            if path.exists():
                with open(path, newline="") as fh:
                    for r in csv.DictReader(fh):
                        rows.append({"name": r["element"], "kind": "element",
                                     "mass_kg": float(material_kg(gpus, float(r["mass_g"]) / 1000.0)),
                                     "derived": False})
                break
    return rows
