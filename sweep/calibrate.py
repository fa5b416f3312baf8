"""Measured training runs against the layout model, and a least-squares fit of its constants.

A runs file (``hardware_db/throughput_runs_modern.toml`` is one; ``carbon-sweep calibrate RUNS.toml``
takes a user's own) holds ``[[run]]`` tables: hardware id, precision, the model's architecture, the
parallel layout and one measured quantity (tokens/s per device, step time, MFU, or GPU-hours for a
token count). Each run becomes a design, a hardware row and its candidate layouts (a layout key the
source did not publish, e.g. recompute "unknown", lists the alternatives and the model's fastest
feasible one is taken, as the authors report tuned configurations); all runs are evaluated by one
call of ``kernels.layout.step`` over a runs × candidates array, so the fit differentiates the whole
set at once with jax.grad and minimises the sum of squared log errors with optax's L-BFGS.
Leave-one-out refits (one per run, vmapped) give the hold-out error.

Fitted constants are per calibration class (hardware_db/calibration.toml ``[class.X]``), bounded to
(0, 1) through a logistic map, with a weak pull (``PRIOR_WEIGHT``) towards the starting value so a
constant that no run informs stays where it was instead of drifting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

import hardware_db
from kernels.architecture import moe_layer_count, param_counts
from kernels.flops import train_flops_per_token
from kernels.layout import step

from .calibration import calibration_for, class_of
from .spec import CP_COMM_CODE, SpecError

# constants the fit may move: fractions in (0, 1) (a logistic map) or times in seconds (a log map)
FITTABLE = {"gemm_eff_max": "fraction", "attention_eff": "fraction", "gemm_eff_fp8": "fraction",
            "grouped_gemm_eff": "fraction", "overlap_eff": "fraction", "hbm_eff": "fraction",
            "layer_latency_s": "seconds", "moe_layer_latency_s": "seconds", "moe_sync_latency_s": "seconds",
            "moe_expert_latency_s": "seconds", "moe_expert_fp8_latency_s": "seconds"}
# the grouped-GEMM efficiency (it sat at 1) and the dense layer latency add nothing to the fit
DEFAULT_FIT = ("attention_eff", "gemm_eff_fp8", "gemm_eff_max", "overlap_eff", "moe_layer_latency_s",
               "moe_sync_latency_s", "moe_expert_latency_s", "moe_expert_fp8_latency_s")
# A per-class constant that only some runs measure (INFORMED_BY) moves only in a class with at least
# MIN_INFORMING_RUNS of them; elsewhere it keeps its packaged value (calibration.toml: a datasheet or
# MAMF figure). The others move with any run.
# The 16-bit GEMM efficiency is measured by dense 16-bit runs: in MoE runs it is entangled with the
# experts' grouped GEMMs, the dispatch and the router, and fitted on those alone (the B200 class has
# only GPT-OSS's two BF16 MoE rows) it drifted to unphysical values (0.28 of peak).
INFORMED_BY = {
    "gemm_eff_max": lambda r: r.kind == "dense" and r.precision in ("bf16", "fp16"),
    "gemm_eff_fp8": lambda r: r.precision == "fp8",
    "grouped_gemm_eff": lambda r: r.kind == "moe",
}
MIN_INFORMING_RUNS = 2
# A class whose runs do not measure a constant, but whose calibration.toml entry for it gives a
# kernel benchmark (``benchmark``: for gemm_eff_max the maximum achievable matmul FLOPS), takes that
# benchmark times the ratio fitted/benchmark of the classes that are measured (geometric mean): what
# a framework reaches of a GEMM benchmark carries over between GPU generations, where the raw
# benchmark does not (H100: MAMF 0.80 of peak, 0.56 fitted on the runs; B200's raw MAMF 0.78 made its
# BF16 runs ~30 % fast).
TRANSFER = ("gemm_eff_max",)
DEFAULT_SHARED = ("overlap_eff", "moe_layer_latency_s", "moe_sync_latency_s", "moe_expert_latency_s",
                  "moe_expert_fp8_latency_s")
LATENCY_START_S = 1e-4  # a fitted time that starts at 0 starts here (the log map needs a positive value)
PRIOR_WEIGHT = 1e-3
ITERATIONS = 60
WARM_ITERATIONS = 20  # a left-out fit started from the full fit begins near its optimum
RECOMPUTE = {"none": (0,), "selective": (1,), "full": (2,), "unknown": (0, 1, 2)}
QUANTITIES = ("published_tokens_per_s_per_device", "published_step_time_s", "published_mfu", "published_gpu_hours")
MICROBATCHES = (1, 2, 4, 8)
INTERLEAVES = (1, 2, 4, 8)


# The keys of a runs file's [[run]] tables (hardware_db/SCHEMA.md). READ: what the loader turns into
# the model's inputs; RECORDED: kept for the reader and never modelled (a source table's published GA
# column, the model's name, features the layout model has no term for). Any other key is refused with
# the allowed ones: a misspelt key would otherwise be ignored and the run fitted with a default.
RUN_KEYS = ("id", "source", "licence", "hardware", "precision", "peak_ref", "kind", "framework", "model",
            "model_source", "layout", "notes", "tokens", "balanced_routing") + QUANTITIES
RUN_RECORDED = ("published_tflops_per_device", "published_gpu_hours_total",
                "published_gpu_hours_per_trillion_tokens")
MODEL_KEYS = ("layers", "d_model", "heads", "kv_heads", "head_dim", "d_ff", "ffn", "vocab", "seq_len",
              "tied_embeddings", "experts", "top_k", "expert_d_ff", "shared_experts", "shared_expert_d_ff",
              "first_dense_layers", "moe_every", "dropout", "sliding_window", "window_layers", "mla", "linear_bias")
MODEL_RECORDED = ("name", "mtp_layers", "attention_sinks", "qk_norm")
LAYOUT_KEYS = ("devices", "tp", "pp", "cp", "vp", "interleave", "ep", "etp", "dp", "microbatch", "global_batch",
               "recompute", "distributed_optimizer", "fsdp", "flash_attention", "overlap", "ep_overlap",
               "moe_a2a_overlap", "pp_schedule", "moe_dispatcher", "ep_dedup", "moe_host_sync", "cuda_graphs",
               "cp_comm_type", "moe_imbalance", "grad_reduce_in_fp32", "gemm_per_expert", "activation_offload_layers")
LAYOUT_RECORDED = ("ga", "local_batch", "batch_per_dp", "tokens_per_batch", "async_tp", "fsdp_shard")
# true/false keys (the spec's booleans: sweep/spec.py), and the words a string-valued key may start with
BOOLEANS = {"": ("balanced_routing",),
            "model": ("tied_embeddings", "dropout", "linear_bias", "attention_sinks", "qk_norm"),
            "layout": ("fsdp", "flash_attention", "overlap", "ep_overlap", "moe_a2a_overlap", "ep_dedup",
                       "moe_host_sync", "grad_reduce_in_fp32", "gemm_per_expert")}
# Megatron-core's dispatchers: flex = DeepEP / HybridEP (per-node dedup, no host sync); alltoall
# (MoEAlltoAllTokenDispatcher) synchronises with the host; the allgather dispatcher is not modelled
DEDUP_DISPATCHERS = ("flex", "deepep", "hybridep")
# CUDA-graph captures of whole layers (see _layouts); the others are not whole layers
WHOLE_LAYER_GRAPHS = ("on", "full_iteration", "local")
FIRST_WORDS = {
    "moe_dispatcher": ("alltoall",) + DEDUP_DISPATCHERS,
    "cuda_graphs": WHOLE_LAYER_GRAPHS + ("off", "none", "unknown", "transformer_engine"),
    # the context-parallel exchanges the model has (Ulysses-style a2a is not modelled)
    "cp_comm_type": tuple(CP_COMM_CODE),
}
KINDS = ("dense", "moe")
PEAK_REFS = ("bf16_dense", "fp8_dense", "none")


def _first_word(value) -> str:
    return str(value).lower().replace("(", " ").split()[0] if str(value).strip() else ""


def _check_keys(run, file, i):
    """Refuse what the loader would ignore or misread: unknown keys (with the closest allowed one),
    a boolean written as a string or number, a word outside a string key's vocabulary, a ``dp`` that
    is not devices / (tp · pp · cp), ``ep_overlap`` and ``moe_a2a_overlap`` disagreeing."""
    tables = (("", run, RUN_KEYS, RUN_RECORDED), ("model", run.get("model"), MODEL_KEYS, MODEL_RECORDED),
              ("layout", run.get("layout"), LAYOUT_KEYS, LAYOUT_RECORDED))
    for section, table, read, recorded in tables:
        if not isinstance(table, dict):
            continue  # a missing or malformed table is reported where it is read
        for key in table:
            if key not in read and key not in recorded:
                raise _err(file, i, run, f"{section + '.' if section else ''}{key}",
                           f"is not a runs-file key{hardware_db.closest(key, read + recorded)} (allowed: "
                           f"{', '.join(read)}; recorded, not modelled: {', '.join(recorded)})")
        for key in BOOLEANS[section]:
            if key in table and not isinstance(table[key], bool):
                raise _err(file, i, run, f"{section + '.' if section else ''}{key}",
                           f"must be true or false, not {table[key]!r}")
    for key, allowed in (("kind", KINDS), ("peak_ref", PEAK_REFS)):
        if key in run and run[key] not in allowed:
            raise _err(file, i, run, key, f"{run[key]!r} is not allowed (allowed: {', '.join(allowed)})")
    model = run.get("model")
    if isinstance(model, dict) and "mla" in model and not isinstance(model["mla"], dict):
        raise _err(file, i, run, "model.mla", f"must be a table such as {{v_head_dim = 128}}, not {model['mla']!r}")
    lay = run.get("layout")
    if not isinstance(lay, dict):
        return
    for key, allowed in FIRST_WORDS.items():
        if key in lay and (isinstance(lay[key], bool) and key == "cuda_graphs"):
            continue  # true / false: whole layers graphed or not, as the spec's cuda_graphs
        if key in lay and (not isinstance(lay[key], str) or _first_word(lay[key]) not in allowed):
            raise _err(file, i, run, f"layout.{key}", f"{lay[key]!r}: its first word must be one of "
                       f"{', '.join(allowed)} (a note may follow)")
    dist = lay.get("distributed_optimizer", True)
    if not isinstance(dist, bool) and dist != "unknown":
        raise _err(file, i, run, "layout.distributed_optimizer", f"must be true, false or 'unknown', not {dist!r}")
    if "ep_overlap" in lay and "moe_a2a_overlap" in lay and lay["ep_overlap"] != lay["moe_a2a_overlap"]:
        raise _err(file, i, run, "layout.ep_overlap", f"is {str(lay['ep_overlap']).lower()} but moe_a2a_overlap "
                   f"(Megatron-core's name for the same switch) is {str(lay['moe_a2a_overlap']).lower()}: give one")
    for key, low in (("moe_imbalance", 1.0), ("activation_offload_layers", 0.0)):
        v = lay.get(key, low)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < low:
            raise _err(file, i, run, f"layout.{key}", f"must be a number >= {low:g}, not {v!r}")
    sizes = [lay.get(k, 1) for k in ("devices", "tp", "pp", "cp")]
    if "dp" in lay and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in sizes):
        dp = sizes[0] / (sizes[1] * sizes[2] * sizes[3])
        if lay["dp"] != dp:
            raise _err(file, i, run, "layout.dp", f"is {lay['dp']!r}, but devices / (tp · pp · cp) = {dp:g}")


@dataclass(frozen=True)
class Run:
    """One measured run, ready for the kernel: design/hardware floats, candidate layouts as arrays."""

    id: str
    kind: str  # dense | moe
    hardware: str
    precision: str
    cls: str  # calibration class ('' = the defaults)
    quantity: str  # tokens_per_s_per_device | mfu (what `published` is)
    published: float
    booked: bool  # published from booked GPU-hours: compare with goodput applied
    design: dict
    hw: dict
    layouts: dict
    source: str = ""
    notes: tuple = field(default_factory=tuple)


def _err(file, i, run, key, msg):
    return SpecError(file, f"run {i + 1} ({run.get('id', '?')})", key, msg)


def _num(run, file, i, section, key, default=None, positive=True, table=None):
    """A number from ``run[section][key]`` (or from ``table``, a nested table named by ``section``)."""
    if table is None:
        table = run.get(section, {}) if section else run
    v = table.get(key, default)
    if v is None:
        raise _err(file, i, run, f"{section + '.' if section else ''}{key}", "is required")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
        raise _err(file, i, run, f"{section + '.' if section else ''}{key}",
                   f"must be a {'positive ' if positive else ''}number, not {v!r}")
    return float(v)


def _design(run, file, i):
    """The layout model's design mapping from a run's [model] table (GQA, gated FFN, MoE; DeepSeek's
    MLA approximated as multi-head projections of width heads × v_head_dim with a single KV head,
    said in the row's notes)."""
    m = run.get("model")
    if not isinstance(m, dict):
        raise _err(file, i, run, "model", "must be a table of the architecture")
    g = lambda k, d=None, pos=True: _num(run, file, i, "model", k, d, pos)  # noqa: E731
    layers, d_model, heads = g("layers"), g("d_model"), g("heads")
    notes = []
    head_dim = g("head_dim", d_model / heads)
    kv_heads = g("kv_heads", heads)
    if isinstance(m.get("mla"), dict):
        head_dim = _num(run, file, i, "model.mla", "v_head_dim", head_dim, table=m["mla"])
        kv_heads = 1.0
        notes.append("MLA approximated as heads × v_head_dim projections with one KV head")
    ffn = m.get("ffn", "gelu")
    if ffn not in ("gelu", "swiglu", "squared_relu"):
        raise _err(file, i, run, "model.ffn", f"'{ffn}': allowed gelu, swiglu, squared_relu")
    fm = 3.0 if ffn == "swiglu" else 2.0
    experts = g("experts", 1)
    expert_d_ff = g("expert_d_ff", 0, pos=False) or g("d_ff")
    shared = g("shared_experts", 0, pos=False)
    if shared and m.get("shared_expert_d_ff"):
        shared = shared * g("shared_expert_d_ff") / expert_d_ff  # width as a multiple of one expert
    d_ff = g("d_ff", 0, pos=False) or expert_d_ff
    vocab, seq_len = g("vocab"), g("seq_len")
    tied = float(bool(m.get("tied_embeddings", False)))
    top_k = g("top_k", 1)
    moe_every, first_dense = g("moe_every", 1), g("first_dense_layers", 0, pos=False)
    params, active = param_counts(layers, d_model, heads, kv_heads, head_dim, d_ff, fm, vocab, tied, experts,
                                  top_k, moe_every, first_dense, shared, expert_d_ff, bool(m.get("linear_bias")))
    bpv = float(hardware_db.BYTES_PER_VALUE[run["precision"]])
    design = {
        "layers": layers, "d_model": d_model, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
        "d_ff": d_ff, "ffn_matrices": fm, "vocab": vocab, "seq_len": seq_len, "tied_embeddings": tied,
        "experts": experts, "top_k": top_k, "expert_d_ff": expert_d_ff, "shared_experts": shared,
        "moe_layers": float(moe_layer_count(layers, experts, moe_every, first_dense)),
        "params": float(params), "active_params": float(active), "bytes_per_value": bpv,
        "dropout": float(bool(m.get("dropout", False))),  # today's LLMs train without dropout
        "sliding_window": g("sliding_window", 0, pos=False),
        "window_layers": g("window_layers", 1.0, pos=False) if m.get("sliding_window") else 0.0,
    }
    return design, tuple(notes)


def _choices(value, allowed, run, file, i, key):
    """A layout value as a tuple of candidates: a number, a list of numbers, or 'unknown' (= allowed)."""
    if value == "unknown" or value is None:
        return tuple(allowed)
    vals = value if isinstance(value, list) else [value]
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 1 or int(v) != v:
            raise _err(file, i, run, f"layout.{key}", f"must be a positive integer, a list of them or "
                       f"'unknown', not {value!r}")
    return tuple(int(v) for v in vals)


def _layouts(run, design, file, i):
    """Candidate layouts of a run (cartesian product of what the source leaves open)."""
    lay = run.get("layout")
    if not isinstance(lay, dict):
        raise _err(file, i, run, "layout", "must be a table of the parallel layout")
    devices = _num(run, file, i, "layout", "devices")
    B = _num(run, file, i, "layout", "global_batch", lay.get("global_batch"))
    design["global_batch"] = B
    ints = {}
    for key, default in (("tp", 1), ("pp", 1), ("cp", 1), ("ep", 1)):
        ints[key] = _choices(lay.get(key, default), (default,), run, file, i, key)
    ints["interleave"] = _choices(lay.get("vp", lay.get("interleave", "unknown")), INTERLEAVES, run, file, i, "vp")
    ints["microbatch"] = _choices(lay.get("microbatch", "unknown"), MICROBATCHES, run, file, i, "microbatch")
    etp = lay.get("etp")
    rc = lay.get("recompute", "unknown")
    if rc not in RECOMPUTE:
        raise _err(file, i, run, "layout.recompute", f"'{rc}': allowed {', '.join(RECOMPUTE)}")
    fsdp = lay.get("fsdp") is True
    dist = lay.get("distributed_optimizer", True)
    zeros = (3,) if fsdp else ((1,) if dist is True else ((0,) if dist is False else (0, 1)))
    combos = []
    for tp in ints["tp"]:
        for pp in ints["pp"]:
            for cp in ints["cp"]:
                for ep in ints["ep"]:
                    for v in ints["interleave"]:
                        for mb in ints["microbatch"]:
                            for r in RECOMPUTE[rc]:
                                for z in zeros:
                                    e = tp if etp is None else int(etp)
                                    combos.append((tp, pp, cp, ep, e, v, mb, r, z))
    arr = np.array(combos, dtype=np.float64)
    names = ("tp", "pp", "cp", "ep", "etp", "interleave", "microbatch", "recompute", "zero_stage")
    out = {n: arr[:, j] for j, n in enumerate(names)}
    k = len(arr)
    out["devices"] = np.full(k, devices)
    out["shard_optimizer"] = (out["zero_stage"] >= 1).astype(np.float64)
    out["sequence_parallel"] = (out["tp"] > 1).astype(np.float64)  # Megatron-core recipes pair SP with TP
    out["flash_attention"] = np.full(k, float(lay.get("flash_attention", 1)))
    out["overlap"] = np.full(k, float(lay.get("overlap", 1)))  # Megatron-core / FSDP2 defaults overlap
    dualpipe = "dualpipe" in str(lay.get("pp_schedule", "")).lower()  # DeepSeek: all-to-all under compute
    a2a_overlap = lay.get("ep_overlap", lay.get("moe_a2a_overlap", False))  # the spec's name, or Megatron-core's
    out["ep_overlap"] = np.full(k, float(a2a_overlap or dualpipe))
    # the dispatcher is the field's first word ("flex (hybridep) ...", "alltoall (...)"; FIRST_WORDS):
    # a "flex" later in a note is no flex dispatcher
    dedup = _first_word(lay.get("moe_dispatcher", "")) in DEDUP_DISPATCHERS or dualpipe  # DeepSeek: node-limited
    out["ep_dedup"] = np.full(k, float(lay.get("ep_dedup", dedup)))
    # Megatron-core's alltoall dispatcher (the default when no flex backend is set) synchronises with
    # the host every MoE layer; DeepEP/HybridEP (flex) and DeepSeek's own kernels do not, nor do the
    # padded, graph-captured MoE layers of runs with whole-layer CUDA graphs: "on" (NeMo's per-layer
    # enable_cuda_graph), "full_iteration" (Megatron-core's whole-iteration capture) or "local"
    # (Megatron-core's own capture, cuda_graph_impl = "local": each TransformerLayer, or with scope
    # "full_iteration" the whole iteration, as 25.11 spelled it); those runs have no per-layer launch
    # latency either (kernels.layout, cuda_graphs). TE-scoped partial graphs (attention, router) are
    # not whole layers
    cg = lay.get("cuda_graphs", "")
    graphs = cg if isinstance(cg, bool) else _first_word(cg) in WHOLE_LAYER_GRAPHS
    sync = design["experts"] > 1 and not dedup and not graphs
    out["moe_host_sync"] = np.full(k, float(lay.get("moe_host_sync", sync)))
    out["cuda_graphs"] = np.full(k, float(graphs))
    # context parallelism by an exposed all-gather (Llama 3) or Megatron-core's overlapped ring ("p2p")
    out["cp_allgather"] = np.full(k, CP_COMM_CODE.get(_first_word(lay.get("cp_comm_type", "p2p")), 0.0))
    imb = lay.get("moe_imbalance", 1.0 if run.get("balanced_routing", True) else math.nan)
    out["moe_imbalance"] = np.full(k, float(imb))
    # NVIDIA's performance recipes reduce gradients in 16 bits (grad_reduce_in_fp32 = False, NeMo
    # scripts/performance); other frameworks keep fp32 main gradients unless the run says otherwise
    framework = str(run.get("framework", "")).lower()
    nvidia = "nemo" in framework or "megatron-bridge" in framework
    fp32_grads = lay.get("grad_reduce_in_fp32", not nvidia)
    out["grad_bytes"] = np.full(k, 4.0 if fp32_grads else 2.0)
    # Megatron-core (NeMo, Megatron-Bridge) runs its experts through Transformer Engine's GroupedLinear,
    # one cuBLAS GEMM per local expert (TEGroupedMLP, its default with moe_grouped_gemm and TE)
    megatron = nvidia or "megatron" in framework
    out["gemm_per_expert"] = np.full(k, float(lay.get("gemm_per_expert", design["experts"] > 1 and megatron)))
    out["offload_layers"] = np.full(k, float(lay.get("activation_offload_layers", 0)))

    return out


def load_runs(doc: dict, db, file="runs") -> tuple[list[Run], list[dict]]:
    """(runs, skipped): every [[run]] of a runs document as a Run; rows whose hardware the database
    does not have (or lacks a peak for) are skipped with the reason, not guessed."""
    runs, skipped = [], []
    rows = doc.get("run")
    if not isinstance(rows, list) or not rows:
        raise SpecError(file, "run", None, "needs at least one [[run]] table")
    seen = set()
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not r.get("id"):
            raise SpecError(file, f"run {i + 1}", "id", "every run needs an id")
        if r["id"] in seen:
            raise _err(file, i, r, "id", "is used by an earlier run")
        seen.add(r["id"])
        _check_keys(r, file, i)
        hw_id = r.get("hardware")
        precision = r.get("precision", "bf16")
        if precision not in hardware_db.PRECISIONS:
            raise _err(file, i, r, "precision", f"'{precision}': allowed {', '.join(hardware_db.PRECISIONS)}")
        if hw_id not in db.accelerators:
            skipped.append({"id": r["id"], "reason": f"hardware '{hw_id}' is not in accelerators.csv"})
            continue
        if precision not in db.precisions(hw_id):
            raise _err(file, i, r, "precision", f"'{precision}': hardware '{hw_id}' has no published "
                       f"{precision} peak")
        q = [k for k in QUANTITIES if k in r]
        if not q:
            raise _err(file, i, r, "published_tokens_per_s_per_device",
                       f"a run needs one measured quantity: {', '.join(QUANTITIES)}")
        design, notes = _design(r, file, i)
        layouts = _layouts(r, design, file, i)
        hw = db.accelerator_si(hw_id, precision)
        hw = {k: float(hw[k]) for k in ("peak_flops", "hbm_bytes", "hbm_bw_bytes_s", "intra_bw_bytes_s",
                                       "inter_bw_bytes_s", "devices_per_node")}
        hw["peak_bf16_flops"] = db.peak_tflops(hw_id, "bf16") * 1e12
        if not all(math.isfinite(v) and v > 0 for v in hw.values()):
            skipped.append({"id": r["id"], "reason": f"a figure of '{hw_id}' the layout model needs is unpublished"})
            continue
        quantity, booked = "tokens_per_s_per_device", False
        if "published_tokens_per_s_per_device" in r:
            published = _num(r, file, i, None, "published_tokens_per_s_per_device")
        elif "published_step_time_s" in r:
            published = design["global_batch"] * design["seq_len"] / _num(r, file, i, None, "published_step_time_s") \
                / layouts["devices"][0]
        elif "published_mfu" in r:
            quantity, published = "mfu", _num(r, file, i, None, "published_mfu")
        else:
            tokens = _num(r, file, i, None, "tokens")
            published = tokens / (_num(r, file, i, None, "published_gpu_hours") * 3600.0)
            booked = True
        runs.append(Run(r["id"], r.get("kind", "moe" if design["experts"] > 1 else "dense"), hw_id, precision,
                        class_of(db, hw_id), quantity, published, booked, design, hw, layouts,
                        r.get("source", ""), notes))
    return runs, skipped


# --------------------------------------------------------------------------------------------
# Vectorised prediction
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Batch:
    """All runs as padded arrays: design/hw [N, 1], layouts [N, K] (pad = a copy of the first)."""

    design: dict
    hw: dict
    layouts: dict
    valid: np.ndarray  # [N, K] bool
    cls_index: np.ndarray  # [N] int
    classes: tuple
    published: np.ndarray
    is_mfu: np.ndarray
    booked: np.ndarray
    flops_per_token: np.ndarray


def batch(runs: list[Run]) -> Batch:
    n, k = len(runs), max(len(r.layouts["tp"]) for r in runs)
    classes = tuple(sorted({r.cls for r in runs}))
    design = {key: np.array([[r.design[key]] for r in runs]) for key in runs[0].design}
    hw = {key: np.array([[r.hw[key]] for r in runs]) for key in runs[0].hw}
    lay, valid = {}, np.zeros((n, k), bool)
    for key in runs[0].layouts:
        a = np.empty((n, k))
        for i, r in enumerate(runs):
            v = r.layouts[key]
            a[i, :len(v)] = v
            a[i, len(v):] = v[0]
        lay[key] = a
    for i, r in enumerate(runs):
        valid[i, :len(r.layouts["tp"])] = True
    d = design
    d_attn = d["heads"] * d["head_dim"]
    fpt = np.asarray(train_flops_per_token(d["active_params"], d["vocab"], d["d_model"], d["tied_embeddings"],
                                           d["layers"], d["seq_len"], d_attn))[:, 0]
    return Batch(design, hw, lay, valid, np.array([classes.index(r.cls) for r in runs]), classes,
                 np.array([r.published for r in runs]), np.array([r.quantity == "mfu" for r in runs]),
                 np.array([r.booked for r in runs]), fpt)


def predict(b: Batch, cal: dict, goodput: float = 1.0):
    """Predicted value of each run's published quantity ([N]; NaN where no candidate is feasible),
    and the index of the chosen candidate. ``cal`` maps each constant to an [N, 1] array."""
    out = step(b.design, b.hw, b.layouts, cal)
    ok = (out["reason"] == 0) & b.valid
    t = jnp.where(ok, out["step_time_s"], jnp.inf)
    j = jnp.argmin(t, axis=1)
    t_best = jnp.min(t, axis=1)
    devices = b.layouts["devices"][:, 0]
    tps = b.design["global_batch"][:, 0] * b.design["seq_len"][:, 0] / t_best / devices
    tps = jnp.where(b.booked, tps * goodput, tps)
    mfu = tps * b.flops_per_token / b.hw["peak_flops"][:, 0]
    value = jnp.where(b.is_mfu, mfu, tps)
    return jnp.where(jnp.isfinite(t_best), value, jnp.nan), j, out


def packaged_constants(db, runs: list[Run]) -> dict:
    """Each run's constants as [N, 1] arrays (the database's for its hardware, before any fit)."""
    per = [calibration_for(db, r.hardware) for r in runs]
    keys = sorted(set().union(*per))
    return {k: np.array([[p.get(k, math.nan)] for p in per]) for k in keys}


def _to_theta(name, value):
    if FITTABLE[name] == "seconds":
        return np.log(value if value > 0 else LATENCY_START_S)
    p = np.clip(value, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def _from_theta(name, theta):
    return jnp.exp(theta) if FITTABLE[name] == "seconds" else jax.nn.sigmoid(theta)


def fit(db, runs: list[Run], constants=DEFAULT_FIT, goodput: float = 1.0, leave_one_out: bool = True,
        shared=DEFAULT_SHARED) -> dict:
    """Least-squares fit of ``constants`` (per class) to the runs: minimise Σ (ln pred − ln pub)²
    + PRIOR_WEIGHT·Σ (θ − θ₀)² over θ = logit(fraction) or ln(seconds), by optax L-BFGS through
    jax.grad.

    Constants in ``shared`` take one value for every class (software properties: overlap, latencies,
    grouped-GEMM kernels), the others one per class (hardware properties).

    Returns {constants: {class: {name: value}}, rows: [...], in_sample and loo summaries}."""
    import optax

    b = batch(runs)
    base = packaged_constants(db, runs)
    constants = tuple(c for c in constants if c in FITTABLE)
    n_cls = len(b.classes)
    def start_value(c, sel):
        return _to_theta(c, float(np.nanmean(base[c][sel]))) if c in base else _to_theta(c, 0.5)

    start = {c: (np.array([start_value(c, np.ones(len(runs), bool))]) if c in shared else
                 np.array([start_value(c, b.cls_index == k) for k in range(n_cls)])) for c in constants}
    theta0 = {c: jnp.asarray(v) for c, v in start.items()}
    idx = jnp.asarray(b.cls_index)
    log_pub = jnp.log(jnp.asarray(b.published))
    moves = {c: informed(runs, c, b.classes, c in shared) for c in constants}

    bench = {c: benchmarks(db, b.classes, c) for c in constants if c in TRANSFER and c not in shared}
    carried = {c: ~moves[c] & np.isfinite(v) for c, v in bench.items()
               if np.any(moves[c] & np.isfinite(v)) and np.any(~moves[c] & np.isfinite(v))}

    def transferred(c, theta):
        """Per class: the class's benchmark × the measured classes' geometric-mean fitted/benchmark."""
        v = bench[c]
        src = moves[c] & np.isfinite(v)
        log_ratio = jnp.mean(jnp.log(_from_theta(c, theta[c])[src]) - np.log(v[src]))
        return jnp.asarray(np.where(carried[c], v, 1.0)) * jnp.exp(log_ratio)

    def cal_of(theta):
        cal = {k: jnp.asarray(v) for k, v in base.items()}
        for c in constants:
            fitted = _from_theta(c, theta[c])[0 * idx if c in shared else idx][:, None]
            packaged = jnp.asarray(base[c]) if c in base else fitted
            if c in carried:
                packaged = jnp.where(jnp.asarray(carried[c])[idx][:, None], transferred(c, theta)[idx][:, None],
                                     packaged)
            cal[c] = jnp.where(jnp.asarray(moves[c])[0 * idx if c in shared else idx][:, None], fitted, packaged)
        return cal

    def residuals(theta):
        pred, _, _ = predict(b, cal_of(theta), goodput)
        return jnp.log(pred) - log_pub

    def loss(theta, w):
        r = residuals(theta)
        r = jnp.where(jnp.isfinite(r), r, 0.0)
        prior = sum(jnp.sum((theta[c] - theta0[c]) ** 2) for c in constants)
        return jnp.sum(w * r * r) + PRIOR_WEIGHT * prior

    def solve(w, start=theta0, iterations=ITERATIONS):
        f = lambda th: loss(th, w)  # noqa: E731
        opt = optax.lbfgs()
        vg = optax.value_and_grad_from_state(f)

        def body(carry, _):
            th, st = carry
            value, grad = vg(th, state=st)
            upd, st = opt.update(grad, st, th, value=value, grad=grad, value_fn=f)
            return (optax.apply_updates(th, upd), st), value

        (th, _), _ = jax.lax.scan(body, (start, opt.init(start)), None, length=iterations)
        return th

    feasible = np.isfinite(np.asarray(residuals(theta0)))
    w_all = jnp.asarray(feasible, dtype=jnp.float64)
    if constants:
        theta = jax.jit(solve)(w_all)
    else:
        theta = theta0
    pred_fit = np.asarray(predict(b, cal_of(theta), goodput)[0])
    pred_start = np.asarray(predict(b, cal_of(theta0), goodput)[0])
    loo = np.full(len(runs), np.nan)
    if leave_one_out and constants:
        masks = jnp.asarray(np.where(np.eye(len(runs), dtype=bool), 0.0, feasible.astype(float)))
        # each left-out fit is solved from two starts, the packaged constants and the full fit, and
        # keeps the one with the lower loss on its own runs: the max(·, 0) of exposed communication
        # makes the loss piecewise, and one start can stop on a worse piece (the held-out run enters
        # neither loss nor choice)
        from_start = jax.jit(jax.vmap(solve))(masks)
        from_fit = jax.jit(jax.vmap(lambda w: solve(w, theta, WARM_ITERATIONS)))(masks)
        losses = jax.jit(jax.vmap(loss))
        better = losses(from_fit, masks) < losses(from_start, masks)
        thetas = jax.tree_util.tree_map(
            lambda a, c: jnp.where(better.reshape((-1,) + (1,) * (a.ndim - 1)), c, a), from_start, from_fit)

        def held(th, i):
            return predict(b, cal_of(th), goodput)[0][i]

        loo = np.asarray(jax.jit(jax.vmap(held))(thetas, jnp.arange(len(runs))))
    values = {b.classes[k] or "default": {c: float(_from_theta(c, theta[c][0 if c in shared else k]))
                                          for c in constants if moves[c][0 if c in shared else k]}
              for k in range(n_cls)}
    derived = {}
    for c in carried:
        t = np.asarray(transferred(c, theta))
        for k in np.flatnonzero(carried[c]):
            derived.setdefault(b.classes[k] or "default", {})[c] = float(t[k])
    rows = []
    for i, r in enumerate(runs):
        err = lambda p: 100.0 * (p - r.published) / r.published if np.isfinite(p) else math.nan  # noqa: E731
        rows.append({"id": r.id, "kind": r.kind, "hardware": r.hardware, "precision": r.precision,
                     "class": r.cls or "default", "quantity": r.quantity, "published": r.published,
                     "predicted_start": float(pred_start[i]), "predicted": float(pred_fit[i]),
                     "error_start_pct": err(pred_start[i]), "error_pct": err(pred_fit[i]),
                     "loo_predicted": float(loo[i]), "loo_error_pct": err(loo[i]), "feasible": bool(feasible[i])})
    return {"constants": values, "derived": derived, "fitted": list(constants), "rows": rows,
            "summary": summarise(rows)}


def benchmarks(db, classes: tuple, constant: str) -> np.ndarray:
    """Per class: the ``benchmark`` field of its calibration.toml entry for ``constant`` (the class's
    entry, else the top-level one; NaN where none gives it)."""
    doc = db.docs.get("calibration.toml", {})

    def one(cls):
        entry = doc.get("class", {}).get(cls, {}).get(constant)
        if not (isinstance(entry, dict) and "benchmark" in entry):
            entry = doc.get(constant)
        return float(entry["benchmark"]) if isinstance(entry, dict) and "benchmark" in entry else math.nan

    return np.array([one(cls) for cls in classes])


def informed(runs: list[Run], constant: str, classes: tuple, shared: bool) -> np.ndarray:
    """Per class (one entry when ``shared``): whether the runs measure ``constant``, so the fit may
    move it there: at least MIN_INFORMING_RUNS of the runs INFORMED_BY names for it; any run for the
    others (as a user's file of one run fits them)."""
    measures = INFORMED_BY.get(constant, lambda r: True)
    least = MIN_INFORMING_RUNS if constant in INFORMED_BY else 1
    if shared:
        return np.array([sum(map(measures, runs)) >= least])
    return np.array([sum(measures(r) for r in runs if r.cls == cls) >= least for cls in classes])


def summarise(rows: list[dict]) -> dict:
    """Mean and max absolute error (%) in-sample, at the start and leave-one-out; all, dense, MoE."""
    out = {}
    for group in ("all", "dense", "moe"):
        sel = [r for r in rows if group == "all" or r["kind"] == group]
        out[group] = {"n": len(sel), "infeasible": sum(not r["feasible"] for r in sel)}
        for key in ("error_start_pct", "error_pct", "loo_error_pct"):
            e = np.array([abs(r[key]) for r in sel], float)
            e = e[np.isfinite(e)]
            out[group][key.replace("_pct", "")] = {"mean": float(e.mean()) if len(e) else math.nan,
                                                   "max": float(e.max()) if len(e) else math.nan}
    return out


def packaged_predictions(db, runs: list[Run], goodput: float = 1.0) -> list[dict]:
    """Each run predicted with the database's constants (no fit): {id, kind, hardware, precision,
    quantity, published, predicted, error_pct, feasible, source}."""
    b = batch(runs)
    pred = np.asarray(predict(b, {k: jnp.asarray(v) for k, v in packaged_constants(db, runs).items()}, goodput)[0])
    rows = []
    for r, p in zip(runs, pred):
        ok = bool(np.isfinite(p))
        rows.append({"id": r.id, "kind": r.kind, "hardware": r.hardware, "precision": r.precision,
                     "quantity": r.quantity, "published": r.published, "predicted": float(p),
                     "error_pct": 100.0 * (p - r.published) / r.published if ok else math.nan,
                     "feasible": ok, "source": r.source})
    return rows


def class_ids(db, cls: str) -> list[str]:
    """The accelerator-id prefixes of a calibration class."""
    return list(db.docs.get("calibration.toml", {}).get("class", {}).get(cls, {}).get("ids", []))


def calibration_toml(result: dict, db, runs_file: str) -> str:
    """A calibration file (TOML) of the fitted constants, one ``[class.X]`` table per class, each
    value with its provenance: read with ``--db FOLDER`` (as FOLDER/calibration.toml) or
    ``[cluster] calibration = "file"``."""
    s = result["summary"]
    fit_note = (f"in-sample mean abs. error {s['all']['error']['mean']:.1f} % (max {s['all']['error']['max']:.1f} %), "
                f"leave-one-out {s['all']['loo_error']['mean']:.1f} % (max {s['all']['loo_error']['max']:.1f} %) "
                f"over {s['all']['n']} runs")
    lines = ["# Layout-model constants fitted by `carbon-sweep calibrate` (least squares on log throughput,",
             f"# optax L-BFGS through the JAX model) to the runs of {runs_file}.",
             f"# {fit_note}.", "# Use: carbon-sweep ... --db FOLDER (as FOLDER/calibration.toml), or in a spec",
             '# [cluster] calibration = "this-file.toml".', ""]
    fitted_src = "fitted by carbon-sweep calibrate on " + runs_file
    derived = result.get("derived", {})
    for cls in dict.fromkeys([*result["constants"], *derived]):
        entries = {k: (v, fitted_src) for k, v in result["constants"].get(cls, {}).items()}
        for k, v in derived.get(cls, {}).items():
            entries[k] = (v, f"derived by carbon-sweep calibrate on {runs_file}: this class's benchmark times "
                             "the fitted/benchmark ratio of the classes whose runs measure it")
        if cls == "default":
            for key, (value, src) in entries.items():
                lines += [f"[{key}]", f"value = {value!r}", f"source = {_q(src)}", f"notes = {_q(fit_note)}", ""]
            continue
        lines.append(f"[class.{cls}]")
        ids = class_ids(db, cls)
        if ids:
            lines.append("ids = [" + ", ".join(_q(i) for i in ids) + "]")
        for key, (value, src) in entries.items():
            lines.append(f"{key} = {{ value = {value!r}, source = {_q(src)}, notes = {_q(fit_note)} }}")
        lines.append("")
    return "\n".join(lines)


def _q(text: str) -> str:
    """A TOML basic string (JSON's escaping is a subset TOML accepts)."""
    import json

    return json.dumps(text, ensure_ascii=False)
