"""Validation rows of the layout model (kernels/layout.py) against published training runs.

The runs are in hardware_db/throughput_runs.toml, the calibrated constants in
hardware_db/calibration.toml. Two quantities are compared:

- ``iteration_time_s`` (Korthikanti et al. 2022 Table 5): the predicted ``step_time_s`` of the
  published layout, recompute mode and sequence parallelism.
- ``tflops_per_device`` (Narayanan et al. 2021 Tables 1-2): those papers count the recomputed
  forward pass (their eq. 3, 96·B·s·l·h²·(1 + s/6h + V/16lh) = 4 passes), i.e. hardware FLOPs under
  full activation recomputation, which Megatron-LM used for these runs. We compare like with like:
  the predicted value is HFU × peak of the same layout with ``recompute = 2`` (full), where HFU uses
  kernels.flops (6·N_mm + 12·l·s·d_attn model FLOPs plus the recomputed forward 2·N_mm + 4·l·s·d_attn).
  Eq. 3 and our count differ only in the logits term (V/16lh vs the tied table counted in N_mm),
  under 0.5 % for these models. Where the paper does not publish the micro-batch size or the
  interleaving, the run lists candidates and the model's fastest feasible candidate is used (the
  authors report tuned configurations); the chosen values are returned in the row.
"""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path

import numpy as np

A100_80GB_FALLBACK = {
    # Used only when the hardware database has no row for the id (NVIDIA A100 datasheet 2021:
    # 312 TFLOP/s fp16/bf16 dense, 80 GB HBM2e at 2039 GB/s, NVLink3 600 GB/s bidirectional;
    # DGX A100: 8 GPUs per node, one 200 Gb/s HDR InfiniBand NIC per GPU).
    "peak_flops": 312e12,
    "hbm_bytes": 80e9,
    "hbm_bw_bytes_s": 2039e9,
    "intra_bw_bytes_s": 300e9,
    "inter_bw_bytes_s": 25e9,
    "devices_per_node": 8.0,
}


def _hardware_dir() -> Path:
    import hardware_db

    return Path(hardware_db.__file__).parent


def _read(db, name: str) -> dict:
    docs = getattr(db, "docs", None) or {}
    if name in docs:
        return docs[name]
    with open(_hardware_dir() / name, "rb") as fh:
        return tomllib.load(fh)


def calibration(db, hw_id: str) -> dict[str, float]:
    """Calibrated constants for a device: the defaults of calibration.toml overlaid by the first
    ``[class.X]`` whose ``ids`` (prefixes of accelerator ids) match ``hw_id``."""
    if db is not None and hasattr(db, "docs"):
        from sweep.calibration import calibration_for

        return calibration_for(db, hw_id)
    doc = _read(db, "calibration.toml")
    cal = {k: float(v["value"]) for k, v in doc.items() if isinstance(v, dict) and "value" in v}
    for _, cls in (doc.get("class") or {}).items():
        if any(hw_id.startswith(p) for p in cls.get("ids", [])):
            cal.update({k: float(v["value"]) for k, v in cls.items() if isinstance(v, dict) and "value" in v})
            break
    return cal


def hardware(db, hw_id: str, precision: str) -> dict[str, float]:
    """The kernel's hw mapping from the database, falling back to the A100 80 GB datasheet."""
    keys = tuple(A100_80GB_FALLBACK)
    try:
        si = db.accelerator_si(hw_id, precision)
        out = {k: float(si[k]) for k in keys}
        if all(np.isfinite(v) and v > 0 for v in out.values()):
            return out
    except Exception:  # noqa: BLE001  database without the row (or without the table) yet
        pass
    if hw_id.startswith("a100") and "80" in hw_id:
        return dict(A100_80GB_FALLBACK)
    raise KeyError(f"no usable hardware figures for '{hw_id}'")


def gpt_design(layers, d_model, heads, d_ff, vocab, seq_len, global_batch, bytes_per_value=2.0) -> dict:
    """Design mapping of a Megatron GPT (gelu, biases, tied embeddings, MHA) for kernels.layout.step."""
    from kernels.architecture import param_counts

    head_dim = d_model / heads
    params, active = param_counts(
        layers, d_model, heads, heads, head_dim, d_ff, 2.0, vocab, True, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, bias=True
    )
    return {
        "layers": float(layers), "d_model": float(d_model), "heads": float(heads), "kv_heads": float(heads),
        "head_dim": float(head_dim), "d_ff": float(d_ff), "ffn_matrices": 2.0, "vocab": float(vocab),
        "seq_len": float(seq_len), "tied_embeddings": 1.0, "experts": 1.0, "top_k": 1.0, "moe_layers": 0.0,
        "expert_d_ff": 0.0, "shared_experts": 0.0, "params": float(params), "active_params": float(active),
        "global_batch": float(global_batch), "bytes_per_value": float(bytes_per_value),
    }


def narayanan_flops_per_iteration(design: dict) -> float:
    """Narayanan et al. 2021 eq. 3, the FLOPs they count per iteration (with full recomputation):
    96·B·s·l·h²·(1 + s/(6h) + V/(16·l·h))."""
    B, s, L, h, V = (design[k] for k in ("global_batch", "seq_len", "layers", "d_model", "vocab"))
    return 96.0 * B * s * L * h**2 * (1.0 + s / (6.0 * h) + V / (16.0 * L * h))


def _layout_grid(lay: dict) -> dict[str, np.ndarray]:
    """Cartesian product of list-valued layout fields, as 1-D arrays."""
    keys = ["devices", "tp", "pp", "microbatch", "interleave", "recompute", "sequence_parallel", "shard_optimizer"]
    lists = [lay[k] if isinstance(lay.get(k), list) else [lay.get(k, 1 if k in ("interleave",) else 0)] for k in keys]
    combos = np.array(list(itertools.product(*lists)), dtype=np.float64)
    out = {k: combos[:, i] for i, k in enumerate(keys)}
    out["ep"] = np.ones(len(combos))
    return out


def evaluate_run(run: dict, defaults: dict, db, cal_override: dict | None = None) -> dict:
    """Predicted value of one published run: a validation row plus the chosen layout."""
    from kernels.layout import step
    from kernels.selection import choose

    hw_id = run.get("hardware", defaults.get("hardware"))
    precision = run.get("precision", defaults.get("precision", "bf16"))
    model = run["model"]
    lay = dict(run["layout"])
    design = gpt_design(
        model["layers"], model["d_model"], model["heads"], model["d_ff"],
        model.get("vocab", defaults.get("vocab", 51200)), model.get("seq_len", defaults.get("seq_len", 2048)),
        lay["global_batch"],
    )
    hw = hardware(db, hw_id, precision)
    cal = calibration(db, hw_id)
    if cal_override:
        cal.update(cal_override)
    grid = _layout_grid(lay)
    res = step(design, hw, grid, cal)
    ok = np.asarray(res["reason"]) == 0
    i = int(choose(np.asarray(res["reason"]), np.asarray(res["step_time_s"]))[0])  # the fastest feasible
    if run["quantity"] == "iteration_time_s":
        predicted = float(res["step_time_s"][i])
    else:
        predicted = narayanan_flops_per_iteration(design) / (float(res["step_time_s"][i]) * grid["devices"][i]) / 1e12
    published = float(run["published"])
    return {
        "case": run["id"],
        "quantity": run["quantity"],
        "unit": run["unit"],
        "predicted": predicted,
        "published": published,
        "error_pct": 100.0 * (predicted - published) / published,
        "source": run["source"],
        "feasible": bool(ok[i]),
        "microbatch": int(grid["microbatch"][i]),
        "interleave": int(grid["interleave"][i]),
        "mfu": float(res["mfu"][i]),
        "memory_gb": float(res["memory_bytes"][i]) / 1e9,
    }


def layout_validation_rows(db, cal_override: dict | None = None) -> list[dict]:
    """One row per published run in throughput_runs.toml: {case, quantity, unit, predicted, published,
    error_pct (100·(pred − pub)/pub), source} (plus the chosen micro-batch/interleave, MFU, memory)."""
    doc = _read(db, "throughput_runs.toml")
    defaults = doc.get("defaults", {})
    return [evaluate_run(run, defaults, db, cal_override) for run in doc["run"]]


MODERN = "throughput_runs_modern.toml"  # the modern calibration set
HELDOUT = "throughput_runs_heldout.toml"  # runs no constant is fitted on (a later release, a published A/B)
HELDOUT_FSDP = "throughput_runs_heldout_fsdp.toml"  # nor on these: another framework (MosaicML llm-foundry, FSDP)
# the held-out files as validate reports them: (file, set name, the summary line's opening words)
HELDOUT_SETS = ((HELDOUT, "heldout", f"held-out runs ({HELDOUT}: a later release, a published A/B"),
                (HELDOUT_FSDP, "heldout_fsdp", f"held-out FSDP runs ({HELDOUT_FSDP}: MosaicML llm-foundry, H100 "
                                               "BF16, 2023"))


def modern_validation_rows(db, file: str = MODERN, set_name: str = "modern") -> list[dict]:
    """One row per run of a runs file (the modern calibration set, or ``HELDOUT``) with a database
    figure for its hardware: tokens/s per device (or the published MFU) predicted by the layout model
    with the packaged constants, beside the published value."""
    return runs_file_rows(db, [(file, set_name)])


def runs_file_rows(db, sets: list[tuple[str, str]]) -> list[dict]:
    """The rows of ``modern_validation_rows`` for several (file, set name) pairs, predicted by one
    kernel call over all their runs (one compilation, not one per file)."""
    from .calibrate import load_runs, packaged_predictions

    runs, names = [], []
    for file, set_name in sets:
        loaded, _ = load_runs(_read(db, file), db, file)
        runs += loaded
        names += [set_name] * len(loaded)
    rows = []
    for r, set_name in zip(packaged_predictions(db, runs), names):
        unit = "1" if r["quantity"] == "mfu" else "token/s per device"
        rows.append({"case": f"{r['id']} ({r['kind']})", "quantity": r["quantity"], "unit": unit,
                     "predicted": r["predicted"], "published": r["published"], "error_pct": r["error_pct"],
                     "source": r["source"], "set": set_name, "kind": r["kind"]})
    return rows


def modern_loo_note(db) -> str:
    """The leave-one-out errors the packaged constants were fitted with, as the last ``carbon-sweep
    calibrate`` of throughput_runs_modern.toml wrote them into calibration.toml ('' if none)."""
    classes = db.docs.get("calibration.toml", {}).get("class", {})
    for table in classes.values():
        for entry in table.values():
            notes = entry.get("notes", "") if isinstance(entry, dict) else ""
            if "leave-one-out" in notes and "throughput_runs_modern" in notes:
                return notes[notes.index("leave-one-out"):]
    return ""

