"""The whole chain for one training run, as one function over broadcast arrays:

architecture → parameters → FLOPs → step time and MFU (given, or from the layout model) → time →
energy → operational carbon; hardware × time / lifespan → embodied carbon; FLOPs / (peak · MFU ·
lifespan) → GPUs consumed → material mass.

``footprint(x)`` takes a mapping of arrays that broadcast against each other (names as in the spec
and in SCHEMA.md, SI units unless a name says otherwise) and returns a dict of arrays with units in
the names. The sweep engine calls it once per chunk under ``jax.jit``; ``estimate`` calls it on
scalars. NaN in an optional input means "not given":
    params, active_params   NaN → counted from the architecture
    flops                   NaN → from the architecture (kernels.flops)
    mfu                     NaN → predicted by the layout model (kernels.layout)
    avg_power_w             NaN → device and host power from idle, TDP and power_util
    mfu_scale               absent → 1: a factor on the layout model's MFU (its residual, sampled
                            by an [uncertainty] spec); not applied to a given MFU
"""

import jax.numpy as jnp

from . import architecture, embodied, energy, flops, lifecycle, materials, serving
from .reasons import CODE

# Inputs the chain reads, grouped by where they come from (the sweep gathers the hardware and
# site ones by index). Spec keys and database columns use the same names.
DESIGN_KEYS = (
    "layers", "d_model", "heads", "kv_heads", "head_dim", "d_ff", "ffn_matrices", "vocab", "seq_len",
    "tied_embeddings", "experts", "top_k", "moe_every", "first_dense_layers", "shared_experts",
    "expert_d_ff", "bias", "params", "active_params",
)
RUN_KEYS = (
    "tokens", "global_batch", "flops", "bytes_per_value", "devices", "mfu", "avg_power_w",
    "power_util", "tp", "pp", "ep", "microbatch", "recompute", "interleave", "shard_optimizer",
    "sequence_parallel", "lifespan_years",
)
HARDWARE_KEYS = (
    "peak_flops", "hbm_bytes", "hbm_bw_bytes_s", "intra_bw_bytes_s", "inter_bw_bytes_s",
    "devices_per_node", "tdp_w", "idle_w", "host_power_w", "device_embodied_kgco2e",
    "host_embodied_kgco2e", "material_kg_per_device",
)
SITE_KEYS = ("carbon_intensity_kg_per_kwh", "pue", "wue_l_per_kwh")
INPUT_KEYS = DESIGN_KEYS + RUN_KEYS + HARDWARE_KEYS + SITE_KEYS

# Outputs with their units and meaning: the contract for the CLI, the sweep's attributes and reports.
OUTPUTS: dict[str, tuple[str, str]] = {
    "params": ("1", "total parameters"),
    "active_params": ("1", "parameters active per token"),
    "train_flops": ("FLOP", "model FLOPs of the training run (forward + backward, no recomputation)"),
    "mfu": ("1", "model FLOPs utilisation"),
    "hfu": ("1", "hardware FLOPs utilisation (recomputation counted)"),
    "step_time_s": ("s", "time of one training step"),
    "compute_s": ("s", "compute part of one step"),
    "comm_exposed_s": ("s", "communication not hidden behind compute, per step"),
    "bubble_s": ("s", "pipeline bubble per step"),
    "tokens_per_s": ("token/s", "training throughput"),
    "memory_gb": ("GB", "memory needed per device"),
    "dp": ("1", "data-parallel degree"),
    "train_days": ("d", "wall-clock training time"),
    "device_hours": ("h", "accelerator hours"),
    "it_energy_mwh": ("MWh", "energy of devices and hosts, before PUE"),
    "energy_mwh": ("MWh", "facility energy (PUE applied)"),
    "operational_device_tco2e": ("t CO2e", "operational emissions of the accelerators"),
    "operational_host_tco2e": ("t CO2e", "operational emissions of the hosts (CPU, DRAM, network, other)"),
    "operational_tco2e": ("t CO2e", "operational emissions"),
    "embodied_device_tco2e": ("t CO2e", "embodied emissions of the accelerators, amortised"),
    "embodied_host_tco2e": ("t CO2e", "embodied emissions of the hosts, amortised"),
    "embodied_tco2e": ("t CO2e", "embodied emissions, amortised over the lifespan"),
    "total_tco2e": ("t CO2e", "operational + embodied emissions"),
    "embodied_share": ("1", "embodied share of the total emissions"),
    "gpus_consumed": ("1", "device lifetimes used up by the run (Falk et al. 2025)"),
    "material_kg": ("kg", "material mass of the devices consumed"),
    "water_m3": ("m3", "on-site water (WUE × IT energy); NaN where WUE is unknown"),
    "reason": ("1", "0 if feasible, else the code of the first rule broken (kernels.reasons)"),
    "inference_tco2e": ("t CO2e", "serving served_tokens_per_day for serving_days (operational + embodied)"),
    "inference_energy_mwh": ("MWh", "facility energy of serving"),
    "experimentation_tco2e": ("t CO2e", "earlier runs: experiment_factor × the training run"),
    "storage_tco2e": ("t CO2e", "embodied carbon of storage_tb of SSD over the serving period"),
    "lifecycle_tco2e": ("t CO2e", "training + inference + experimentation + storage"),
    "breakeven_served_tokens": ("token", "served tokens at which inference emissions equal training's"),
    "cost_usd": ("USD", "dollar cost of the run: device-hours x price per device-hour (a cloud offer), else "
                 "capex amortised over the lifespan + facility energy x energy price (TCO); NaN when unknown"),
}
# Optional inputs of the life-cycle phases and their defaults (no serving, no experiments, no storage).
LIFECYCLE_DEFAULTS = {"served_tokens_per_day": 0.0, "serving_days": 365.0, "serve_batch": 64.0,
                      "experiment_factor": 0.0, "storage_tb": 0.0, "ssd_kgco2e_per_gb": 0.0}


def _given(value):
    return jnp.isfinite(value)


def design_params(x):
    """(params, active_params): counted from the architecture unless given directly."""
    counted, counted_active = architecture.param_counts(
        x["layers"], x["d_model"], x["heads"], x["kv_heads"], x["head_dim"], x["d_ff"],
        x["ffn_matrices"], x["vocab"], x["tied_embeddings"], x["experts"], x["top_k"],
        x["moe_every"], x["first_dense_layers"], x["shared_experts"], x["expert_d_ff"], x["bias"],
    )
    given = _given(x["params"])
    params = jnp.where(given, x["params"], counted)
    active = jnp.where(given, jnp.where(_given(x["active_params"]), x["active_params"], x["params"]), counted_active)
    return params, active


def design_flops_per_token(x, active_params):
    """Model FLOPs per training token: architecture count, or 6·active when only sizes are given."""
    d_attn = x["heads"] * x["head_dim"]
    arch = flops.train_flops_per_token(
        active_params, x["vocab"], x["d_model"], x["tied_embeddings"], x["layers"], x["seq_len"], d_attn
    )
    return jnp.where(_given(x["params"]), flops.simple_train_flops_per_token(active_params), arch)


def design_reason(x):
    """Rules of the design alone (before any layout): top_k ≤ experts."""
    return jnp.where(x["top_k"] > x["experts"], CODE["top_k_exceeds_experts"], 0).astype(jnp.int32)


def design_terms(x):
    """What the design alone fixes (architecture, tokens, given counts): parameters, FLOPs per
    token and of the run. Evaluated once per design, then shared by every deployment of it."""
    params, active = design_params(x)
    per_token = design_flops_per_token(x, active)
    train_flops = jnp.where(_given(x["flops"]), x["flops"], flops.total_flops(per_token, x["tokens"]))
    return {"params": params, "active_params": active, "flops_per_token": per_token, "train_flops": train_flops}


def deployment_terms(x, materialise=lambda v: v):
    """What the deployment alone fixes (devices, hardware, site, lifespan, goodput; not the design,
    not the MFU): the cluster's peak rate per booked second, and each term of the footprint per
    booked second of run. Every term of a run is proportional to its booked wall-clock seconds
    (energy = power · time, LLMCarbon eq. 5-6; embodied = kgCO2e · time / lifespan, eq. 7), so

        peak_rate_flops_s = devices · peak_flops · goodput
        seconds           = train_flops / (peak_rate_flops_s · MFU)
        <term>            = seconds · <term>_per_s,   <term>_per_s = the term's kernel at one second

    The sweep evaluates these once per deployment, on the deployment axes only
    (``DEPLOYMENT_INPUTS``), and scales them per point: a point's total is one product.
    ``materialise`` (identity by default) is applied to each intermediate term that a sum reads or
    two terms share: the sweep passes one that hides the term's arithmetic from the compiler
    (sweep.compiled.opaque_zeros), so that every path (a chunk's deployment axes, a point, a
    sample) rounds it alike (XLA would otherwise contract its products into fused multiply-adds in
    one fusion and not another)."""
    m = materialise
    devices = x["devices"]
    measured = _given(x["avg_power_w"])
    dev_w = m(energy.device_power_w(x["idle_w"], x["tdp_w"], x["power_util"]))
    nodes = m(energy.node_count(devices, x["devices_per_node"]))
    device_power = m(jnp.where(measured, devices * x["avg_power_w"], devices * dev_w))
    host_power = m(jnp.where(measured, 0.0, nodes * x["host_power_w"] * x["power_util"]))
    hour = 1.0 / energy.SECONDS_PER_HOUR
    it_device = m(energy.energy_kwh(device_power, hour))
    it_host = m(energy.energy_kwh(host_power, hour))
    ci, pue = x["carbon_intensity_kg_per_kwh"], x["pue"]
    facility_device = m(energy.energy_kwh(device_power, hour, pue))
    facility_host = m(energy.energy_kwh(host_power, hour, pue))
    op_device = m(energy.operational_tco2e(facility_device, ci))
    op_host = m(energy.operational_tco2e(facility_host, ci))
    emb_device = m(embodied.run_embodied_tco2e(devices * x["device_embodied_kgco2e"], 1.0, x["lifespan_years"]))
    emb_host = m(embodied.run_embodied_tco2e(nodes * x["host_embodied_kgco2e"], 1.0, x["lifespan_years"]))
    it_kwh = m(it_device + it_host)
    facility_kwh = m(facility_device + facility_host)
    op = m(op_device + op_host)
    emb = m(emb_device + emb_host)
    # in the outputs' own units: a point's output is then one product (seconds · term), which XLA
    # cannot regroup with a unit conversion differently in different paths
    return {
        "peak_rate_flops_s": devices * x["peak_flops"] * x.get("goodput", 1.0),
        "it_energy_mwh_per_s": it_kwh / 1000.0,
        "facility_kwh_per_s": facility_kwh,
        "energy_mwh_per_s": facility_kwh / 1000.0,
        "water_m3_per_s": energy.water_m3(it_kwh, x["wue_l_per_kwh"]),
        "operational_device_tco2e_per_s": op_device,
        "operational_host_tco2e_per_s": op_host,
        "operational_tco2e_per_s": op,
        "embodied_device_tco2e_per_s": emb_device,
        "embodied_host_tco2e_per_s": emb_host,
        "embodied_tco2e_per_s": emb,
        "total_tco2e_per_s": m(op + emb),
    }


# What deployment_terms reads (a sweep evaluates them on the axes of these inputs only)
DEPLOYMENT_INPUTS = frozenset({
    "devices", "goodput", "peak_flops", "avg_power_w", "idle_w", "tdp_w", "power_util", "devices_per_node",
    "host_power_w", "device_embodied_kgco2e", "host_embodied_kgco2e", "carbon_intensity_kg_per_kwh", "pue",
    "wue_l_per_kwh", "lifespan_years",
})


def footprint(x, cal=None, design=None, step=None, check_missing=True, deploy=None):
    """The footprint of a training run; see the module docstring for inputs and ``OUTPUTS``.

    ``design``: ``design_terms(x)`` computed beforehand (the sweep evaluates it on the design
    axes only); computed here when not given. ``step``: the layout model's outputs
    (``layout_step``) computed beforehand (the sweep's best-layout search picks them); computed
    here from ``cal`` when not given, and not used at all when neither is given (MFU given).
    ``deploy``: ``deployment_terms(x)`` computed beforehand (the sweep evaluates it on the deployment
    axes only); computed here when not given. ``check_missing`` False: a non-finite total is left to
    the caller (not marked ``missing_data``; the sweep's sampled path checks it where it reads the
    samples, so the chain runs once).

    Long (just over 80 lines): the whole chain in one place, equation by equation, as the module
    docstring lists it.
    """
    d = design_terms(x) if design is None else design
    params, active, per_token, train_flops = (d[k] for k in ("params", "active_params", "flops_per_token",
                                                             "train_flops"))
    devices = x["devices"]
    reason = design_reason(x)

    if step is None and cal is not None:
        step = layout_step(x, params, active, cal)
    mfu_given = _given(x["mfu"])
    if step is None:
        mfu, hfu = x["mfu"], jnp.full_like(x["mfu"], jnp.nan)
        nan = jnp.nan * x["mfu"]
        step = {k: nan for k in ("step_time_s", "compute_s", "comm_exposed_s", "bubble_s", "tokens_per_s",
                                 "memory_bytes", "dp")}
    else:
        # mfu_scale: the layout model's residual (a sampled uncertainty, kernels.uncertainty), 1 = its prediction
        scale = x.get("mfu_scale", 1.0)
        step = {**step, "mfu": step["mfu"] * scale, "hfu": step["hfu"] * scale,
                "tokens_per_s": step["tokens_per_s"] * scale, "step_time_s": step["step_time_s"] / scale}
        mfu = jnp.where(mfu_given, x["mfu"], step["mfu"])
        hfu = jnp.where(mfu_given, jnp.nan, step["hfu"])
        reason = jnp.where(reason != 0, reason, jnp.where(mfu_given, 0, step["reason"])).astype(jnp.int32)

    # booked wall-clock: the productive time over the goodput (failures, restarts, checkpointing and
    # evaluation lost; Dubey et al. 2024 §3.3.4), every booked hour drawing training power; each term
    # of the footprint is its rate per booked second (deployment_terms) times the seconds
    dep = deployment_terms(x) if deploy is None else deploy
    goodput = x.get("goodput", 1.0)
    seconds = train_flops / (dep["peak_rate_flops_s"] * mfu)
    hours = seconds / energy.SECONDS_PER_HOUR
    op_device = seconds * dep["operational_device_tco2e_per_s"]
    op_host = seconds * dep["operational_host_tco2e_per_s"]
    emb_device = seconds * dep["embodied_device_tco2e_per_s"]
    emb_host = seconds * dep["embodied_host_tco2e_per_s"]
    gpus = materials.gpus_consumed(train_flops, x["peak_flops"], mfu * goodput, x["lifespan_years"])
    total = seconds * dep["total_tco2e_per_s"]
    # a feasible design whose total is unknown lacks a published figure (a TDP, a die area, ...)
    if check_missing:
        reason = jnp.where((reason == 0) & ~jnp.isfinite(total), CODE["missing_data"], reason).astype(jnp.int32)

    out = {
        "params": params,
        "active_params": active,
        "train_flops": train_flops,
        "mfu": mfu,
        "hfu": hfu,
        "step_time_s": step["step_time_s"],
        "compute_s": step["compute_s"],
        "comm_exposed_s": step["comm_exposed_s"],
        "bubble_s": step["bubble_s"],
        # devices·peak·MFU / FLOPs per token (not F / seconds / per-token: XLA may reorder that into
        # F·devices·peak·MFU / F, which overflows float32)
        "tokens_per_s": jnp.where(mfu_given, devices * x["peak_flops"] * mfu / per_token, step["tokens_per_s"]),
        "memory_gb": step["memory_bytes"] / 1e9,
        "dp": step["dp"],
        "train_days": hours / 24.0,
        "device_hours": devices * hours,
        "it_energy_mwh": seconds * dep["it_energy_mwh_per_s"],
        "energy_mwh": seconds * dep["energy_mwh_per_s"],
        "operational_device_tco2e": op_device,
        "operational_host_tco2e": op_host,
        "operational_tco2e": seconds * dep["operational_tco2e_per_s"],
        "embodied_device_tco2e": emb_device,
        "embodied_host_tco2e": emb_host,
        "embodied_tco2e": seconds * dep["embodied_tco2e_per_s"],
        "total_tco2e": total,
        "embodied_share": dep["embodied_tco2e_per_s"] / dep["total_tco2e_per_s"],
        "gpus_consumed": gpus,
        "material_kg": materials.material_kg(gpus, x["material_kg_per_device"]),
        "water_m3": seconds * dep["water_m3_per_s"],
        "reason": reason,
        "cost_usd": cost_usd(x, devices, hours, seconds * dep["facility_kwh_per_s"]),
    }
    out.update(_lifecycle(x, params, active, out))
    return out


def cost_usd(x, devices, hours, facility_kwh):
    """Dollar cost of the run (optional inputs; NaN = not given):
        cloud:  devices · hours · price_usd_per_device_hour          (the offer's price covers host, energy, site)
        TCO:    devices · capex_usd_per_device · hours / (lifespan_years · 8,760 h)
                + facility_kwh · energy_usd_per_kwh                    (straight-line amortisation, as embodied carbon)
    The cloud price when given, else the TCO (NaN where a figure of it is unknown)."""
    nan = jnp.nan
    price = x.get("price_usd_per_device_hour", nan)
    capex = x.get("capex_usd_per_device", nan)
    energy_price = x.get("energy_usd_per_kwh", nan)
    cloud = devices * hours * price
    tco = devices * capex * hours / (x["lifespan_years"] * 8760.0) + facility_kwh * energy_price
    return jnp.where(_given(price), cloud, tco)


def serving_architecture(x, params, active):
    """The mapping kernels.serving reads, from the chain's inputs (``params`` and ``active`` as
    design_params counts them). A model known only by its size (params given, no architecture) has
    no layers, attention or embedding table to count: zeros."""
    sized = _given(x["params"])
    z = lambda v: jnp.where(sized, 0.0, v)  # noqa: E731
    moe_layers = architecture.moe_layer_count(x["layers"], x["experts"], x["moe_every"], x["first_dense_layers"])
    routed = serving.routed_params(x["layers"], x["d_model"], x["experts"], x["expert_d_ff"], x["ffn_matrices"],
                                   x["moe_every"], x["first_dense_layers"])
    return {"layers": z(x["layers"]), "d_model": z(x["d_model"]), "heads": z(x["heads"]), "kv_heads": z(x["kv_heads"]),
            "head_dim": z(x["head_dim"]), "vocab": z(x["vocab"]), "experts": jnp.where(sized, 1.0, x["experts"]),
            "top_k": jnp.where(sized, 1.0, x["top_k"]), "moe_layers": z(moe_layers), "params": params,
            # serving's active weights leave out the input embedding (a lookup; tied: it is the head)
            "active_params": active - z(x["vocab"] * x["d_model"] * (1.0 - x["tied_embeddings"])),
            "routed_params": z(routed), "kv_latent_dim": x.get("kv_latent_dim", 0.0),
            "tied_embeddings": z(x["tied_embeddings"])}


# the serving constants (hardware_db/serving.toml) as chain inputs: serve_<name>, given per accelerator
SERVING_CONSTANT_INPUTS = tuple("serve_" + k for k in serving.CONSTANTS)


def _lifecycle(x, params, active, out):
    """Inference, experimentation and storage (kernels.lifecycle), from optional inputs."""
    g = lambda k: x.get(k, LIFECYCLE_DEFAULTS[k])  # noqa: E731
    cal = {k: x.get("serve_" + k, jnp.nan) for k in serving.CONSTANTS}
    hw = {"peak_flops": x["peak_flops"], "hbm_bw_bytes_s": x["hbm_bw_bytes_s"], "tdp_w": x["tdp_w"]}
    dev_s, busy_w = lifecycle.inference_per_token(serving_architecture(x, params, active), hw, g("serve_batch"),
                                                  x["seq_len"], x["bytes_per_value"], cal)
    power = busy_w + x["host_power_w"] * x["power_util"] / x["devices_per_node"]
    emb_per_device = x["device_embodied_kgco2e"] + x["host_embodied_kgco2e"] / x["devices_per_node"]
    per_token = lifecycle.inference_tco2e_per_token(dev_s, power, x["pue"], x["carbon_intensity_kg_per_kwh"],
                                                    emb_per_device, x["lifespan_years"])
    served = g("served_tokens_per_day") * g("serving_days")
    serves = served > 0  # nothing served: no inference, whatever the constants
    inference = jnp.where(serves, served * per_token, 0.0)
    experiments = g("experiment_factor") * out["total_tco2e"]
    storage = lifecycle.storage_tco2e(g("storage_tb"), g("ssd_kgco2e_per_gb"), g("serving_days"), x["lifespan_years"])
    return {
        "inference_tco2e": inference,
        "inference_energy_mwh": jnp.where(serves, served * dev_s * power * x["pue"] / 3.6e9, 0.0),
        "experimentation_tco2e": experiments,
        "storage_tco2e": storage,
        "lifecycle_tco2e": out["total_tco2e"] + inference + experiments + storage,
        "breakeven_served_tokens": out["total_tco2e"] / per_token,
    }


# What the layout model reads from the chain's inputs (with params and active_params, and the
# calibrated constants): not the token budget, the site, the lifespan or the power figures.
_STEP_DESIGN = ("layers", "d_model", "heads", "kv_heads", "head_dim", "d_ff", "ffn_matrices", "vocab", "seq_len",
                "tied_embeddings", "experts", "top_k", "expert_d_ff", "shared_experts", "global_batch",
                "bytes_per_value")
_STEP_HARDWARE = ("peak_flops", "hbm_bytes", "hbm_bw_bytes_s", "intra_bw_bytes_s", "inter_bw_bytes_s",
                  "devices_per_node")
_STEP_LAYOUT = ("devices", "tp", "pp", "ep", "microbatch", "recompute", "interleave", "shard_optimizer",
                "sequence_parallel")
# optional inputs, passed on when present (NaN = not given: kernels.layout.layout_fields's default)
STEP_OPTIONAL = {"design": ("dropout", "sliding_window", "window_layers"), "hardware": ("peak_bf16_flops",),
                 "layout": ("flash_attention", "cp", "etp", "zero_stage", "overlap", "ep_overlap", "ep_dedup",
                            "moe_host_sync", "gemm_per_expert", "cuda_graphs", "cp_allgather", "moe_imbalance",
                            "offload_layers")}
LAYOUT_STEP_INPUTS = (_STEP_DESIGN + ("moe_every", "first_dense_layers") + _STEP_HARDWARE + _STEP_LAYOUT
                      + tuple(k for keys in STEP_OPTIONAL.values() for k in keys))


def layout_step(x, params, active, cal):
    """Step time, MFU and memory of the layout (kernels.layout), fed from the chain's inputs
    (``LAYOUT_STEP_INPUTS``; those of ``STEP_OPTIONAL`` only when present)."""
    from . import layout

    moe_layers = architecture.moe_layer_count(x["layers"], x["experts"], x["moe_every"], x["first_dense_layers"])
    design = {k: x[k] for k in _STEP_DESIGN + STEP_OPTIONAL["design"] if k in x}
    design.update(moe_layers=moe_layers, params=params, active_params=active)
    hw = {k: x[k] for k in _STEP_HARDWARE + STEP_OPTIONAL["hardware"] if k in x}
    lay = {k: x[k] for k in _STEP_LAYOUT + STEP_OPTIONAL["layout"] if k in x}
    return layout.step(design, hw, lay, cal)
