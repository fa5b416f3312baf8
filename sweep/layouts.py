"""The layout optimiser behind `carbon-sweep layout` and `estimate`: every valid parallelism layout for one design and
device count, evaluated as one vectorised axis by the jitted footprint chain, best first.

Layout keys given in the spec's [cluster] section restrict the enumeration (e.g. ``recompute =
"full"`` searches only full-recompute layouts); none given means all are searched.
"""

from __future__ import annotations

import time

import numpy as np

from kernels.layout import enumerate_layouts
from kernels.reasons import REASONS
from kernels.selection import no_layout_reason, ranking

from .calibration import calibration_for
from .compiled import footprint_fn
from .inputs import point_inputs
from .results import to_python
from .spec import LAYOUT_KEYS, OBJECTIVE_OUTPUT, RECOMPUTE_CODE, SpecError

RECOMPUTE_NAME = {v: k for k, v in RECOMPUTE_CODE.items()}
FIGURES = ("mfu", "hfu", "step_time_s", "train_days", "memory_gb", "energy_mwh", "total_tco2e")


def candidates(v: dict, x: dict) -> dict[str, np.ndarray]:
    """Enumerated layouts for the design, restricted to the layout keys the spec gives: any key
    given fixes that key, the optimiser picks the rest. The enumeration is the sweep's best-layout
    grid's (kernels.layout.enumerate_layouts), so estimate, layout and run choose among the same
    layouts; context parallelism, a ZeRO stage other than 0/1 and expert tensor parallelism are
    searched at the values the spec gives."""
    extended = {}
    if v.get("cp") is not None:
        extended.update(seq_len=int(v["seq_len"]), context_parallel=(int(v["cp"]),))
    if v.get("zero_stage") is not None:
        extended["zero_stages"] = (int(v["zero_stage"]),)
    if v.get("etp") is not None:
        extended["expert_tp"] = True
    cand = enumerate_layouts(int(v["devices"]), int(v["layers"]), int(v["heads"]), int(v["kv_heads"]),
                             int(v["experts"]), int(v["global_batch"]), int(x["devices_per_node"]), **extended)
    cand.pop("devices", None)
    n = len(cand["tp"])
    cand.setdefault("cp", np.full(n, int(v.get("cp") or 1)))
    cand.setdefault("etp", cand["tp"].copy())
    cand.setdefault("zero_stage", cand["shard_optimizer"].copy())
    keep = np.ones(n, bool)
    for k in LAYOUT_KEYS:
        if v.get(k) is not None:
            want = RECOMPUTE_CODE[v[k]] if k == "recompute" else int(v[k])
            keep &= cand[k] == want
    if not keep.any():
        return given_layout(x, cand)
    return {k: a[keep] for k, a in cand.items()}


def given_layout(x: dict, like: dict) -> dict[str, np.ndarray]:
    """The spec's own layout (its keys, the defaults for the rest) as the only candidate: for given
    keys that no enumerated layout has (pp above the layers, tp not dividing the heads, tp beyond
    two nodes...), so the chain names the rule they break, or runs them if they break none."""
    one = {k: x[k] for k in ("tp", "pp", "ep", "microbatch", "recompute", "interleave", "shard_optimizer",
                             "sequence_parallel", "cp")}
    one["etp"] = x["etp"] if np.isfinite(x["etp"]) else x["tp"]
    one["zero_stage"] = x["zero_stage"] if np.isfinite(x["zero_stage"]) else x["shard_optimizer"]
    return {k: np.array([int(one[k])], like[k].dtype) for k in like}


def evaluate_layouts(v: dict, db) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(layouts, outputs): the chain over every candidate layout, as 1-D arrays."""
    if v.get("calibration"):
        db = db.with_calibration(v["calibration"])
    x = point_inputs(v, db)
    cand = candidates(v, x)
    xx = {k: np.asarray(val, np.float64) for k, val in x.items()}
    xx["mfu"] = np.asarray(np.nan)  # the layout model predicts it
    for k, a in cand.items():
        xx[k] = a.astype(np.float64)
    cal = {k: np.asarray(c) for k, c in calibration_for(db, v["hardware"]).items()}
    n = len(cand["tp"])
    out = {k: np.broadcast_to(np.asarray(a), (n,)) for k, a in footprint_fn()(xx, cal).items()}
    return cand, out


def best_layouts(v: dict, db, *, objective: str = "co2e", top: int = 10) -> dict:
    """The best ``top`` layouts by objective, with the counts of evaluated and infeasible ones."""
    t0 = time.perf_counter()
    cand, out = evaluate_layouts(v, db)
    n = len(cand["tp"])  # at least the given layout (candidates)
    key = OBJECTIVE_OUTPUT[objective]
    reason = out["reason"]
    order = ranking(reason, out[key], tiebreak=out["train_days"])[:top]  # ties broken by time
    layouts = []
    for i in order:
        row = {k: int(cand[k][i]) for k in ("tp", "pp", "cp", "ep", "etp", "microbatch", "interleave", "zero_stage")}
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
        "reason": 0 if len(order) else int(no_layout_reason(reason)),  # (with none feasible: the run's)
        "elapsed_s": time.perf_counter() - t0,
    }


def check_layout_spec(v: dict, file) -> None:
    """What the layout optimiser needs of a spec beyond `estimate`: the architecture and the batch."""
    if v.get("params") is not None and v.get("layers") is None:
        raise SpecError(file, "model", "layers", "the layout model needs the architecture "
                        "(layers, d_model, heads, vocab, seq_len), not params only")
    if v.get("global_batch") is None:
        raise SpecError(file, "training", "global_batch", "is required to enumerate layouts")
