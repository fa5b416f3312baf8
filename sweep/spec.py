"""Spec files: one registry of keys, a TOML reader, and validation that names file, section and key.

A spec is a TOML file with the sections ``[model]``, ``[training]``, ``[cluster]``, ``[site]``,
``[lifecycle]`` and ``[quality]``; a study adds ``[grid]`` and ``[study]``, a search ``[search]``.
Keys are unique across sections, so a grid key (``[grid] layers = [...]``) names its section.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hardware_db
from hardware_db import closest
from kernels.design import default_d_ff

from .dates import check_start


class SpecError(ValueError):
    """Bad input: the message names the file, the section, the key and what is allowed."""

    def __init__(self, file, section, key, message):
        self.file, self.section, self.key = file, section, key
        where = f"{file}"
        if section:
            where += f": [{section}]"
        if key:
            where += f" {key}"
        super().__init__(f"{where}: {message}")


INT, NUM, STR, BOOL = "int", "number", "string", "bool"
MIX = "number or distribution"  # a number, or a distribution table (sweep.uncertainty.distribution; sweep.serving)
WHEN = "datetime"  # an ISO date or datetime (a string or a TOML date), or "best" (sweep.when)


@dataclass(frozen=True)
class Key:
    section: str
    kind: str  # INT, NUM, STR, BOOL
    default: Any = None  # None: no default (required or optional as `required` says)
    help: str = ""
    choices: tuple = ()
    minimum: float | None = None  # inclusive unless `positive`
    maximum: float | None = None
    positive: bool = False
    unit: str = "1"


def _k(section, kind, default=None, help="", **kw):
    return Key(section, kind, default, help, **kw)


# how context parallelism exchanges K and V (spec words -> the kernels' cp_allgather flag)
CP_COMM_CODE = {"p2p": 0.0, "all_gather": 1.0}

KEYS: dict[str, Key] = {
    # [model]
    "name": _k("model", STR, "", "a label for the design"),
    "layers": _k("model", INT, None, "transformer layers", positive=True),
    "d_model": _k("model", INT, None, "hidden size", positive=True),
    "heads": _k("model", INT, None, "attention (query) heads", positive=True),
    "kv_heads": _k("model", INT, None, "key/value heads (GQA); default = heads", positive=True),
    "head_dim": _k("model", INT, None, "size of one head; default = d_model / heads", positive=True),
    "d_ff": _k("model", INT, None, "FFN width; default = 4·d_model", positive=True),
    "ffn": _k("model", STR, "gelu", "FFN kind: gelu (2 matrices) or swiglu (3)", choices=("gelu", "swiglu")),
    "vocab": _k("model", INT, None, "vocabulary size", positive=True),
    "seq_len": _k("model", INT, None, "training sequence length (tokens)", positive=True),
    "tied_embeddings": _k("model", BOOL, False, "input and output embeddings share one matrix"),
    "bias": _k("model", BOOL, False, "linear layers and norms have biases"),
    "experts": _k("model", INT, 1, "routed experts per MoE layer (1 = dense)", positive=True),
    "top_k": _k("model", INT, 1, "experts each token is routed to", positive=True),
    "moe_every": _k("model", INT, 1, "every n-th layer (after first_dense_layers) is an MoE layer", positive=True),
    "first_dense_layers": _k("model", INT, 0, "leading dense layers before the MoE pattern", minimum=0),
    "shared_experts": _k("model", INT, 0, "always-active experts per MoE layer", minimum=0),
    "expert_d_ff": _k("model", INT, None, "FFN width of one expert; default = d_ff", positive=True),
    "sliding_window": _k("model", INT, 0, "tokens a query attends to on sliding-window layers (Mistral, "
                         "Gemma, GPT-OSS: 128); 0 = full causal attention", minimum=0, unit="token"),
    "window_layers": _k("model", NUM, 1.0, "fraction of the layers that have the sliding window (GPT-OSS "
                        "alternates: 0.5; Gemma 3, five local to one global: 0.833)", minimum=0, maximum=1),
    "dropout": _k("model", BOOL, True, "trained with dropout (Megatron GPT): its masks are kept for the "
                  "backward pass; false for Llama-style models"),
    "params": _k("model", NUM, None, "total parameters, for a model known only by size", positive=True),
    "active_params": _k("model", NUM, None, "parameters active per token (default = params)", positive=True),
    # [training]
    "tokens": _k("training", NUM, None, "training tokens", positive=True, unit="token"),
    "global_batch": _k("training", INT, None, "sequences per optimiser step", positive=True),
    "precision": _k("training", STR, "bf16", "number format of the matrix multiplies",
                    choices=hardware_db.PRECISIONS),
    "flops": _k("training", NUM, None, "training FLOPs, overriding the architecture count", positive=True,
                unit="FLOP"),
    # [cluster]
    "hardware": _k("cluster", STR, None, "accelerator id (carbon-sweep hardware list)"),
    "devices": _k("cluster", INT, None, "accelerators in the run", positive=True),
    "mfu": _k("cluster", NUM, None, "model FLOPs utilisation; given, it bypasses the layout model",
              positive=True, maximum=1.0),
    "avg_power_w": _k("cluster", NUM, None, "measured average power per device, host share included", positive=True,
                      unit="W"),
    "power_util": _k("cluster", NUM, None, "fraction of the idle-to-TDP range drawn in training", minimum=0.0,
                     maximum=1.0),
    "host": _k("cluster", STR, None, "host server id; default: the accelerator's reference server"),
    "tp": _k("cluster", INT, None, "tensor-parallel degree", positive=True),
    "pp": _k("cluster", INT, None, "pipeline-parallel degree", positive=True),
    "ep": _k("cluster", INT, None, "expert-parallel degree", positive=True),
    "microbatch": _k("cluster", INT, None, "sequences per micro-batch", positive=True),
    "recompute": _k("cluster", STR, None, "activation recomputation", choices=("none", "selective", "full")),
    "interleave": _k("cluster", INT, None, "virtual pipeline stages per device (1 = plain 1F1B)", positive=True),
    "shard_optimizer": _k("cluster", BOOL, None, "shard optimizer states over data parallel (ZeRO-1)"),
    "sequence_parallel": _k("cluster", BOOL, None, "sequence parallelism alongside tensor parallelism"),
    "cp": _k("cluster", INT, None, "context-parallel degree: each sequence split over cp devices (ring attention)",
             positive=True),
    "etp": _k("cluster", INT, None, "expert tensor-parallel degree (default: tp; 1 = experts not tensor-split)",
              positive=True),
    "zero_stage": _k("cluster", INT, None, "ZeRO stage: 0 none, 1 optimizer states sharded over data parallel "
                     "(= shard_optimizer), 2 + gradients, 3 + weights (FSDP)", minimum=0, maximum=3),
    "overlap": _k("cluster", BOOL, None, "communication hidden under compute as Megatron-core / FSDP2 do (DP "
                  "reduce-scatter and all-gather, TP collectives); default: the accelerator class's "
                  "(hardware_db/calibration.toml: off for A100, on for H100 and later)"),
    "ep_overlap": _k("cluster", BOOL, False, "expert all-to-all hidden under another micro-batch's compute "
                     "(DeepSeek-V3 DualPipe, Megatron-core MoE overlap), except on the passes the schedule "
                     "cannot pair: each stage's first forward, last backward and pipeline warm-up"),
    "moe_host_sync": _k("cluster", BOOL, False, "the MoE dispatcher synchronises with the host every MoE layer and "
                        "micro-batch (Megatron-core's dropless alltoall dispatcher: it copies the per-expert token "
                        "counts to the CPU; calibrated cost moe_sync_latency_s); false for DeepEP / HybridEP (the "
                        "flex dispatcher), drop-and-pad or CUDA-graphed MoE layers"),
    "gemm_per_expert": _k("cluster", BOOL, False, "the experts' grouped GEMM runs as one GEMM per local expert "
                          "(Transformer Engine's multi-stream cuBLAS GroupedLinear, Megatron-core's TEGroupedMLP): a "
                          "fixed cost per local expert, MoE layer and micro-batch (calibrated moe_expert_latency_s, "
                          "+ moe_expert_fp8_latency_s in FP8, whose GroupedLinear quantises each expert apart); "
                          "false for one grouped kernel (DeepGEMM, CUTLASS grouped GEMM, torch._grouped_mm)"),
    "ep_dedup": _k("cluster", BOOL, False, "a token crosses the network once per remote node it has experts on, "
                   "then is forwarded over NVLink (DeepEP / HybridEP, Megatron-core's flex dispatcher; DeepSeek-V3's "
                   "node-limited routing); false: one copy per routed expert"),
    "cp_comm_type": _k("cluster", STR, "p2p", "how context parallelism exchanges K and V: p2p (a ring "
                       "overlapped with the attention, Megatron-core's default) or all_gather (gathered before it, "
                       "exposed; Llama 3)", choices=tuple(CP_COMM_CODE)),
    "cuda_graphs": _k("cluster", BOOL, False, "whole layers replayed as CUDA graphs (Megatron-core full-iteration "
                      "capture, NeMo's per-layer enable_cuda_graph): no per-layer kernel-launch or host-sync latency "
                      "(layer_latency_s, moe_layer_latency_s, moe_sync_latency_s, moe_expert_latency_s, "
                      "moe_expert_fp8_latency_s); false for "
                      "eager execution or graphs of parts of a layer (attention, router)"),
    "moe_imbalance": _k("cluster", NUM, None, "busiest device's expert load over the mean (default: the "
                        "calibrated 1.25; 1 = balanced routing)", minimum=1.0),
    "goodput": _k("cluster", NUM, None, "productive fraction of the booked wall-clock (failures, restarts, "
                  "checkpoints lost); default hardware_db/defaults.toml goodput when the layout model sets the "
                  "time, 1 when mfu is given", positive=True, maximum=1.0),
    "calibration": _k("cluster", STR, None, "a calibration TOML (carbon-sweep calibrate writes one) whose "
                      "constants replace the packaged ones; a path relative to the spec file"),
    "flash_attention": _k("cluster", BOOL, None, "fused attention (no s² softmax traffic or activations); "
                          "default: the accelerator class's (off for A100, as in its calibration runs, Megatron-LM "
                          "2021-22; on for H100 and later)"),
    "offer": _k("cluster", STR, None, "a cloud offer of hardware_db/prices.csv (its price per device-hour sets "
                "cost_usd; carbon-sweep prices list)"),
    "price_usd_per_device_hour": _k("cluster", NUM, None, "price of one device-hour (cloud: host, energy and site "
                                    "included); overrides offer", minimum=0.0, unit="USD/h"),
    "capex_usd_per_device": _k("lifecycle", NUM, None, "purchase price of one device with its share of the "
                               "server, amortised over lifespan_years (TCO when no price per device-hour is given)",
                               minimum=0.0, unit="USD"),
    # [site]
    "energy_usd_per_kwh": _k("site", NUM, None, "electricity price for the TCO (facility energy, PUE included)",
                             minimum=0.0, unit="USD/kWh"),
    "region": _k("site", STR, None, "region id (carbon-sweep regions list)"),
    "carbon_intensity": _k("site", NUM, None, "grid carbon intensity, kg CO2e/kWh", minimum=0.0,
                           unit="kg/kWh"),
    "pue": _k("site", NUM, None, "power usage effectiveness", minimum=1.0),
    "wue": _k("site", NUM, None, "water usage effectiveness, L/kWh", minimum=0.0, unit="L/kWh"),
    "start": _k("site", WHEN, None, "when the run starts: an ISO date or datetime (UTC unless an offset is given; "
                "the year is ignored: a typical year of hourly carbon intensity) or \"best\" (the start hour with "
                "the least operational carbon); the region's hourly profile then sets the carbon intensity"),
    "pause_fraction": _k("site", NUM, 0.0, "carbon-aware pause: the run stops in this fraction of the year's "
                         "hours, the dirtiest ones (0 = never); needs start; the paused hours lengthen the "
                         "wall-clock (wall_clock_days)", minimum=0.0, maximum=0.9),
    # [lifecycle]
    "lifespan_years": _k("lifecycle", NUM, 5.0, "hardware lifespan", positive=True, unit="year"),
    "embodied_method": _k("lifecycle", STR, "act", "embodied-carbon method",
                          choices=("llmcarbon", "act", "vendor_pcf")),
    "served_tokens_per_day": _k("lifecycle", NUM, 0.0, "tokens generated per day when the model is served",
                                minimum=0.0, unit="token/d"),
    "serving_days": _k("lifecycle", NUM, 365.0, "days the model is served", positive=True, unit="d"),
    "serve_batch": _k("lifecycle", INT, 64, "sequences decoded together per device for served_tokens_per_day "
                      "(the serving model's batch, full load)", positive=True),
    "experiment_factor": _k("lifecycle", NUM, 0.0, "earlier runs (ablations, tuning) as a multiple of this run",
                            minimum=0.0),
    "storage_tb": _k("lifecycle", NUM, 0.0, "SSD storage kept for the model and data while served", minimum=0.0,
                     unit="TB"),
    # [quality]
    "law": _k("quality", STR, "chinchilla",
              "scaling law for the predicted loss (ids in hardware_db/scaling_laws.toml)"),
}
# [serving] (kernels/serving.py; `carbon-sweep serve`): the request mix, the latency targets, the configuration
KEYS.update({
    "input_tokens": _k("serving", MIX, None, "prompt tokens per request (system prompt and history included); "
                       "a number, or the request mix's distribution {dist = ..., ...}", minimum=0.0, unit="token"),
    "output_tokens": _k("serving", MIX, None, "generated tokens per request, reasoning tokens included; a number, "
                        "or the request mix's distribution {dist = ..., ...}", positive=True, unit="token"),
    "mix_samples": _k("serving", INT, 1000, "requests drawn from the input_tokens/output_tokens distributions "
                      "(a request mix)", minimum=2),
    "mix_seed": _k("serving", INT, 0, "seed of the request mix's draws (jax.random)", minimum=0),
    "requests_per_day": _k("serving", NUM, None, "requests served per day (sets the replicas and their load)",
                           minimum=0.0, unit="request/d"),
    "ttft_target_s": _k("serving", NUM, None, "latency target: time to first token", positive=True, unit="s"),
    "tpot_target_s": _k("serving", NUM, None, "latency target: time per output token after the first",
                        positive=True, unit="s"),
    "serve_hardware": _k("serving", STR, None, "accelerator id for serving; default [cluster] hardware"),
    "weight_precision": _k("serving", STR, "bf16", "stored weights: bf16, fp8 (FP8 GEMMs), int8 or int4 "
                           "(weight-only, 16-bit GEMMs)", choices=("bf16", "fp16", "fp8", "int8", "int4")),
    "kv_precision": _k("serving", STR, "bf16", "KV-cache number format", choices=("bf16", "fp16", "fp8")),
    "replica_devices": _k("serving", INT, None, "devices per replica (weights split over them); default: searched "
                          "over 1, 2, 4, 8", positive=True),
    "concurrency": _k("serving", INT, None, "sequences batched together per replica; default: searched over "
                      "1 to 1,024 (powers of 2) within the KV cache", positive=True),
    "serve_objective": _k("serving", STR, "co2e", "what the configuration search minimises: co2e or energy per "
                          "request", choices=("co2e", "energy")),
})
SECTIONS = ("model", "training", "cluster", "site", "lifecycle", "quality", "serving")
LAYOUT_KEYS = ("tp", "pp", "ep", "microbatch", "recompute", "interleave", "shard_optimizer", "sequence_parallel",
               "cp", "etp", "zero_stage")
LAYOUT_DEFAULTS = {"tp": 1, "pp": 1, "ep": 1, "microbatch": 1, "recompute": "selective", "interleave": 1,
                   "shard_optimizer": True, "sequence_parallel": True, "cp": 1, "etp": None, "zero_stage": None}
# layout keys the search enumerates (the others are settings: none given = the class default)
SEARCHED_LAYOUT_KEYS = LAYOUT_KEYS
RECOMPUTE_CODE = {"none": 0, "selective": 1, "full": 2}
# what a layout is chosen for ([study] objective, --objective), and the output it minimises
OBJECTIVE_OUTPUT = {"co2e": "total_tco2e", "time": "train_days", "energy": "energy_mwh"}
ARCH_KEYS = ("layers", "d_model", "heads", "vocab", "seq_len")
def read_toml(path) -> dict:
    """Read a TOML file; unreadable or invalid files are a SpecError naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise SpecError(path, None, None, "file not found") from None
    except IsADirectoryError:
        raise SpecError(path, None, None, "is a folder, not a TOML file") from None
    except OSError as exc:
        raise SpecError(path, None, None, f"cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise SpecError(path, None, None, "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(path, None, None, f"is not valid TOML: {exc}") from None


def check_value(file, name: str, value, section=None):
    """Check one value against its key's rule; returns it normalised (int/float/str/bool)."""
    key = KEYS[name]
    section = section or key.section
    err = lambda msg: SpecError(file, section, name, msg)  # noqa: E731
    if key.kind == WHEN:
        return check_start(file, section, value, SpecError)
    if key.kind == BOOL:
        if not isinstance(value, bool):
            raise err(f"must be true or false, not {value!r}")
        return value
    if key.kind == STR:
        if not isinstance(value, str):
            raise err(f"must be a string, not {value!r}")
        if key.choices and value not in key.choices:
            raise err(f"'{value}' is not allowed{closest(value, key.choices)} (allowed: {', '.join(key.choices)})")
        return value
    if key.kind == MIX and isinstance(value, dict):  # its parameters: sweep.uncertainty.distribution
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if key.kind == MIX:
            raise err(f"must be a number or a distribution such as {{dist = \"lognormal\", median = 800, "
                      f"sigma = 0.9}}, not {value!r}")
        raise err(f"must be a number, not {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise err(f"must be a finite number, not {value}")
    if key.kind == INT:
        if isinstance(value, float):
            if value != int(value):
                raise err(f"must be a whole number, not {value}")
            value = int(value)
    else:
        value = float(value)
    if key.positive and value <= 0:
        raise err(f"must be greater than 0, not {value}")
    if key.minimum is not None and value < key.minimum:
        raise err(f"must be at least {key.minimum}, not {value}")
    if key.maximum is not None and value > key.maximum:
        raise err(f"must be at most {key.maximum}, not {value}")
    return value


def check_sections(file, doc: dict, allowed_extra=()) -> dict[str, dict]:
    """Check section names and that every key belongs to its section; returns {section: {key: value}}."""
    allowed = SECTIONS + tuple(allowed_extra)
    out = {}
    for section, body in doc.items():
        if section not in allowed:
            raise SpecError(file, section, None, f"unknown section{closest(section, allowed)} (allowed: "
                            + ", ".join(f"[{s}]" for s in allowed) + ")")
        if not isinstance(body, dict):
            raise SpecError(file, None, section, f"must be a section [{section}], not a value")
        if section in SECTIONS:
            for key, value in body.items():
                if key not in KEYS or KEYS[key].section != section:
                    own = [k for k, v in KEYS.items() if v.section == section]
                    hint = ""
                    if key in KEYS:
                        hint = f"; '{key}' belongs in [{KEYS[key].section}]"
                    else:
                        hint = closest(key, own)
                    raise SpecError(file, section, key, f"unknown key{hint} (allowed in [{section}]: {', '.join(own)})")
                check_value(file, key, value, section)
        out[section] = body
    return out


def flat_values(doc: dict) -> dict[str, Any]:
    """{key: value} over the estimate sections, normalised by check_value."""
    flat = {}
    for section in SECTIONS:
        for key, value in doc.get(section, {}).items():
            flat[key] = value
    return flat


def resolve(file, flat: dict[str, Any], db, *, where: dict[str, str] | None = None,
            grid_keys: set[str] = frozenset()) -> dict[str, Any]:
    """Fill defaults and check the rules that span keys; returns every key with a value (None = unset).

    ``flat`` maps key → value (already type-checked). ``where`` maps key → the section it was given
    in (``grid`` for grid keys) so errors point at the right place. Categorical keys may be given as
    lists when called for a grid point; this function is called per distinct value combination.
    """
    where = where or {}
    sec = lambda k: where.get(k, KEYS[k].section)  # noqa: E731
    err = lambda k, msg: SpecError(file, sec(k), k, msg)  # noqa: E731
    v = {k: (flat.get(k, KEYS[k].default)) for k in KEYS}
    for k in KEYS:
        if flat.get(k) is not None:
            v[k] = check_value(file, k, flat[k], sec(k))

    sized = v["params"] is not None
    if not sized:
        for k in ARCH_KEYS:
            if v[k] is None:
                raise err(k, "is required (or give [model] params and active_params for a model known only by size)")
    if v["active_params"] is not None and not sized:
        raise SpecError(file, sec("active_params"), "active_params", "needs [model] params as well")
    if sized and v["active_params"] is not None and v["active_params"] > v["params"]:
        raise err("active_params", f"({v['active_params']:g}) cannot exceed params ({v['params']:g})")
    if v["d_model"] is not None and v["heads"] is not None:
        if v["head_dim"] is None:
            if v["d_model"] % v["heads"] and not grid_keys & {"d_model", "heads"}:
                raise err("heads", f"({v['heads']}) must divide d_model ({v['d_model']}) unless head_dim is given")
            v["head_dim"] = v["d_model"] // v["heads"] if not v["d_model"] % v["heads"] else v["d_model"] / v["heads"]
        if v["kv_heads"] is None:
            v["kv_heads"] = v["heads"]
        if v["heads"] % v["kv_heads"] and not grid_keys & {"heads", "kv_heads"}:
            raise err("kv_heads", f"({v['kv_heads']}) must divide heads ({v['heads']})")
    if v["d_ff"] is None and v["d_model"] is not None:
        v["d_ff"] = default_d_ff(v["d_model"])
    if v["expert_d_ff"] is None:
        v["expert_d_ff"] = v["d_ff"]
    if v["top_k"] > v["experts"] and not grid_keys & {"top_k", "experts"}:
        raise err("top_k", f"({v['top_k']}) cannot exceed experts ({v['experts']})")
    if v["tokens"] is None:
        raise err("tokens", "is required")

    for k in ("hardware", "devices"):
        if v[k] is None:
            raise err(k, "is required")
    if v["hardware"] not in db.accelerators:
        raise err("hardware", f"unknown hardware '{v['hardware']}'{closest(v['hardware'], db.accelerators)} "
                  "(see: carbon-sweep hardware list)")
    peaks = db.precisions(v["hardware"])
    if v["precision"] not in peaks:
        raise err("precision", f"'{v['precision']}': hardware '{v['hardware']}' has no published "
                  f"{v['precision']} peak (allowed: {', '.join(peaks)})")
    if v["host"] is not None and v["host"] not in db.hosts:
        raise err("host", f"unknown host '{v['host']}'{closest(v['host'], db.hosts)} (allowed: {', '.join(db.hosts)})")

    layout_given = any(v[k] is not None for k in LAYOUT_KEYS)
    v["layout_given"] = layout_given
    v["layout_complete"] = all(v[k] is not None for k in LAYOUT_KEYS if k not in ("etp", "zero_stage", "cp"))
    if (v["cp"] is not None and v["seq_len"] is not None and v["seq_len"] % v["cp"]
            and not grid_keys & {"cp", "seq_len"}):
        raise err("cp", f"({v['cp']}) must divide seq_len ({v['seq_len']}): each device holds seq_len/cp tokens")
    if (v["zero_stage"] is not None and v["shard_optimizer"] is not None
            and bool(v["zero_stage"] >= 1) != bool(v["shard_optimizer"])):
        raise err("zero_stage", f"({v['zero_stage']}) contradicts shard_optimizer = "
                  f"{str(v['shard_optimizer']).lower()} (ZeRO stage 1 and above shard the optimizer states)")
    if v["etp"] is not None and v["experts"] is not None and v["experts"] <= 1 and not grid_keys & {"experts"}:
        raise err("etp", "applies to mixture-of-experts models only (experts > 1)")
    v["goodput"] = resolved_goodput(v, db, mfu_given=v["mfu"] is not None or "mfu" in grid_keys)
    if v["calibration"] is not None:
        v["calibration"] = str(calibration_path(file, v["calibration"], sec("calibration")))
    if v["mfu"] is None and sized and not _has_arch(v):
        raise err("mfu", "is required when the model is given by params only (the layout model needs the architecture)")
    if v["mfu"] is None and v["global_batch"] is None:
        raise SpecError(file, sec("global_batch"), "global_batch",
                        "is required to model the layout (or give [cluster] mfu)")

    if v["region"] is None and (v["carbon_intensity"] is None or v["pue"] is None):
        missing = "carbon_intensity" if v["carbon_intensity"] is None else "pue"
        raise SpecError(file, sec("region"), "region",
                        f"is required unless carbon_intensity and pue are given ({missing} is missing)")
    if v["offer"] is not None:
        offers = db.tables.get("prices.csv", {})
        if v["offer"] not in offers:
            raise err("offer", f"unknown offer '{v['offer']}'{closest(v['offer'], offers)} "
                      "(see: carbon-sweep prices list)")
        if offers[v["offer"]]["hardware"] != v["hardware"] and "hardware" not in grid_keys:
            raise err("offer", f"'{v['offer']}' is an offer of {offers[v['offer']]['hardware']}, "
                      f"not of {v['hardware']}")
    if v["pause_fraction"] and v["start"] is None and "start" not in grid_keys:
        raise err("pause_fraction", 'needs [site] start (a date, or "best"): the pause picks hours of the year')
    laws = db.docs.get("scaling_laws.toml", {})
    if v["law"] not in laws:
        raise err("law", f"unknown law '{v['law']}'{closest(v['law'], laws)} (allowed: {', '.join(laws)})")
    if v["region"] is not None and v["region"] not in db.regions:
        raise err("region", f"unknown region '{v['region']}'{closest(v['region'], db.regions)} "
                  "(see: carbon-sweep regions list)")
    return v


def resolved_goodput(v: dict, db, mfu_given: bool) -> float:
    """The run's goodput: given, else 1 when the MFU is given (a measured MFU already averages the
    booked time), else the cited default (hardware_db/defaults.toml goodput)."""
    if v.get("goodput") is not None:
        return float(v["goodput"])
    return 1.0 if mfu_given else float(db.default("goodput"))


def calibration_path(file, value: str, section: str) -> Path:
    """A [cluster] calibration file, relative to the spec's folder, checked to exist and parse."""
    path = Path(value)
    if not path.is_absolute() and isinstance(file, (str, Path)) and str(file) != "<spec>":
        path = Path(file).parent / path
    if not path.is_file():
        raise SpecError(file, section, "calibration", f"'{value}': no such file ({path})")
    doc = read_toml(path)
    if not isinstance(doc, dict) or not any(isinstance(t, dict) for t in doc.values()):
        raise SpecError(file, section, "calibration", f"'{value}': no calibration tables (write one with "
                        "carbon-sweep calibrate)")
    return path


def _has_arch(v) -> bool:
    return all(v[k] is not None for k in ARCH_KEYS)


def load_estimate(path, db=None) -> dict[str, Any]:
    """Read and validate an estimate spec; returns the resolved values (see ``resolve``), with the
    ``[uncertainty]`` section as written under ``"uncertainty"`` (None without one; sweep.uncertainty
    validates it when the estimate starts)."""
    db = db or hardware_db.load()
    doc = read_toml(path)
    check_sections(path, doc, allowed_extra=("uncertainty",))
    v = resolve(path, flat_values(doc), db)
    v["uncertainty"] = doc.get("uncertainty")
    return v
