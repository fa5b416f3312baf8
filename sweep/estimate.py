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
    "pue": "regions.csv or [site]", "hbm_bytes": "accelerators.csv hbm_gb", "hbm_bw_bytes_s": "accelerators.csv hbm_bw_gbs",
    "intra_bw_bytes_s": "accelerators.csv intra_node_bw_gbs", "inter_bw_bytes_s": "accelerators.csv inter_node_bw_gbs",
}
# the layout estimate reports: its fields, with the data-parallel degree after tp and pp, and the
# settings a search keeps at the spec's values (context and expert tensor parallelism, ZeRO stage)
LAYOUT_OUT = LAYOUT_FIELDS[:2] + ("dp",) + LAYOUT_FIELDS[2:] + ("cp", "etp", "zero_stage")


def estimate(spec, db=None):
    """Footprint of one run from a spec path or a {key: value} dict (``sweep.estimate``)."""
    if isinstance(spec, dict):
        return evaluate(spec, db)
    return evaluate(load_estimate(spec, db), db, file=spec)


def evaluate(values: dict, db=None, *, file="<spec>", objective="co2e") -> dict:
    """Footprint of one run. ``values``: spec key → value (resolved or not). Returns JSON-ready outputs.

    ``mfu`` given: time from it, no layout model. Otherwise the layout model: with the spec's layout
    when every layout key is given, else the best layout for ``objective`` among those that keep the
    keys the spec gives (a partial layout: ``tp = 8, pp = 16`` fixes those two, the optimiser picks
    the rest).
    """
    db = db or hardware_db.load()
    v = values if "layout_given" in values else resolve(file, values, db)
    if v.get("calibration"):
        db = db.with_calibration(v["calibration"])
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
    out.update(apply_estimate(v, out, db))  # a start time and a carbon-aware pause (sweep.when)
    return out


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
