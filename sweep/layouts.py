"""The layout optimiser and `carbon-sweep layout`: every valid parallelism layout for one design and
device count, evaluated as one vectorised axis by the jitted footprint chain, best first.

Layout keys given in the spec's [cluster] section restrict the enumeration (e.g. ``recompute =
"full"`` searches only full-recompute layouts); none given means all are searched.
"""

from __future__ import annotations

import functools
import json
import time

import jax
import numpy as np

from kernels.footprint import footprint
from kernels.layout import enumerate_layouts
from kernels.reasons import REASONS

from .calibration import calibration_for
from .inputs import point_inputs
from .spec import LAYOUT_KEYS, OBJECTIVE_OUTPUT, RECOMPUTE_CODE, load_estimate

RECOMPUTE_NAME = {v: k for k, v in RECOMPUTE_CODE.items()}
FIGURES = ("mfu", "hfu", "step_time_s", "train_days", "memory_gb", "energy_mwh", "total_tco2e")


@functools.cache
def _jitted():
    return jax.jit(footprint)


def candidates(v: dict, x: dict) -> dict[str, np.ndarray]:
    """Enumerated layouts for the design, restricted to the layout keys the spec gives."""
    cand = enumerate_layouts(int(v["devices"]), int(v["layers"]), int(v["heads"]), int(v["kv_heads"]),
                             int(v["experts"]), int(v["global_batch"]), int(x["devices_per_node"]))
    cand.pop("devices", None)
    keep = np.ones(len(cand["tp"]), bool)
    for k in LAYOUT_KEYS:
        if v.get(k) is not None:
            want = RECOMPUTE_CODE[v[k]] if k == "recompute" else int(v[k])
            keep &= cand[k] == want
    return {k: a[keep] for k, a in cand.items()}


def evaluate_layouts(v: dict, db) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(layouts, outputs): the chain over every candidate layout, as 1-D arrays."""
    x = point_inputs(v, db)
    cand = candidates(v, x)
    xx = {k: np.asarray(val, np.float64) for k, val in x.items()}
    xx["mfu"] = np.asarray(np.nan)  # the layout model predicts it
    for k, a in cand.items():
        xx[k] = a.astype(np.float64)
    cal = {k: np.asarray(c) for k, c in calibration_for(db, v["hardware"]).items()}
    if len(cand["tp"]) == 0:
        return cand, {}
    n = len(cand["tp"])
    out = {k: np.broadcast_to(np.asarray(a), (n,)) for k, a in _jitted()(xx, cal).items()}
    return cand, out


def best_layouts(v: dict, db, *, objective: str = "co2e", top: int = 10) -> dict:
    """The best ``top`` layouts by objective, with the counts of evaluated and infeasible ones."""
    from .evaluate import to_python

    t0 = time.perf_counter()
    cand, out = evaluate_layouts(v, db)
    n = len(cand["tp"])
    if n == 0:
        return {"evaluated": 0, "infeasible": {}, "layouts": [], "best_outputs": None, "elapsed_s": 0.0}
    key = OBJECTIVE_OUTPUT[objective]
    reason = out["reason"]
    score = np.where((reason == 0) & np.isfinite(out[key]), out[key], np.inf)
    order = np.lexsort((out["train_days"], score))  # ties broken by time
    order = order[np.isfinite(score[order])][:top]
    layouts = []
    for i in order:
        row = {k: int(cand[k][i]) for k in ("tp", "pp", "ep", "microbatch", "interleave")}
        row["dp"] = int(out["dp"][i])
        row["recompute"] = RECOMPUTE_NAME[int(cand["recompute"][i])]
        row["shard_optimizer"] = bool(cand["shard_optimizer"][i])
        row["sequence_parallel"] = bool(cand["sequence_parallel"][i])
        row.update({k: float(out[k][i]) for k in FIGURES})
        layouts.append(row)
    counts = np.bincount(reason.astype(np.int64), minlength=len(REASONS))
    best = to_python({k: a[order[0]] for k, a in out.items()}) if len(order) else None
    return {
        "evaluated": n,
        "feasible": int(counts[0]),
        "infeasible": {REASONS[c]: int(k) for c, k in enumerate(counts) if c and k},
        "objective": key,
        "layouts": layouts,
        "best_outputs": best,
        "elapsed_s": time.perf_counter() - t0,
    }


def layout_command(args, db):
    from .cli import CliError

    if args.top < 1:
        raise CliError("--top must be at least 1")
    v = load_estimate(args.spec, db)
    if v.get("params") is not None and v.get("layers") is None:
        from .spec import SpecError

        raise SpecError(args.spec, "model", "layers", "the layout model needs the architecture "
                        "(layers, d_model, heads, vocab, seq_len), not params only")
    if v.get("global_batch") is None:
        from .spec import SpecError

        raise SpecError(args.spec, "training", "global_batch", "is required to enumerate layouts")
    res = best_layouts(v, db, objective=args.objective, top=args.top)
    if args.json:
        doc = {k: res[k] for k in ("evaluated", "infeasible", "layouts")}
        doc["feasible"] = res.get("feasible", 0)
        doc["objective"] = res.get("objective")
        print(json.dumps(doc, indent=2))
        return
    print(f"carbon-sweep layout: {args.spec}: {v['devices']:,} × {v['hardware']}, objective {args.objective}")
    print(f"  {res['evaluated']:,} layouts evaluated, {res.get('feasible', 0):,} feasible, "
          f"{res['evaluated'] - res.get('feasible', 0):,} infeasible in {res['elapsed_s']:.2f} s")
    for reason, k in sorted(res["infeasible"].items(), key=lambda t: -t[1]):
        print(f"    {reason}: {k:,}")
    if not res["layouts"]:
        if "missing_data" in res["infeasible"]:
            print(f"  no feasible layout: {res['infeasible']['missing_data']:,} would be valid but a figure the layout "
                  f"model needs is not published for {v['hardware']} (estimate names it); give it in your own "
                  "hardware_db files (--db FOLDER; hardware_db/SCHEMA.md)")
        else:
            print("  no feasible layout: more devices, more memory per device, or full recompute may help")
        return
    head = (f"  {'#':>3} {'tp':>3} {'pp':>3} {'dp':>5} {'ep':>3} {'mb':>3} {'recompute':>9} {'il':>3} "
            f"{'sp':>3} {'zero1':>5} {'MFU':>6} {'step s':>8} {'days':>7} {'mem GB':>7} {'t CO2e':>9}")
    print(head)
    yes = lambda flag: "yes" if flag else "no"  # noqa: E731
    for i, r in enumerate(res["layouts"], 1):
        print(f"  {i:>3} {r['tp']:>3} {r['pp']:>3} {r['dp']:>5} {r['ep']:>3} {r['microbatch']:>3} "
              f"{r['recompute']:>9} {r['interleave']:>3} {yes(r['sequence_parallel']):>3} "
              f"{yes(r['shard_optimizer']):>5} {r['mfu']:>6.3f} {r['step_time_s']:>8.2f} "
              f"{r['train_days']:>7.1f} {r['memory_gb']:>7.1f} {r['total_tco2e']:>9.1f}")
    print("  mb: micro-batch (sequences); il: virtual pipeline stages per device (interleaved 1F1B); "
          "sp: sequence parallelism; zero1: optimizer states sharded over data parallel")
