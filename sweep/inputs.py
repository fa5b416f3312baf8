"""From resolved spec values and the database to the kernels' input arrays.

Hardware and site figures are gathered into per-id tables (one row per hardware id or region), so a
grid with a ``hardware`` or ``region`` dimension indexes them; the embodied carbon of a device and a
host is computed here, per id, by the named method, with the kernels' own formulas.
"""

from __future__ import annotations

import math

import numpy as np

import hardware_db
from kernels import embodied, energy
from kernels.footprint import SERVING_CONSTANT_INPUTS

from .calibration import serving_constants

NAN = math.nan


def _num(x):
    return NAN if x is None or x == "" else float(x)


def device_embodied_kgco2e(db, hw_id: str, method: str) -> float:
    """Embodied kg CO2e of one accelerator by method (LLMCarbon §6; ACT; vendor PCF)."""
    row = db.accelerator(hw_id)
    if method == "vendor_pcf":
        return row["pcf_kgco2e"]
    area_cm2 = row["die_area_mm2"] / 100.0
    cpa, yld = db.process_cpa(row["process_node"], method) if row["process_node"] else (NAN, NAN)
    dies = embodied.logic_kgco2e(area_cm2, cpa, yld)
    if method == "llmcarbon":  # die-only, as LLMCarbon's table
        return float(dies)
    hbm = embodied.memory_kgco2e(row["hbm_gb"], db.memory_kg_per_gb("hbm", method))
    return float(dies + hbm)


def host_embodied_kgco2e(db, host_id: str, method: str) -> float:
    """Embodied kg CO2e of one host (CPUs, DRAM, SSD, the rest); vendor_pcf hosts use ACT.

    Parts with no figure in the database count 0 (stated in the README); supply them in a user file.
    """
    if not host_id:  # a device with no host server in the data: only the accelerators are counted
        return 0.0
    h = db.hosts[host_id]
    m = "act" if method == "vendor_pcf" else method
    cpa, yld = db.process_cpa(h["cpu_process_node"], m) if h["cpu_process_node"] else (NAN, NAN)
    cpus = 0.0 if math.isnan(_num(h["cpus"])) else h["cpus"]
    cpu = cpus * embodied.logic_kgco2e(h["cpu_die_area_mm2"] / 100.0, cpa, yld) if cpus else 0.0
    parts = [
        cpu,
        embodied.memory_kgco2e(h["dram_gb"], db.memory_kg_per_gb("dram", m)),
        embodied.memory_kgco2e(h["ssd_gb"], db.memory_kg_per_gb("ssd", m)),
        h["other_kgco2e"],
    ]
    # Unknown parts (empty cells) count 0, as in host_power: the docs say so; users can supply them.
    return float(sum(0.0 if math.isnan(p) else float(p) for p in parts))


def host_power(db, host_id: str) -> float:
    """Power of one host without accelerators (W): CPUs + DRAM + network + other; unknown parts count 0."""
    if not host_id:
        return 0.0
    h = db.hosts[host_id]
    z = lambda x: 0.0 if math.isnan(_num(x)) else float(x)  # noqa: E731
    return float(energy.host_power_w(z(h["cpus"]), z(h["cpu_tdp_w"]), z(h["dram_w"]), z(h["network_w"]),
                                     z(h["other_w"])))


def material_kg_per_device(db, hw_id: str) -> float:
    """Mass per device for material_kg: the composition's measured total if shipped, else module mass."""
    comp = db.compositions.get(hw_id)
    if comp and "device" in comp and "total_measured_kg" in comp["device"]:
        return float(comp["device"]["total_measured_kg"])
    return db.accelerator(hw_id)["mass_kg"]


def hardware_row(db, hw_id: str, precision: str, method: str, host: str | None = None) -> dict[str, float]:
    """Every hardware input of the chain for one accelerator id (SI units)."""
    si = db.accelerator_si(hw_id, precision)
    host_id = host or db.accelerator(hw_id)["host"]
    idle = si["idle_w"]
    return {
        **{k: si[k] for k in ("peak_flops", "hbm_bytes", "hbm_bw_bytes_s", "intra_bw_bytes_s",
                              "inter_bw_bytes_s", "devices_per_node", "tdp_w")},
        "idle_w": 0.0 if math.isnan(idle) else idle,
        "host_power_w": host_power(db, host_id),
        "device_embodied_kgco2e": device_embodied_kgco2e(db, hw_id, method),
        "host_embodied_kgco2e": host_embodied_kgco2e(db, host_id, method),
        "material_kg_per_device": material_kg_per_device(db, hw_id),
        "bytes_per_value": float(hardware_db.BYTES_PER_VALUE[precision]),
        "peak_bf16_flops": db.peak_tflops(hw_id, "bf16") * 1e12,  # the 16-bit work of an FP8 run
        "ssd_kgco2e_per_gb": _zero_if_nan(db.memory_kg_per_gb("ssd", "act" if method == "vendor_pcf" else method)),
        # the serving model's constants, for the life cycle's served tokens (kernels.lifecycle)
        **{"serve_" + k: v for k, v in serving_constants(db, hw_id).items() if "serve_" + k in SERVING_CONSTANT_INPUTS},
    }


def _zero_if_nan(v):
    return 0.0 if v is None or math.isnan(v) else float(v)


def site_row(db, v: dict) -> dict[str, float]:
    """Carbon intensity, PUE and WUE: explicit spec values win over the region's."""
    region = db.region(v["region"]) if v.get("region") else {}
    pue_default = db.default("pue")
    ci = v.get("carbon_intensity")
    if ci is None and v.get("region"):  # a user's hourly profile sets its region's annual figure (sweep.when)
        from .when import annual_level

        ci = annual_level(db, v["region"])
    pue = v.get("pue")
    wue = v.get("wue")
    return {
        "carbon_intensity_kg_per_kwh": _num(ci if ci is not None else region.get("carbon_intensity_kg_per_kwh")),
        "pue": _num(pue if pue is not None
                    else (region.get("pue") if not math.isnan(_num(region.get("pue"))) else pue_default)),
        "wue_l_per_kwh": _num(wue if wue is not None else region.get("wue_l_per_kwh")),
    }


def _flag(value) -> float:
    """A spec value the kernels read as a number, NaN when not given (the kernel's default then)."""
    return math.nan if value is None else float(value)


def design_row(v: dict) -> dict[str, float]:
    """Model, training, cluster and lifecycle inputs from resolved spec values (NaN = not given)."""
    from .spec import CP_COMM_CODE, LAYOUT_DEFAULTS, RECOMPUTE_CODE

    g = lambda k: _num(v.get(k))  # noqa: E731
    lay = {k: (v[k] if v.get(k) is not None else LAYOUT_DEFAULTS[k]) for k in LAYOUT_DEFAULTS}
    if v.get("shard_optimizer") is None and v.get("zero_stage") is not None:
        lay["shard_optimizer"] = v["zero_stage"] >= 1
    return {
        "layers": g("layers"), "d_model": g("d_model"), "heads": g("heads"), "kv_heads": g("kv_heads"),
        "head_dim": g("head_dim"), "d_ff": g("d_ff"),
        "ffn_matrices": 3.0 if v.get("ffn") == "swiglu" else 2.0,
        "vocab": g("vocab"), "seq_len": g("seq_len"),
        "tied_embeddings": float(bool(v.get("tied_embeddings"))), "bias": float(bool(v.get("bias"))),
        "experts": g("experts"), "top_k": g("top_k"), "moe_every": g("moe_every"),
        "first_dense_layers": g("first_dense_layers"), "shared_experts": g("shared_experts"),
        "expert_d_ff": g("expert_d_ff"), "params": g("params"), "active_params": g("active_params"),
        "tokens": g("tokens"), "global_batch": g("global_batch"), "flops": g("flops"),
        "devices": g("devices"), "mfu": g("mfu"), "avg_power_w": g("avg_power_w"),
        "tp": float(lay["tp"]), "pp": float(lay["pp"]), "ep": float(lay["ep"]),
        "microbatch": float(lay["microbatch"]), "recompute": float(RECOMPUTE_CODE[lay["recompute"]]),
        "interleave": float(lay["interleave"]), "shard_optimizer": float(lay["shard_optimizer"]),
        "sequence_parallel": float(lay["sequence_parallel"]),
        "cp": float(lay["cp"]),
        **{k: _flag(v.get(k)) for k in ("etp", "zero_stage", "overlap", "flash_attention", "moe_imbalance")},
        **{k: float(bool(v.get(k))) for k in ("ep_overlap", "moe_host_sync", "ep_dedup", "gemm_per_expert",
                                               "cuda_graphs")},  # the layout switches, off unless given
        "cp_allgather": CP_COMM_CODE.get(v.get("cp_comm_type"), 0.0),
        "dropout": float(v.get("dropout", True) is not False),
        "sliding_window": float(v.get("sliding_window") or 0.0),
        "window_layers": float(v["window_layers"]) if v.get("window_layers") is not None else 1.0,
        "goodput": float(v["goodput"]) if v.get("goodput") is not None else 1.0,
        "lifespan_years": g("lifespan_years"),
        "served_tokens_per_day": g("served_tokens_per_day"), "serving_days": g("serving_days"),
        "serve_batch": g("serve_batch"), "experiment_factor": g("experiment_factor"), "storage_tb": g("storage_tb"),
        "capex_usd_per_device": g("capex_usd_per_device"), "energy_usd_per_kwh": g("energy_usd_per_kwh"),
    }


def point_inputs(v: dict, db) -> dict[str, float]:
    """All chain inputs for one resolved spec (floats; the caller makes arrays)."""
    x = design_row(v)
    x.update(hardware_row(db, v["hardware"], v["precision"], v["embodied_method"], v.get("host")))
    x.update(site_row(db, v))
    x["price_usd_per_device_hour"] = price_per_device_hour(db, v)
    pu = v.get("power_util")
    x["power_util"] = float(pu) if pu is not None else float(db.default("power_util"))
    return x


def price_per_device_hour(db, v: dict) -> float:
    """USD per device-hour: the spec's price, else its offer's (prices.csv: instance price / devices)."""
    if v.get("price_usd_per_device_hour") is not None:
        return float(v["price_usd_per_device_hour"])
    if v.get("offer"):
        row = db.tables["prices.csv"][v["offer"]]
        return row["usd_per_instance_hour"] / row["devices_per_instance"]
    return NAN


def as_arrays(x: dict, dtype=np.float64) -> dict[str, np.ndarray]:
    return {k: np.asarray(val, dtype=dtype) for k, val in x.items()}
