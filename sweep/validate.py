"""`carbon-sweep validate`: predictions beside published figures, with the signed error of each.

Rows: {case, quantity, unit, predicted, published, error_pct, source}; error_pct = 100·(p − q)/q.
- LLMCarbon operational rows in LLMCarbon's own mode (6·active·tokens, given efficiency and average
  system power per device) against LLMCarbon's recomputed predictions, and in carbon-sweep's mode
  (FLOPs from the architecture where published, reported FLOPs otherwise) against the actual tCO2e.
- XLM embodied carbon (LLMCarbon method, 20.4 days of a 5-year life) against the published 0.66 t.
- From FLOPs to Footprints GPU counts (exact).
- Layout-model rows (iteration time, TFLOP/s per GPU) from sweep.validate_layout, when present, and
  the modern set (tokens/s per GPU or MFU of H100/B200/GB200-era runs, dense and MoE).
- Serving rows (sweep.serving): GPU energy per output token against the ML.ENERGY leaderboard's
  measurements (hardware_db/serving_runs.toml; H100 and B200, dense and MoE).
"""

from __future__ import annotations

import math

import numpy as np

import hardware_db
from kernels import embodied, materials

from .estimate import evaluate
from .inputs import host_embodied_kgco2e, device_embodied_kgco2e


def _row(case, quantity, unit, predicted, published, source):
    predicted, published = float(predicted), float(published)
    return {
        "case": case,
        "quantity": quantity,
        "unit": unit,
        "predicted": predicted,
        "published": published,
        "error_pct": 100.0 * (predicted - published) / published,
        "source": source,
    }


def _operational_values(run: dict, own: bool) -> dict:
    """Resolved spec values for one LLMCarbon operational row."""
    v = {
        "hardware": run["hardware"], "precision": run["precision"], "devices": run["devices"],
        "tokens": run["tokens"], "mfu": run["mfu"], "avg_power_w": run["avg_power_w"],
        "carbon_intensity": run["carbon_intensity"], "pue": run["pue"],
        "params": run["params"], "active_params": run["active_params"],
        "embodied_method": "llmcarbon", "lifespan_years": 5.0,
    }
    if own:
        if "model" in run:  # architecture published: count FLOPs from it
            v.update(params=None, active_params=None, **run["model"])
        elif "own_flops" in run:
            v["flops"] = run["own_flops"]
    return v


def operational_rows(db) -> list[dict]:
    runs = db.docs["reference_runs.toml"]["operational"]
    rows = []
    for run in runs.values():
        lc = evaluate(_operational_values(run, own=False), db)
        rows.append(_row(f"{run['case']} (LLMCarbon mode)", "operational_tco2e", "t CO2e",
                         lc["operational_tco2e"], run["llmcarbon_predicted_tco2e"],
                         "LLMCarbon's prediction recomputed from its code (Faiz et al. 2024)"))
    for run in runs.values():
        own = evaluate(_operational_values(run, own=True), db)
        rows.append(_row(f"{run['case']} (carbon-sweep mode)", "operational_tco2e", "t CO2e",
                         own["operational_tco2e"], run["published_tco2e"], run["source"]))
    return rows


def embodied_rows(db) -> list[dict]:
    rows = []
    for run in db.docs["reference_runs.toml"]["embodied"].values():
        method = run["embodied_method"]
        devices = run["devices"]
        nodes = math.ceil(devices / run["devices_per_node"])
        kg = devices * device_embodied_kgco2e(db, run["hardware"], method)
        kg += nodes * host_embodied_kgco2e(db, run["host"], method)
        pred = embodied.amortised_tco2e(kg, run["days"] * 24.0, run["lifespan_years"])
        rows.append(_row(f"{run['case']} embodied", "embodied_tco2e", "t CO2e", pred, run["published_tco2e"],
                         run["source"]))
    return rows


def gpu_rows(db) -> list[dict]:
    rows = []
    for case in db.docs["reference_runs.toml"]["gpus"]:
        peak = db.accelerator_si("a100-sxm4-40gb", "bf16")["peak_flops"]
        n = materials.gpus_consumed(case["flops"], peak, case["mfu"], case["lifespan_years"])
        rows.append(_row(case["case"], "gpus_consumed", "GPUs", np.asarray(n), case["published"], case["source"]))
    return rows


def layout_rows(db) -> list[dict]:
    try:
        from .validate_layout import HELDOUT_SETS, MODERN, layout_validation_rows, runs_file_rows
    except ImportError:
        return []
    sets = [(MODERN, "modern")] + [(f, name) for f, name, _ in HELDOUT_SETS if f in db.docs]
    return layout_validation_rows(db) + runs_file_rows(db, sets)


def serving_rows(db) -> list[dict]:
    """Serving rows: GPU energy per output token against the ML.ENERGY measurements (sweep.serving)."""
    from .serving import validation_rows as serving_validation_rows

    return serving_validation_rows(db)


def validation_rows(db=None) -> list[dict]:
    db = db or hardware_db.load()
    return operational_rows(db) + embodied_rows(db) + gpu_rows(db) + layout_rows(db) + serving_rows(db)


def run_validation(study, out=None, *, db=None, write=True):
    """A validation study: every reference row, predicted beside published, as a table over `case`."""
    import time
    from pathlib import Path

    import pandas as pd
    import xarray as xr

    from .results import SweepResult, versions, write_validation

    t0 = time.perf_counter()
    rows = validation_rows(db)
    df = pd.DataFrame(rows)
    ds = xr.Dataset.from_dataframe(df.set_index("case"))
    for k, unit in (("predicted", "as in unit"), ("published", "as in unit"), ("error_pct", "%")):
        ds[k].attrs.update({"units": unit, "long_name": k.replace("_", " ")})
    summary = {"n_points": len(df), "n_feasible": len(df), "n_chunks": 1,
               "max_abs_error_pct": {q: float(g["error_pct"].abs().max()) for q, g in df.groupby("quantity")}}
    doc = {"name": study.name, "kind": "validation", "spec": study.doc, "spec_hash": study.spec_hash(),
           "versions": versions(), **summary, "elapsed_s": time.perf_counter() - t0,
           "files": ["validation.csv", "validation.json", "validation.nc"]}
    result = SweepResult(None, ds, {}, df, doc)
    if write:
        result.out_dir = Path(out) if out is not None else Path("results") / study.name
        write_validation(result, rows, result.out_dir)
    return result
