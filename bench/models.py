"""Two independent re-implementations of the fixed-layout chain (MFU given), for benchmarks and tests.

Written from the equations in the kernels' docstrings (kernels/architecture.py, flops.py, energy.py,
embodied.py, materials.py, footprint.py), not by calling the kernels:

``footprint_python(point)``  plain Python floats and ``math``, one configuration at a time: the
                             "per-configuration loop" of the benchmark;
``footprint_numpy(x)``       NumPy over broadcast arrays, in the dtype of the inputs (float64 or
                             float32); the float64 NumPy reference of the tests.

Inputs and outputs have the names of ``kernels.footprint`` (INPUT_KEYS / OUTPUTS). NaN in an
optional input means "not given" (params, active_params, flops, avg_power_w). ``mfu`` must be given:
the layout model is not re-implemented, so the layout outputs (hfu, step_time_s, compute_s,
comm_exposed_s, bubble_s, memory_gb, dp) are NaN, as in the kernel's fixed-layout chain.

The equations, in the order they are evaluated:
    moe_layers  = max(floor((layers − first_dense_layers)/moe_every), 0) if experts > 1 else 0
    d_attn      = heads·head_dim
    attention   = 2·d_model·d_attn + 2·d_model·kv_heads·head_dim
    dense layer = attention + ffn_matrices·d_model·d_ff + 2·d_model
                  + [bias] (heads + 2·kv_heads)·head_dim + d_model + d_ff·(ffn_matrices − 1) + d_model + 2·d_model
    expert      = ffn_matrices·d_model·expert_d_ff + [bias] expert_d_ff·(ffn_matrices − 1) + d_model
    MoE layer   = attention + 2·d_model + d_model·experts + shared_experts·expert
                  + [bias] (heads + 2·kv_heads)·head_dim + 3·d_model
                  + experts·expert (total) | top_k·expert (active)
    outside     = vocab·d_model·(1 if tied else 2) + d_model
    params      = (layers − moe_layers)·dense + moe_layers·moe_total + outside   (or given)
    per token   = 6·(active − vocab·d_model·[untied]) + 12·layers·seq_len·d_attn, or 6·active if params given
    train_flops = per_token·tokens (or given)
    seconds     = train_flops / (devices·peak_flops·mfu) / goodput,  hours = seconds/3600  (goodput default 1)
    device W    = devices·avg_power_w                 if avg_power_w given
                  devices·(idle_w + (tdp_w − idle_w)·power_util)   otherwise
    host W      = 0                                   if avg_power_w given
                  ceil(devices/devices_per_node)·host_power_w·power_util   otherwise
    kWh         = W·hours/1000;   operational t = kWh·pue·carbon_intensity/1000
    embodied t  = count·kgco2e·hours/(lifespan_years·8760)/1000   (devices; nodes for hosts)
    gpus        = ceil(train_flops/(peak_flops·mfu·goodput)/(lifespan_years·31 536 000))   in float64
    material_kg = gpus·material_kg_per_device;  water_m3 = it_kWh·wue/1000
    embodied_share = embodied t / total t
    reason      = 1 (top_k_exceeds_experts) if top_k > experts, else 14 (missing_data) if the total is
                  not finite (a published figure is missing), else 0
"""

from __future__ import annotations

import math

import numpy as np

SECONDS_PER_HOUR = 3600.0
HOURS_PER_YEAR = 8760.0
SECONDS_PER_YEAR = 31_536_000.0
TOP_K_EXCEEDS_EXPERTS = 1
MISSING_DATA = 14

# Outputs of the fixed-layout chain, in the kernel's order; the layout ones are NaN here.
OUTPUT_NAMES = (
    "params", "active_params", "train_flops", "mfu", "hfu", "step_time_s", "compute_s", "comm_exposed_s",
    "bubble_s", "tokens_per_s", "memory_gb", "dp", "train_days", "device_hours", "it_energy_mwh", "energy_mwh",
    "operational_device_tco2e", "operational_host_tco2e", "operational_tco2e", "embodied_device_tco2e",
    "embodied_host_tco2e", "embodied_tco2e", "total_tco2e", "embodied_share", "gpus_consumed", "material_kg",
    "water_m3", "reason",
)
# Not re-implemented: the life-cycle phases (kernels.lifecycle: inference, experimentation, storage).
# The inputs the fixed-layout chain reads (the layout ones, tp, pp, ..., are not needed).
FIXED_CHAIN_INPUTS = (
    "layers", "d_model", "heads", "kv_heads", "head_dim", "d_ff", "ffn_matrices", "vocab", "seq_len",
    "tied_embeddings", "experts", "top_k", "moe_every", "first_dense_layers", "shared_experts", "expert_d_ff",
    "bias", "params", "active_params", "tokens", "flops", "devices", "mfu", "avg_power_w", "power_util",
    "lifespan_years", "peak_flops", "devices_per_node", "tdp_w", "idle_w", "host_power_w",
    "device_embodied_kgco2e", "host_embodied_kgco2e", "material_kg_per_device",
    "carbon_intensity_kg_per_kwh", "pue", "wue_l_per_kwh",
)


# ---------------------------------------------------------------------------------------------
# plain Python, one configuration


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


def footprint_python(p: dict) -> dict:
    """The fixed-layout chain for one configuration (a mapping of plain numbers) → dict of floats."""
    layers, d, heads, kv, hd = p["layers"], p["d_model"], p["heads"], p["kv_heads"], p["head_dim"]
    d_ff, fm, vocab, seq = p["d_ff"], p["ffn_matrices"], p["vocab"], p["seq_len"]
    tied, bias = bool(p["tied_embeddings"]), bool(p["bias"])
    experts, top_k = p["experts"], p["top_k"]

    # parameters (architecture docstring)
    if experts > 1:
        moe_layers = max(math.floor((layers - p["first_dense_layers"]) / p["moe_every"]), 0.0)
    else:
        moe_layers = 0.0
    d_attn = heads * hd
    attention = 2.0 * d * d_attn + 2.0 * d * kv * hd
    dense = attention + fm * d * d_ff + 2.0 * d
    if bias:
        dense += (heads + 2.0 * kv) * hd + d + d_ff * (fm - 1.0) + d + 2.0 * d
    expert = fm * d * p["expert_d_ff"]
    if bias:
        expert += p["expert_d_ff"] * (fm - 1.0) + d
    moe_common = attention + 2.0 * d + d * experts + p["shared_experts"] * expert
    if bias:
        moe_common += (heads + 2.0 * kv) * hd + 3.0 * d
    table = vocab * d
    outside = table * (1.0 if tied else 2.0) + d
    dense_layers = layers - moe_layers
    counted = dense_layers * dense + moe_layers * (moe_common + experts * expert) + outside
    counted_active = dense_layers * dense + moe_layers * (moe_common + top_k * expert) + outside

    if _finite(p["params"]):
        params = p["params"]
        active = p["active_params"] if _finite(p["active_params"]) else params
        per_token = 6.0 * active
    else:
        params, active = counted, counted_active
        n_mm = active - (0.0 if tied else table)
        per_token = 6.0 * n_mm + 12.0 * layers * seq * d_attn
    train_flops = p["flops"] if _finite(p["flops"]) else per_token * p["tokens"]

    # time
    devices, peak, mfu = p["devices"], p["peak_flops"], p["mfu"]
    goodput = p.get("goodput", 1.0)
    seconds = train_flops / (devices * peak * mfu) / goodput
    hours = seconds / SECONDS_PER_HOUR

    # power and energy
    pu = p["power_util"]
    nodes = math.ceil(devices / p["devices_per_node"])
    if _finite(p["avg_power_w"]):
        device_w = devices * p["avg_power_w"]
        host_w = 0.0
    else:
        device_w = devices * (p["idle_w"] + (p["tdp_w"] - p["idle_w"]) * pu)
        host_w = nodes * p["host_power_w"] * pu
    dev_kwh = device_w * hours / 1000.0
    host_kwh = host_w * hours / 1000.0
    it_kwh = dev_kwh + host_kwh
    ci, pue = p["carbon_intensity_kg_per_kwh"], p["pue"]
    op_dev = dev_kwh * pue * ci / 1000.0
    op_host = host_kwh * pue * ci / 1000.0

    # embodied, amortised
    life = p["lifespan_years"]
    emb_dev = devices * p["device_embodied_kgco2e"] * hours / (life * HOURS_PER_YEAR) / 1000.0
    emb_host = nodes * p["host_embodied_kgco2e"] * hours / (life * HOURS_PER_YEAR) / 1000.0

    # GPUs consumed (Falk et al. 2025), float64
    gpus = float(math.ceil(train_flops / (peak * mfu * goodput) / (life * SECONDS_PER_YEAR)))

    nan = math.nan
    total = op_dev + op_host + emb_dev + emb_host
    if top_k > experts:
        reason = TOP_K_EXCEEDS_EXPERTS
    elif not math.isfinite(total):
        reason = MISSING_DATA
    else:
        reason = 0
    return _outputs(params, active, train_flops, mfu, seconds, per_token, hours, devices, it_kwh, pue, op_dev,
                    op_host, emb_dev, emb_host, total, (emb_dev + emb_host) / total if total != 0 else nan, gpus,
                    gpus * p["material_kg_per_device"], it_kwh * p["wue_l_per_kwh"] / 1000.0, reason, nan)


def _outputs(params, active, train_flops, mfu, seconds, per_token, hours, devices, it_kwh, pue, op_dev, op_host,
             emb_dev, emb_host, total, share, gpus, material_kg, water_m3, reason, nan):
    """The chain's outputs, by name, from its intermediate quantities (both implementations)."""
    return {
        "params": params,
        "active_params": active,
        "train_flops": train_flops,
        "mfu": mfu,
        "hfu": nan, "step_time_s": nan, "compute_s": nan, "comm_exposed_s": nan, "bubble_s": nan,
        "tokens_per_s": train_flops / seconds / per_token,
        "memory_gb": nan, "dp": nan,
        "train_days": hours / 24.0,
        "device_hours": devices * hours,
        "it_energy_mwh": it_kwh / 1000.0,
        "energy_mwh": it_kwh * pue / 1000.0,
        "operational_device_tco2e": op_dev,
        "operational_host_tco2e": op_host,
        "operational_tco2e": op_dev + op_host,
        "embodied_device_tco2e": emb_dev,
        "embodied_host_tco2e": emb_host,
        "embodied_tco2e": emb_dev + emb_host,
        "total_tco2e": total,
        "embodied_share": share,
        "gpus_consumed": gpus,
        "material_kg": material_kg,
        "water_m3": water_m3,
        "reason": reason,
    }


# ---------------------------------------------------------------------------------------------
# NumPy, broadcast arrays


OPTIONAL_INPUTS = ("goodput",)  # read when present (default 1)


def footprint_numpy(x: dict) -> dict:
    """The fixed-layout chain over broadcast NumPy arrays, in the inputs' float dtype (gpus in float64)."""
    arrs = {k: np.asarray(x[k]) for k in FIXED_CHAIN_INPUTS + tuple(k for k in OPTIONAL_INPUTS if k in x)}
    dt = np.result_type(*[a.dtype for a in arrs.values()], np.float32)
    a = {k: v.astype(dt, copy=False) for k, v in arrs.items()}
    layers, d, heads, kv, hd = a["layers"], a["d_model"], a["heads"], a["kv_heads"], a["head_dim"]
    d_ff, fm, vocab, seq = a["d_ff"], a["ffn_matrices"], a["vocab"], a["seq_len"]
    tied, bias = a["tied_embeddings"] != 0, a["bias"] != 0
    experts, top_k, edff = a["experts"], a["top_k"], a["expert_d_ff"]
    zero = dt.type(0.0)

    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        moe_layers = np.where(experts > 1,
                              np.maximum(np.floor((layers - a["first_dense_layers"]) / a["moe_every"]), zero), zero)
        d_attn = heads * hd
        attention = 2.0 * d * d_attn + 2.0 * d * kv * hd
        dense = attention + fm * d * d_ff + 2.0 * d
        dense = dense + np.where(bias, (heads + 2.0 * kv) * hd + d + (d_ff * (fm - 1.0) + d) + 2.0 * d, zero)
        expert = fm * d * edff
        expert = expert + np.where(bias, edff * (fm - 1.0) + d, zero)
        moe_common = attention + 2.0 * d + d * experts + a["shared_experts"] * expert
        moe_common = moe_common + np.where(bias, (heads + 2.0 * kv) * hd + 3.0 * d, zero)
        table = vocab * d
        outside = table * np.where(tied, dt.type(1.0), dt.type(2.0)) + d
        dense_layers = layers - moe_layers
        counted = dense_layers * dense + moe_layers * (moe_common + experts * expert) + outside
        counted_active = dense_layers * dense + moe_layers * (moe_common + top_k * expert) + outside

        given = np.isfinite(a["params"])
        params = np.where(given, a["params"], counted)
        active = np.where(given, np.where(np.isfinite(a["active_params"]), a["active_params"], a["params"]),
                          counted_active)
        arch_per_token = 6.0 * (active - np.where(tied, zero, table)) + 12.0 * layers * seq * d_attn
        per_token = np.where(given, 6.0 * active, arch_per_token)
        train_flops = np.where(np.isfinite(a["flops"]), a["flops"], per_token * a["tokens"])

        devices, peak, mfu = a["devices"], a["peak_flops"], a["mfu"]
        goodput = a["goodput"] if "goodput" in a else 1.0
        seconds = train_flops / (devices * peak * mfu) / goodput
        hours = seconds / SECONDS_PER_HOUR

        pu = a["power_util"]
        nodes = np.ceil(devices / a["devices_per_node"])
        measured = np.isfinite(a["avg_power_w"])
        device_w = np.where(measured, devices * a["avg_power_w"],
                            devices * (a["idle_w"] + (a["tdp_w"] - a["idle_w"]) * pu))
        host_w = np.where(measured, zero, nodes * a["host_power_w"] * pu)
        dev_kwh = device_w * hours / 1000.0
        host_kwh = host_w * hours / 1000.0
        it_kwh = dev_kwh + host_kwh
        ci, pue = a["carbon_intensity_kg_per_kwh"], a["pue"]
        op_dev = dev_kwh * pue * ci / 1000.0
        op_host = host_kwh * pue * ci / 1000.0

        life = a["lifespan_years"]
        emb_dev = devices * a["device_embodied_kgco2e"] * hours / (life * HOURS_PER_YEAR) / 1000.0
        emb_host = nodes * a["host_embodied_kgco2e"] * hours / (life * HOURS_PER_YEAR) / 1000.0

        f64 = np.float64
        gpus = np.ceil(train_flops.astype(f64) / (peak.astype(f64) * (mfu * goodput).astype(f64))
                       / (life.astype(f64) * SECONDS_PER_YEAR))

        total = op_dev + op_host + emb_dev + emb_host
        shape = np.broadcast_shapes(*[v.shape for v in a.values()])
        nan = np.full(shape, np.nan, dt)
        reason = np.where(top_k > experts, TOP_K_EXCEEDS_EXPERTS,
                          np.where(np.isfinite(total), 0, MISSING_DATA)).astype(np.int32)
        out = _outputs(params, active, train_flops, mfu, seconds, per_token, hours, devices, it_kwh, pue, op_dev,
                       op_host, emb_dev, emb_host, total, (emb_dev + emb_host) / total, gpus,
                       gpus * a["material_kg_per_device"], it_kwh * a["wue_l_per_kwh"] / 1000.0, reason, nan)
    return {k: np.broadcast_to(v, shape) for k, v in out.items()}
