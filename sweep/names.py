"""Names: one registry of everything a result, a table or a figure calls by name.

Each output has one entry (``NAMES``): its unit and description (the kernels' ``OUTPUTS`` contract,
plus what the sweep adds: the loss and the chosen layout), its short label on figures, and, for
the `estimate` table, its group, row label and printed unit. Dimensions that are not outputs
(``layers``, ``region``, ...) have entries for their figure labels only. The layouts of the tables
that list names (estimate's groups, the report's tables) are here too, so a new output is added
in this file and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from kernels.footprint import OUTPUTS as KERNEL_OUTPUTS
from kernels.selection import LAYOUT_FIELDS


@dataclass(frozen=True)
class Name:
    unit: str = "1"
    description: str = ""
    short: str | None = None      # figure label ("total CO₂e")
    label: str | None = None      # estimate's row label ("total")
    table_unit: str = ""          # estimate's printed unit ("t CO2e"; "" for a count)
    output: bool = True           # a variable of the grid (False: a dimension or an estimate field only)
    sampled: bool = False         # a quantile or mean over an [uncertainty] section's samples


# what the sweep adds to the kernel's outputs (the study's scaling law, the layout it chose)
SWEEP_OUTPUTS = {
    "loss": ("nats/token", "predicted pre-training loss under the study's scaling law"),
    "loss_in_range": ("1", "1 where the design lies inside the law's fitted ranges"),
    "tp": ("1", "tensor-parallel degree of the layout"),
    "pp": ("1", "pipeline-parallel degree of the layout"),
    "ep": ("1", "expert-parallel degree of the layout"),
    "microbatch": ("1", "sequences per micro-batch"),
    "recompute": ("1", "activation recomputation: 0 none, 1 selective, 2 full"),
    "interleave": ("1", "virtual pipeline stages per device"),
    "sequence_parallel": ("1", "1 when the layout uses sequence parallelism alongside tensor parallelism"),
    "shard_optimizer": ("1", "1 when the layout shards optimizer states over data parallel (ZeRO-1)"),
}

SHORT = {
    "total_tco2e": "total CO₂e",
    "operational_tco2e": "operational CO₂e",
    "embodied_tco2e": "embodied CO₂e",
    "operational_device_tco2e": "operational CO₂e, accelerators",
    "operational_host_tco2e": "operational CO₂e, hosts",
    "embodied_device_tco2e": "embodied CO₂e, accelerators",
    "embodied_host_tco2e": "embodied CO₂e, hosts",
    "embodied_share": "embodied share of total CO₂e",
    "loss": "predicted loss",
    "loss_in_range": "inside the law's fitted range",
    "train_days": "training time",
    "energy_mwh": "facility energy",
    "it_energy_mwh": "IT energy",
    "mfu": "MFU",
    "hfu": "HFU",
    "step_time_s": "step time",
    "compute_s": "compute time per step",
    "comm_exposed_s": "exposed communication per step",
    "bubble_s": "pipeline bubble per step",
    "tokens_per_s": "throughput",
    "memory_gb": "memory per device",
    "params": "parameters",
    "active_params": "active parameters",
    "train_flops": "training compute",
    "device_hours": "device hours",
    "gpus_consumed": "GPUs consumed (device lifetimes)",
    "material_kg": "material mass of devices consumed",
    "water_m3": "on-site water",
    "dp": "data-parallel degree",
    "tp": "tensor-parallel degree",
    "pp": "pipeline-parallel degree",
    "ep": "expert-parallel degree",
    "microbatch": "micro-batch",
    "interleave": "virtual stages per device",
    "sequence_parallel": "sequence parallelism",
    "shard_optimizer": "optimizer sharding (ZeRO-1)",
    # dimensions
    "layers": "layers",
    "d_model": "d_model (hidden size)",
    "heads": "attention heads",
    "devices": "devices",
    "lifespan_years": "hardware lifespan",
    "carbon_intensity": "grid carbon intensity",
    "tokens": "training tokens",
    "experts": "experts",
    "top_k": "top-k",
    "global_batch": "global batch (sequences)",
    "seq_len": "sequence length",
    "pue": "PUE",
    "wue": "WUE",
    "hardware": "hardware",
    "region": "region",
    "ffn": "FFN kind",
    "recompute": "recomputation",
    "cp_comm_type": "context-parallel exchange",
    "power_util": "power utilisation",
    "cost_usd": "dollar cost",
    "start": "start date (typical year)",
    "start_hour": "start, hour of the year",
    "wall_clock_days": "wall-clock with pauses",
    "pause_fraction": "paused fraction of hours",
    "carbon_intensity_kg_per_kwh": "effective carbon intensity",
}

# estimate's table: groups of (name, row label, printed unit), in the order printed
ESTIMATE_TABLE = [
    ("Model", [("params", "parameters", ""), ("active_params", "active parameters", ""),
               ("train_flops", "training FLOPs", "FLOP")]),
    ("Run", [("hardware", "hardware", ""), ("devices", "devices", ""), ("tp", "tensor parallel", ""),
             ("pp", "pipeline parallel", ""), ("dp", "data parallel", ""), ("ep", "expert parallel", ""),
             ("microbatch", "micro-batch", ""), ("recompute", "recompute", ""),
             ("interleave", "virtual stages per device", ""), ("sequence_parallel", "sequence parallel", ""),
             ("shard_optimizer", "optimizer sharded (ZeRO-1)", ""), ("cp", "context parallel", ""),
             ("etp", "expert tensor parallel", ""), ("zero_stage", "ZeRO stage", ""),
             ("mfu", "MFU", ""), ("goodput", "goodput", ""), ("step_time_s", "step time", "s"),
             ("memory_gb", "memory per device", "GB"),
             ("train_days", "training time", "days"), ("device_hours", "device hours", "h")]),
    ("Energy", [("it_energy_mwh", "IT energy", "MWh"), ("pue", "PUE", ""), ("energy_mwh", "facility energy", "MWh"),
                ("water_m3", "on-site water", "m³")]),
    ("When", [("start", "start (typical year, UTC)", ""), ("pause_fraction", "paused hours (dirtiest)", ""),
              ("wall_clock_days", "wall-clock with pauses", "days"), ("pause_days", "added by pausing", "days"),
              ("annual_carbon_intensity_kg_per_kwh", "annual carbon intensity", "kg CO2e/kWh")]),
    ("Carbon", [("carbon_intensity_kg_per_kwh", "carbon intensity", "kg CO2e/kWh"),
                ("operational_device_tco2e", "operational, accelerators", "t CO2e"),
                ("operational_host_tco2e", "operational, hosts", "t CO2e"),
                ("operational_tco2e", "operational", "t CO2e"),
                ("embodied_device_tco2e", "embodied, accelerators", "t CO2e"),
                ("embodied_host_tco2e", "embodied, hosts", "t CO2e"),
                ("embodied_tco2e", "embodied", "t CO2e"), ("total_tco2e", "total", "t CO2e")]),
    ("Cost", [("cost_usd", "dollar cost", "USD")]),
    ("Materials", [("gpus_consumed", "device lifetimes consumed", ""), ("material_kg", "material mass", "kg")]),
    ("Life cycle", [("inference_tco2e", "serving", "t CO2e"), ("inference_energy_mwh", "serving energy", "MWh"),
                    ("experimentation_tco2e", "earlier experiments", "t CO2e"),
                    ("storage_tco2e", "storage", "t CO2e"), ("lifecycle_tco2e", "life cycle, in all", "t CO2e"),
                    ("breakeven_served_tokens", "serving equals training at", "tokens served")]),
    ("Quality", [("loss", "predicted loss", "nats/token"), ("law", "scaling law", "")]),
]
LIFECYCLE_PHASES = ("inference_tco2e", "inference_energy_mwh", "experimentation_tco2e", "storage_tco2e")

# the report's tables: the ranges over the feasible designs, and the lowest-CO2e design
REPORT_RANGES = ("total_tco2e", "operational_tco2e", "embodied_tco2e", "energy_mwh", "train_days", "device_hours",
                 "params", "active_params", "loss", "mfu", "step_time_s", "memory_gb", "gpus_consumed",
                 "material_kg", "water_m3")
REPORT_BEST = ("total_tco2e", "operational_tco2e", "embodied_tco2e", "operational_device_tco2e",
               "operational_host_tco2e", "embodied_device_tco2e", "embodied_host_tco2e", "energy_mwh", "train_days",
               "device_hours", "params", "active_params", "train_flops", "loss", "mfu", "step_time_s", "memory_gb",
               "tp", "pp", "dp", "ep", "microbatch", "gpus_consumed", "material_kg", "water_m3")

# the serving model's figures (sweep.serving, `carbon-sweep serve`, estimate's "serving" block)
SERVING_OUTPUTS = {
    "replica_devices": ("1", "devices per replica"),
    "concurrency": ("1", "sequences batched per replica"),
    "max_batch": ("1", "largest batch whose KV cache fits"),
    "ttft_s": ("s", "time to first token"),
    "ttft_p50_s": ("s", "time to first token, median of the mix"),
    "ttft_p95_s": ("s", "time to first token, p95 of the mix (what ttft_target_s is held to)"),
    "tpot_s": ("s", "time per output token"),
    "tokens_per_s_per_replica": ("token/s", "output tokens per second per replica"),
    "device_power_w": ("W", "power of a busy device"),
    "gpu_j_per_output_token": ("J/token", "accelerator energy per output token at full load (ML.ENERGY's measure)"),
    "replicas": ("1", "replicas for requests_per_day"),
    "load": ("1", "mean load of the replicas (the rest is idle capacity, drawing static power)"),
    "device_hours_per_day": ("h/d", "device-hours per day, idle capacity included"),
    "energy_kwh_per_day": ("kWh/d", "facility energy per day"),
    "wh_per_request": ("Wh", "facility energy per request (host, PUE and idle capacity included)"),
    "wh_per_1k_output_tokens": ("Wh", "facility energy per 1,000 output tokens"),
    "gco2e_per_request": ("g CO2e", "operational + embodied per request"),
    "wh_per_request_p5": ("Wh", "facility energy per request, 5th percentile of the mix"),
    "wh_per_request_p50": ("Wh", "facility energy per request, median of the mix"),
    "wh_per_request_p95": ("Wh", "facility energy per request, 95th percentile of the mix"),
    "gco2e_per_request_p5": ("g CO2e", "per request, 5th percentile of the mix"),
    "gco2e_per_request_p50": ("g CO2e", "per request, median of the mix"),
    "gco2e_per_request_p95": ("g CO2e", "per request, 95th percentile of the mix"),
    "input_tokens_mean": ("token", "prompt tokens per request, mean of the mix"),
    "output_tokens_mean": ("token", "output tokens per request, mean of the mix"),
    "gco2e_per_1k_output_tokens": ("g CO2e", "operational + embodied per 1,000 output tokens"),
    "tco2e_per_day": ("t CO2e/d", "serving emissions per day"),
}

# what a sweep with an [uncertainty] section adds per point: for each sampled output, its quantiles
# over the samples (name_p5, name_p50, name_p95) and mean (name_mean), and the infeasible samples
QUANTILE_SUFFIXES = {"p5": "5th percentile", "p50": "median", "p95": "95th percentile", "mean": "mean"}
NOT_SAMPLED = ("reason", "dp", "params", "active_params", "train_flops", "memory_gb")


def elasticity_of(name: str, inputs=None) -> tuple[str, str] | None:
    """(output, input) of an elasticity output, ``<output>_elasticity_<input>`` (d ln output /
    d ln input at each point), else None; ``inputs``: the inputs allowed (any name when None)."""
    out, sep, inp = name.partition("_elasticity_")
    ok = sep and out in KERNEL_OUTPUTS and out not in NOT_SAMPLED and inp and (inputs is None or inp in inputs)
    return (out, inp) if ok else None


def samples_base(name: str) -> str | None:
    """The output a kept-samples name is of (``total_tco2e_samples`` → ``total_tco2e``), else None."""
    base = name[:-len("_samples")] if name.endswith("_samples") else None
    return base if base in KERNEL_OUTPUTS and base not in NOT_SAMPLED else None


def quantile_base(name: str) -> str | None:
    """The output a quantile name is of (``total_tco2e_p95`` → ``total_tco2e``), else None."""
    base, _, suffix = name.rpartition("_")
    return base if suffix in QUANTILE_SUFFIXES and base in KERNEL_OUTPUTS and base not in NOT_SAMPLED else None


# the layout a best-layout grid records per point (the outputs named like the layout's spec keys)
LAYOUT_OUTPUTS = LAYOUT_FIELDS


def _registry() -> dict[str, Name]:
    names = {k: Name(unit, desc) for k, (unit, desc) in {**KERNEL_OUTPUTS, **SWEEP_OUTPUTS}.items()}
    for k, short in SHORT.items():
        names[k] = replace(names[k], short=short) if k in names else Name(short=short, output=False)
    for _, rows in ESTIMATE_TABLE:
        for k, label, unit in rows:
            names[k] = replace(names.get(k, Name(output=False)), label=label, table_unit=unit)
    for k, (unit, desc) in KERNEL_OUTPUTS.items():
        if k not in NOT_SAMPLED:
            for q, what in QUANTILE_SUFFIXES.items():
                short = f"{names[k].short or k}, {q}"
                names[f"{k}_{q}"] = Name(unit, f"{desc}: {what} over the uncertainty samples", short=short,
                                         sampled=True)
            # [uncertainty] keep_samples: every sample, on a `sample` dimension (not a per-point output)
            names[f"{k}_samples"] = Name(unit, f"{desc}: each uncertainty sample (NaN: an infeasible sample)",
                                         short=f"{names[k].short or k}, samples", output=False, sampled=True)
    for k, (unit, desc) in SERVING_OUTPUTS.items():
        names.setdefault(k, Name(unit, desc, output=False))
    names["infeasible_samples"] = Name("1", "samples of the point that cannot run (a sampled input out of range, "
                                            "or infeasible), left out of its quantiles", sampled=True)
    return names


NAMES: dict[str, Name] = _registry()


def output_units(sampled: bool = False) -> dict[str, tuple[str, str]]:
    """Every output a grid can hold: name → (unit, description), in the grid's order; ``sampled``:
    with the quantiles a study with an [uncertainty] section adds."""
    return {k: (n.unit, n.description) for k, n in NAMES.items() if n.output and (sampled or not n.sampled)}


def attrs_of(name: str) -> dict:
    """A variable's ``units`` and ``long_name`` (the name itself for one not registered)."""
    n = NAMES.get(name)
    if n is None and (e := elasticity_of(name)):
        return {"units": "1", "long_name": f"elasticity d ln({e[0]}) / d ln({e[1]}) at the point"}
    if n is None or not (n.output or samples_base(name)):  # (kept samples: a variable, not a per-point output)
        return {"units": "1", "long_name": name}
    return {"units": n.unit, "long_name": n.description}


def short_label(name: str) -> str | None:
    """The figure label of a name (None when it has none)."""
    n = NAMES.get(name)
    return n.short if n is not None else None
