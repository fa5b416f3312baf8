"""Layout-aware step time, MFU and memory of LLM training (dense and mixture-of-experts).

One training step of a decoder-only transformer on ``devices`` accelerators laid out as tensor
parallel ``tp`` × pipeline ``pp`` × data parallel ``dp = devices/(tp·pp)``, with expert parallel
``ep`` carved out of dp (Megatron-core ordering: tp innermost, then dp, then pp). The step is the
critical path of the slowest pipeline stage (the last one: it also holds the output layer):

    step = compute + comm_exposed + bubble                                         [s]
    compute      = m·(t_layers_compute + t_head) + t_optimizer
    comm_exposed = m·(t_tp + t_a2a + t_p2p) + t_dp_exposed
    bubble       = (pp − 1)/interleave · t_microbatch           (interleaved 1F1B; Narayanan 2021 §2.2)

with m = global_batch/(dp·microbatch) micro-batches per replica and t_microbatch the time of one
micro-batch (forward + backward + recomputation + its tensor/expert/p2p communication) on a stage.

Pieces (each function below gives its equation, units and source):
- matrix multiplies: t = FLOPs/(peak·gemm_eff_max)·(1 + ½·W/(m·n)) + bytes/(hbm_bw·hbm_eff) with
  bytes = bytes_per_value·(m·k + k·n + m·n) and W the output elements of one wave of tiles: thin or
  small matrices (tp-split projections, attention with head_dim ≤ 128, small MoE experts) run below
  peak (tail wave, unhidden operand traffic);
- memory-bound kernels (norms, softmax, dropout, activations, residuals, router, token permutation,
  cross-entropy, optimizer): element traffic at hbm_bw·hbm_eff;
- tensor-parallel collectives: 2 all-reduce volumes of b·s·h per layer and micro-batch forward
  (all-gather + reduce-scatter under sequence parallelism move the same volume), 2 backward hidden
  under the weight-gradient GEMMs where they fit, 2 more exposed with full recomputation
  (Korthikanti et al. 2022 §4.2.2 and Table 4), over NVLink or across nodes when tp > node;
- pipeline: point-to-point activations (scatter/gather split by tp, Narayanan 2021 §4.1) and the
  bubble; data parallel: ring all-reduce / reduce-scatter+all-gather of gradients over the
  inter-node network, minus the part hidden under the last micro-batch's backward pass;
- MoE (experts tensor-split like the dense FFN, expert tensor parallel = tp, Megatron-core default):
  router, all-to-all dispatch and combine per MoE layer (forward and backward), expert matrices
  of tokens·top_k·imbalance/experts rows (small → low efficiency), imbalance factor on the busiest
  device (Lepikhin et al. 2021 GShard; Fedus et al. 2022 Switch; Rajbhandari et al. 2022 DeepSpeed-MoE);
- memory per device: weights, gradients, optimizer states (sharded over dp or not), activations per
  recompute mode (Korthikanti et al. 2022 Table 2, generalised to GQA and gated FFNs) times the
  micro-batches in flight on the first stage, plus a fixed reserve.

Calibrated constants (``cal``; values and sources in hardware_db/calibration.toml):
    gemm_eff_max            fraction of peak a large matrix multiply reaches (fitted, per class)
    hbm_eff                 fraction of HBM bandwidth streaming kernels reach
    link_eff                fraction of link bandwidth collectives reach (NCCL bus bandwidth)
    collective_latency_s    latency per collective hop (log2 of the group)
    grad_bytes              bytes per gradient value (kept and reduced)
    dp_overlap              fraction of the last micro-batch's backward that hides the dp reduction
    moe_imbalance           busiest-device expert load / mean (capacity factor)
    memory_reserve_bytes    CUDA context, NCCL buffers, allocator fragmentation per device
    gemm_wave_elements      output elements of one wave of GEMM tiles (SMs × tile), per class
The optimizer's traffic, OPTIMIZER_BYTES_PER_PARAM = 58, is derived (optimizer_time), not fitted.
Use ``step_jit`` (jax.jit of ``step``) for large layout sets: eager evaluation costs ~2 s.
Optional layout key ``flash_attention`` (0/1, default 0 = Megatron 2021-22 unfused attention).

Every argument broadcasts; no Python loop over layouts; infeasible points get a reason code from
kernels.reasons (lower codes first, except ``batch_too_small_for_dp`` which is disjoint from
``microbatch_not_dividing_batch``) and finite or NaN values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from kernels import flops as _flops
from kernels.reasons import CODE

OPTIMIZER_BYTES_PER_PARAM = 58.0  # see optimizer_time


def _get(m: Mapping, key: str, default):
    return m[key] if key in m else default


def _safe_div(a, b):
    """a/b with b replaced by 1 where it is 0 (infeasible points only)."""
    return a / jnp.where(b == 0, 1.0, b)


def _divides(d, n):
    """1 where the integer-valued d divides n (d ≥ 1), else 0."""
    d1 = jnp.maximum(d, 1.0)
    q = n / d1
    return (d >= 1) & (jnp.abs(q - jnp.round(q)) < 1e-6)


# --------------------------------------------------------------------------------------------
# Device-level kernels
# --------------------------------------------------------------------------------------------
def gemm_time(m, n, k, batch, bytes_per_value, peak_flops, hbm_bw_bytes_s, cal):
    """Time of ``batch`` matrix multiplies (m×k)·(k×n) [s].

    t = F/(peak·gemm_eff_max)·(1 + ½·W/(batch·m·n)) + batch·bpv·(m·k + k·n + m·n)/(hbm_bw·hbm_eff)

    with F = 2·m·n·k·batch. Two size effects, both physical: (1) the tail wave — the output is cut
    into tiles spread over the streaming multiprocessors, one wave = W output elements
    (``gemm_wave_elements`` = SMs × tile, e.g. 108 × 128·256 on A100), and on average half a wave
    is wasted (wave quantisation, NVIDIA "Matrix Multiplication Background" guide); (2) operand
    traffic not hidden (a roofline summed, Williams et al. 2009). Large matrices approach
    gemm_eff_max; thin or small ones (tensor-split projections, attention with head_dim ≤ 128,
    MoE experts with few tokens each) run below it. FLOP/s, bytes/s in SI.
    """
    flops = 2.0 * m * n * k * batch
    tail = 1.0 + 0.5 * cal["gemm_wave_elements"] / jnp.maximum(batch * m * n, 1.0)
    traffic = batch * bytes_per_value * (m * k + k * n + m * n)
    return flops * tail / (peak_flops * cal["gemm_eff_max"]) + traffic / (hbm_bw_bytes_s * cal["hbm_eff"])


def stream_time(elements, bytes_per_value, hbm_bw_bytes_s, cal):
    """Memory-bound kernel time: elements·bpv/(hbm_bw·hbm_eff) [s]."""
    return elements * bytes_per_value / (hbm_bw_bytes_s * cal["hbm_eff"])


def group_bandwidth(group, stride, devices_per_node, intra_bw, inter_bw):
    """Per-device bus bandwidth of a ring collective over ``group`` ranks ``stride`` apart [B/s].

    Within a node: intra_bw. Across nodes, NCCL runs one ring per NIC, so the g members of the group
    sharing a node pool their NICs: min(intra_bw, g·inter_bw) with g = clamp(node/stride, 1, group)
    (NCCL ring/tree design; DGX A100: 8 × 200 Gb/s ⇒ ~200 GB/s bus bandwidth for a full node).
    """
    span = group * stride
    g = jnp.clip(devices_per_node / jnp.maximum(stride, 1.0), 1.0, jnp.maximum(group, 1.0))
    across = jnp.minimum(intra_bw, g * inter_bw)
    return jnp.where(span <= devices_per_node, intra_bw, across)


def allreduce_time(nbytes, group, bw, cal):
    """Ring all-reduce (or reduce-scatter + all-gather) time [s]:
    2·(n−1)/n·bytes/(bw·link_eff) + α·log2(n), 0 when n = 1 (Thakur et al. 2005; NCCL)."""
    n = jnp.maximum(group, 1.0)
    t = 2.0 * (n - 1.0) / n * nbytes / (bw * cal["link_eff"]) + cal["collective_latency_s"] * jnp.log2(n)
    return jnp.where(n > 1.0, t, 0.0)


def alltoall_time(nbytes, ep, tp, devices_per_node, intra_bw, inter_bw, cal):
    """All-to-all of ``nbytes`` per device over ``ep`` ranks ``tp`` apart [s].

    A fraction (g−1)/ep of the data stays on the node (NVLink), (ep−g)/ep leaves it through the
    device's own NIC (g = ep peers per node); no aggregation across NICs (DeepSpeed-MoE §5, Tutel).
    t = bytes·((g−1)/ep/intra + (ep−g)/ep/inter)/link_eff + α·log2(ep).
    """
    n = jnp.maximum(ep, 1.0)
    g = jnp.clip(devices_per_node / jnp.maximum(tp, 1.0), 1.0, n)
    t = nbytes * ((g - 1.0) / n / intra_bw + (n - g) / n / inter_bw) / cal["link_eff"]
    t = t + cal["collective_latency_s"] * jnp.log2(n)
    return jnp.where(n > 1.0, t, 0.0)


def optimizer_time(params, hbm_bw_bytes_s, cal):
    """Mixed-precision Adam step over ``params`` parameters on one device [s].

    Traffic per parameter, fp32 main gradients and states (Megatron-LM / apex fused kernels):
    unscale + inf check (r/w 8), gradient norm (r 4), clipping (r/w 8), Adam (r grad, param, m, v;
    w param, m, v: 28), copy to the 16-bit model weights (r 4, w 2), zero the gradients (w 4)
    = OPTIMIZER_BYTES_PER_PARAM = 58 bytes; t = params·58/(hbm_bw·hbm_eff).
    """
    return stream_time(params * OPTIMIZER_BYTES_PER_PARAM, 1.0, hbm_bw_bytes_s, cal)


# --------------------------------------------------------------------------------------------
# Per-layer work of one micro-batch on one device
# --------------------------------------------------------------------------------------------
def attention_gemms(T, b, s, h, heads, kv_dim, d_attn, tp, bpv, peak, bw, cal, flash):
    """Forward matrix-multiply time of one attention block, one micro-batch [s] → (projections, core).

    projections: QKV (T × h → (d_attn + 2·kv_dim)/tp) and output (T × d_attn/tp → h);
    core: QKᵀ and P·V, b·heads/tp batched s×s×head_dim products (Korthikanti 2022 §4.1).
    With flash attention the core keeps the FLOPs but its traffic is Q, K, V, O only (Dao 2022).
    """
    proj = gemm_time(T, (d_attn + 2.0 * kv_dim) / tp, h, 1.0, bpv, peak, bw, cal)
    proj = proj + gemm_time(T, h, d_attn / tp, 1.0, bpv, peak, bw, cal)
    hd = d_attn / heads
    nb = b * heads / tp
    core_plain = gemm_time(s, s, hd, nb, bpv, peak, bw, cal) + gemm_time(s, hd, s, nb, bpv, peak, bw, cal)
    core_flash = 4.0 * nb * s * s * hd / (peak * cal["gemm_eff_max"]) + stream_time(4.0 * nb * s * hd, bpv, bw, cal)
    core_flash = core_flash * (1.0 + 0.5 * cal["gemm_wave_elements"] / (nb * s * hd))
    return proj, jnp.where(flash > 0, core_flash, core_plain)


def ffn_gemm_time(tokens, h, d_ff, ffn_matrices, tp, count, bpv, peak, bw, cal):
    """Forward time of ``count`` FFNs each fed ``tokens`` rows [s]:
    up/gate T × h → (ffn_matrices−1)·d_ff/tp, down T × d_ff/tp → h (Shazeer 2020 for gated FFNs)."""
    up = gemm_time(tokens, (ffn_matrices - 1.0) * d_ff / tp, h, count, bpv, peak, bw, cal)
    down = gemm_time(tokens, h, d_ff / tp, count, bpv, peak, bw, cal)
    return up + down


def layer_stream_elements(T, h, heads, s, d_ff, ffn_matrices, tp, sp, flash):
    """Forward elementwise traffic of one dense layer, one micro-batch [elements] → (rest, attention core).

    rest: 2 layer norms (read+write: 4h), 2 fused bias-dropout-add (read 2h, write h, 1-byte mask:
    7h) — split by tp only under sequence parallelism — and the fused bias-activation, read
    (ffn_matrices−1)·d_ff, write d_ff per token over tp; core: fused scale-mask-softmax (read+write
    heads·s) and attention dropout (read, write, mask: 2.5·heads·s) per token over tp, absent with
    flash attention (Megatron-LM fused kernels; Korthikanti 2022 §4.1 lists the same tensors).
    """
    norm_drop = 11.0 * h * T / jnp.where(sp > 0, tp, 1.0)
    act = ffn_matrices * d_ff * T / tp
    core = jnp.where(flash > 0, 0.0, 4.5 * heads * s * T / tp)
    return norm_drop + act, core


def activation_bytes_per_layer(s, b, h, heads, d_attn, kv_dim, mlp_rows_ff, tp, sp, recompute, flash):
    """Activation memory of one layer, one micro-batch [bytes, 2-byte activations].

    Korthikanti et al. 2022 §4 (Table 2) per component, generalised (d_attn, kv_dim, gated FFN):
      attention  3·s·b·h + 4·s·b·d_attn + 4·s·b·kv_dim   (LN out, Q, K, V, context, dropout mask)
                 + 5·heads·s²·b                           (softmax out, dropout mask and out)
      MLP        3·s·b·h + 2·s·b·mlp_rows_ff               (mlp_rows_ff = ffn_matrices·d_ff, ×top_k·imb for MoE)
      norms      4·s·b·h
    Without sequence parallelism 10·s·b·h of these (norms, masks, the two GEMM inputs) are not split
    by tp. Selective recompute drops the 5·heads·s²·b core (so does flash attention); full recompute
    keeps only the layer input, 2·s·b·h (÷tp with sequence parallelism).
    Check (d_attn = kv_dim = h, d_ff = 4h, gelu): 34·s·b·h + 5·a·s²·b, as in the paper.
    """
    sbh = s * b * h
    attn = 3.0 * sbh + 4.0 * s * b * d_attn + 4.0 * s * b * kv_dim
    mlp = 3.0 * sbh + 2.0 * s * b * mlp_rows_ff
    total = attn + mlp + 4.0 * sbh
    split = jnp.where(sp > 0, total / tp, 10.0 * sbh + (total - 10.0 * sbh) / tp)
    core = jnp.where((recompute >= 1) | (flash > 0), 0.0, 5.0 * heads * s * s * b / tp)
    full = 2.0 * sbh / jnp.where(sp > 0, tp, 1.0)
    return jnp.where(recompute >= 2, full, split + core)


# --------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------
def reason_code(design, layout, dp, micro_batches):
    """First broken rule as an int32 code of kernels.reasons (0 = structurally valid).

    Order: top_k > experts; tp ∤ heads; tp ∤ kv_heads; pp ∤ layers; tp·pp ∤ devices; ep ∤ experts;
    ep ∤ dp; global batch < dp (before the disjoint micro-batch rule); microbatch·dp ∤ batch;
    interleave invalid (v > 1 needs pp > 1, layers % (pp·v) = 0, micro-batches % pp = 0,
    Narayanan 2021 §2.2). Out of memory is applied by ``step``.
    """
    tp, pp, ep = layout["tp"], layout["pp"], layout["ep"]
    v, mb = layout["interleave"], layout["microbatch"]
    B = design["global_batch"]
    dp_ok = _divides(tp * pp, layout["devices"])
    dp1 = jnp.where(dp_ok, dp, 1.0)
    vok = (v == 1) | ((v > 1) & (pp > 1) & _divides(pp * v, design["layers"]) & _divides(pp, micro_batches))
    rules = [
        ("top_k_exceeds_experts", design["top_k"] > jnp.maximum(design["experts"], 1.0)),
        ("tp_not_dividing_heads", ~_divides(tp, design["heads"])),
        ("tp_not_dividing_kv_heads", ~_divides(tp, design["kv_heads"])),
        ("pp_not_dividing_layers", ~_divides(pp, design["layers"])),
        ("devices_not_divisible_by_tp_pp", ~dp_ok),
        ("ep_not_dividing_experts", ~_divides(ep, jnp.maximum(design["experts"], 1.0))),
        ("ep_not_dividing_dp", ~_divides(ep, dp1)),
        ("batch_too_small_for_dp", B < dp1),
        ("microbatch_not_dividing_batch", ~_divides(dp1 * mb, B)),
        ("interleave_invalid", ~vok | (v < 1)),
    ]
    code = jnp.zeros(jnp.broadcast_shapes(*[jnp.shape(c) for _, c in rules]), dtype=jnp.int32)
    for name, bad in reversed(rules):
        code = jnp.where(bad, jnp.int32(CODE[name]), code)
    return code


def memory_per_device(design, layout, dp, micro_batches, cal):
    """Peak memory of the busiest device (first pipeline stage) [bytes].

    weights + gradients + optimizer states + activations + reserve, with
      params on the device = non-expert layer params/(pp·tp) + expert params/(pp·tp·ep)
                             + embedding table(s)/tp (both when pp = 1, one per end stage otherwise);
      bytes per param: bytes_per_value (weights) + grad_bytes + optimizer 12 (fp32 master, Adam m, v;
      8 when training in fp32), the optimizer part divided by dp (expert part by dp/ep) when
      shard_optimizer (Rajbhandari et al. 2020 ZeRO-1; Megatron distributed optimizer: 6 + 12/d);
      activations = per-layer bytes (activation_bytes_per_layer) × layers/pp × min(pp, m)
                    × (1 + (pp−1)/(pp·v) if interleaved) (Korthikanti 2022 §4.2.3),
      + one layer's full activations while recomputing (full recompute)
      + fp32 logits 4·s·b·vocab/tp when pp = 1.
    """
    L, h, V = design["layers"], design["d_model"], design["vocab"]
    s, heads = design["seq_len"], design["heads"]
    d_attn = heads * design["head_dim"]
    kv_dim = design["kv_heads"] * design["head_dim"]
    fm, E, k = design["ffn_matrices"], jnp.maximum(design["experts"], 1.0), design["top_k"]
    n_moe, f_e = design["moe_layers"], design["expert_d_ff"]
    bpv = design["bytes_per_value"]
    tp, pp, ep, b = layout["tp"], layout["pp"], layout["ep"], layout["microbatch"]
    rc, v = layout["recompute"], layout["interleave"]
    sp = layout["sequence_parallel"] * (tp > 1)
    flash = _get(layout, "flash_attention", 0.0)

    emb_all = V * h * (2.0 - design["tied_embeddings"])
    expert_total = n_moe * E * fm * h * f_e
    layer_nonexp = design["params"] - emb_all - h - expert_total
    emb_stage = jnp.where(pp > 1, V * h, emb_all)
    p_nonexp = layer_nonexp / (pp * tp) + emb_stage / tp
    p_exp = expert_total / (pp * tp * ep)
    p_dev = p_nonexp + p_exp
    opt_bytes = jnp.where(bpv >= 4, 8.0, 12.0)
    shard = layout["shard_optimizer"] > 0
    dp1 = jnp.maximum(dp, 1.0)
    opt = opt_bytes * (p_nonexp / jnp.where(shard, dp1, 1.0) + p_exp / jnp.where(shard, jnp.maximum(dp1 / ep, 1.0), 1.0))
    states = p_dev * (bpv + cal["grad_bytes"]) + opt

    imb = cal["moe_imbalance"]
    moe_frac = _safe_div(n_moe, L)
    ff_dense = fm * design["d_ff"]
    ff_moe = fm * f_e * (k * imb + design["shared_experts"]) + 2.0 * h * k * imb  # + permuted copies
    ff_rows = (1.0 - moe_frac) * ff_dense + moe_frac * ff_moe
    act_full_layer = activation_bytes_per_layer(s, b, h, heads, d_attn, kv_dim, ff_rows, tp, sp, 0.0, flash)
    act_layer = activation_bytes_per_layer(s, b, h, heads, d_attn, kv_dim, ff_rows, tp, sp, rc, flash)
    in_flight = jnp.minimum(pp, micro_batches)
    inter = jnp.where(v > 1, 1.0 + _safe_div(pp - 1.0, pp * v), 1.0)
    act = act_layer * (L / pp) * in_flight * inter
    act = act + jnp.where(rc >= 2, act_full_layer, 0.0)
    act = act + jnp.where(pp > 1, 0.0, 4.0 * s * b * V / tp)
    act = act * jnp.maximum(bpv, 2.0) / 2.0
    return states + act + cal["memory_reserve_bytes"], p_dev


def step(design: Mapping, hw: Mapping, layout: Mapping, cal: Mapping) -> dict:
    """Time, throughput, MFU/HFU, memory and feasibility of one training step.

    Units: seconds, bytes, tokens/s; MFU = B·s·train_flops_per_token/(step·devices·peak) with
    kernels.flops (6·N_mm + 12·l·s·d_attn, no recomputation); HFU adds recompute_flops_per_token.
    See the module docstring for the decomposition; reason 0 = feasible (kernels.reasons).
    """
    f = lambda x: jnp.asarray(x) * 1.0  # noqa: E731  keep float32 inputs float32
    d = {key: f(val) for key, val in design.items()}
    w = {key: f(val) for key, val in hw.items()}
    lay = {key: f(val) for key, val in layout.items()}

    L, h, V, s = d["layers"], d["d_model"], d["vocab"], d["seq_len"]
    heads, hd = d["heads"], d["head_dim"]
    d_attn, kv_dim = heads * hd, d["kv_heads"] * hd
    fm, d_ff = d["ffn_matrices"], d["d_ff"]
    E, k = jnp.maximum(d["experts"], 1.0), d["top_k"]
    n_moe, f_e, n_sh = d["moe_layers"], d["expert_d_ff"], d["shared_experts"]
    B, bpv = d["global_batch"], d["bytes_per_value"]
    peak, bw = w["peak_flops"], w["hbm_bw_bytes_s"]
    intra, inter, node = w["intra_bw_bytes_s"], w["inter_bw_bytes_s"], w["devices_per_node"]
    devices, tp, pp, ep = lay["devices"], lay["tp"], lay["pp"], lay["ep"]
    b, rc, v = lay["microbatch"], lay["recompute"], lay["interleave"]
    sp = lay["sequence_parallel"] * (tp > 1)
    shard = lay["shard_optimizer"]
    flash = _get(lay, "flash_attention", 0.0)

    dp = devices / (tp * pp)
    dp_int = jnp.maximum(jnp.floor(dp), 1.0)
    m = jnp.maximum(B / (dp_int * b), 1.0)  # micro-batches per replica
    reason = reason_code(d, lay, dp, m)
    T = b * s  # tokens per micro-batch
    imb = cal["moe_imbalance"]

    # ---- forward work of one layer (dense and MoE), one micro-batch: GEMMs g, streams m ----
    proj, core_g = attention_gemms(T, b, s, h, heads, kv_dim, d_attn, tp, bpv, peak, bw, cal, flash)
    rest_el, core_el = layer_stream_elements(T, h, heads, s, d_ff, fm, tp, sp, flash)
    core = core_g + stream_time(core_el, bpv, bw, cal)  # what selective recompute redoes
    dense_g = proj + core_g + ffn_gemm_time(T, h, d_ff, fm, tp, 1.0, bpv, peak, bw, cal)
    dense_m = stream_time(rest_el + core_el, bpv, bw, cal)
    experts_dev = E / ep
    rows_per_expert = T * k * imb / experts_dev  # busiest device: T·k·imb assignments over E/ep experts
    moe_g = proj + core_g + ffn_gemm_time(rows_per_expert, h, f_e, fm, tp, experts_dev, bpv, peak, bw, cal)
    moe_g = moe_g + jnp.where(n_sh > 0, ffn_gemm_time(T, h, n_sh * f_e, fm, tp, 1.0, bpv, peak, bw, cal), 0.0)
    moe_g = moe_g + gemm_time(T, E, h, 1.0, bpv, peak, bw, cal)  # router
    attn_el = rest_el - fm * d_ff * T / tp
    moe_el = attn_el + core_el + fm * f_e * (T * k * imb + n_sh * T) / tp + 4.0 * k * imb * h * T / tp + 4.0 * E * T
    moe_m = stream_time(moe_el, bpv, bw, cal)

    # ---- tensor-parallel collectives: 2 all-reduce volumes forward, 2 backward ----
    bw_tp = group_bandwidth(tp, 1.0, node, intra, inter)
    ar = allreduce_time(T * h * bpv, tp, bw_tp, cal)
    c_fwd = 2.0 * ar
    # ---- expert all-to-all: dispatch + combine per MoE layer, forward and backward ----
    a2a_bytes = T * k * imb * h * bpv / tp
    a2a = alltoall_time(a2a_bytes, ep, tp, node, intra, inter, cal)

    full = rc >= 2

    def layer_time(g, mem):
        """(compute, exposed tp comm) of one layer and micro-batch: forward g + m + c;
        backward 2·g + 2·m with its tp collectives hidden under the weight-gradient GEMMs (time g)
        where they fit (Megatron async all-reduce; Korthikanti 2022 Table 4: 22B layer forward
        7.7 ms, backward 11.9 ms); recompute redoes the forward (full, with its collectives exposed)
        or the attention core (selective)."""
        comp = 3.0 * (g + mem) + jnp.where(full, g + mem, jnp.where(rc >= 1, core, 0.0))
        comm = c_fwd + jnp.maximum(c_fwd - g, 0.0) + jnp.where(full, c_fwd, 0.0)
        return comp, comm

    comp_dense, comm_dense = layer_time(dense_g, dense_m)
    comp_moe, comm_moe = layer_time(moe_g, moe_m)
    layers_stage = L / pp
    moe_stage = n_moe / pp
    compute_mb = (layers_stage - moe_stage) * comp_dense + moe_stage * comp_moe
    # output layer (last stage): logits T × h → V/tp, fwd + 2× bwd, fp32 cross-entropy traffic
    head = 3.0 * gemm_time(T, V / tp, h, 1.0, bpv, peak, bw, cal) + stream_time(6.0 * T * V / tp, 4.0, bw, cal)
    compute_mb = compute_mb + head
    tp_mb = (layers_stage - moe_stage) * comm_dense + moe_stage * comm_moe + 2.0 * ar  # + embedding, logits
    a2a_mb = moe_stage * 2.0 * a2a * (2.0 + jnp.where(full, 1.0, 0.0))

    # ---- pipeline point-to-point: activation forward, gradient backward, per virtual stage ----
    p2p_bw = jnp.where(tp * pp * dp_int <= node, intra, inter)
    p2p_bytes = T * h * bpv / tp  # scatter/gather (or sequence parallel) split over tp
    p2p_mb = jnp.where(pp > 1, 2.0 * v * (p2p_bytes / (p2p_bw * cal["link_eff"]) + cal["collective_latency_s"]), 0.0)

    t_mb = compute_mb + tp_mb + a2a_mb + p2p_mb  # slowest (last) stage: steady-state period
    t_mb_avg = t_mb - head * (1.0 - 1.0 / pp)  # the head spread over the stages
    bubble = (pp - 1.0) / v * t_mb_avg  # warm-up + cool-down pass through the other stages once

    # ---- data-parallel gradient reduction and optimizer ----
    mem, p_dev = memory_per_device(d, lay, dp, m, cal)
    expert_total = n_moe * E * fm * h * f_e
    p_exp = expert_total / (pp * tp * ep)
    p_nonexp = p_dev - p_exp
    bw_dp = group_bandwidth(dp_int, tp, node, intra, inter)
    edp = jnp.maximum(dp_int / ep, 1.0)
    bw_edp = group_bandwidth(edp, tp * ep, node, intra, inter)
    t_dp = allreduce_time(p_nonexp * cal["grad_bytes"], dp_int, bw_dp, cal)
    t_dp = t_dp + allreduce_time(p_exp * cal["grad_bytes"], edp, bw_edp, cal)
    last_bwd = 2.0 / 3.0 * compute_mb
    dp_exposed = jnp.maximum(t_dp - cal["dp_overlap"] * last_bwd, 0.0)
    opt_params = jnp.where(shard > 0, p_nonexp / dp_int + p_exp / edp, p_dev)
    t_opt = optimizer_time(opt_params, bw, cal)

    compute_s = m * compute_mb + t_opt
    comm_exposed_s = m * (tp_mb + a2a_mb + p2p_mb) + dp_exposed
    bubble_s = bubble
    step_time_s = compute_s + comm_exposed_s + bubble_s

    # ---- throughput and utilisation ----
    tokens = B * s
    mf = _flops.train_flops_per_token(d["active_params"], V, h, d["tied_embeddings"], L, s, d_attn)
    hf = mf + _flops.recompute_flops_per_token(rc, d["active_params"], V, h, d["tied_embeddings"], L, s, d_attn)
    tokens_per_s = tokens / step_time_s
    mfu = tokens_per_s * mf / (devices * peak)
    hfu = tokens_per_s * hf / (devices * peak)

    oom = mem > w["hbm_bytes"]
    reason = jnp.where((reason == 0) & oom, jnp.int32(CODE["out_of_memory"]), reason).astype(jnp.int32)
    return {
        "step_time_s": step_time_s,
        "compute_s": compute_s,
        "comm_exposed_s": comm_exposed_s,
        "bubble_s": bubble_s,
        "tp_comm_s": m * tp_mb,
        "ep_comm_s": m * a2a_mb,
        "pp_comm_s": m * p2p_mb,
        "dp_comm_s": t_dp,
        "dp_exposed_s": dp_exposed,
        "optimizer_s": t_opt,
        "bubble_fraction": bubble_s / step_time_s,
        "tokens_per_s": tokens_per_s,
        "mfu": mfu,
        "hfu": hfu,
        "memory_bytes": mem,
        "dp": dp,
        "micro_batches": m,
        "reason": reason,
    }


step_jit = jax.jit(step)


# --------------------------------------------------------------------------------------------
# Candidate layouts
# --------------------------------------------------------------------------------------------
def _divisors(n: int) -> list[int]:
    n = int(n)
    return [x for x in range(1, n + 1) if n % x == 0]


def enumerate_layouts(
    devices,
    layers,
    heads,
    kv_heads,
    experts,
    global_batch,
    devices_per_node,
    *,
    max_tp=None,
    microbatches=(1, 2, 4, 8, 16),
    interleaves=(1, 2, 3, 4, 6, 8),
    recompute_modes=(0, 1, 2),
    shard_optimizer=(0, 1),
    sequence_parallel=(0, 1),
    max_ep=None,
) -> dict[str, np.ndarray]:
    """Every candidate layout for one design and device count, as equal-length 1-D int arrays.

    tp: divisors of heads up to max_tp (default 2·devices_per_node, i.e. at most two nodes);
    pp: divisors of layers; only (tp, pp) with tp·pp dividing devices are kept (others have no
    integral dp: skipped, not counted). ep: divisors of experts up to dp (ep ∤ dp kept, flagged by
    ``step``); 1 for dense models. microbatch: the given sizes dividing global_batch/dp; when dp
    does not divide the batch (or it is below dp) one micro-batch-1 entry is kept so ``step`` flags
    it. interleave: 1, and v > 1 only when pp > 1 and pp·v divides layers. sequence_parallel only
    with tp > 1 (0 otherwise). tp ∤ kv_heads and out-of-memory points are kept (flagged by ``step``).
    """
    devices, layers, heads = int(devices), int(layers), int(heads)
    experts = max(int(experts), 1)
    global_batch, node = int(global_batch), int(devices_per_node)
    max_tp = 2 * node if max_tp is None else int(max_tp)
    rows = []
    for tp in _divisors(heads):
        if tp > max_tp or devices % tp:
            continue
        for pp in _divisors(layers):
            if (devices // tp) % pp:
                continue
            dp = devices // (tp * pp)
            eps = [e for e in _divisors(experts) if e <= dp and (max_ep is None or e <= max_ep)] or [1]
            if global_batch % dp == 0:
                mbs = [mb for mb in microbatches if (global_batch // dp) % mb == 0]
            else:
                mbs = [1]
            vs = [v for v in interleaves if v == 1 or (pp > 1 and layers % (pp * v) == 0)]
            sps = sorted({x if tp > 1 else 0 for x in sequence_parallel})
            for ep in eps:
                for mb in mbs:
                    for v in vs:
                        for rc in recompute_modes:
                            for so in shard_optimizer:
                                for sp in sps:
                                    rows.append((tp, pp, ep, mb, rc, v, so, sp))
    arr = np.array(rows, dtype=np.int64).reshape(-1, 8)
    names = ("tp", "pp", "ep", "microbatch", "recompute", "interleave", "shard_optimizer", "sequence_parallel")
    out = {name: arr[:, i].copy() for i, name in enumerate(names)}
    out["devices"] = np.full(len(arr), devices, dtype=np.int64)
    return out
