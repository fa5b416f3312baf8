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
# fraction of the s×s score blocks a causal flash-attention kernel computes (the upper triangle is
# skipped; Dao 2023, FlashAttention-2 §3.1): a geometric fact, not a fitted constant
CAUSAL_FRACTION = 0.5
# a flash-attention backward pass recomputes the scores and runs five matrix products to the
# forward's two: 2.5× the forward FLOPs (Dao 2023, FlashAttention-2 §4.1: "the backward pass has
# 2.5× the FLOPs of the forward"), where a GEMM's backward is 2×: the extra half a forward, counted fact
FLASH_BWD_EXTRA = 0.5


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
def gemm_time(m, n, k, batch, bytes_per_value, peak_flops, hbm_bw_bytes_s, cal, eff=None, cast_bytes=0.0):
    """Time of ``batch`` matrix multiplies (m×k)·(k×n) [s].

    t = F/(peak·eff)·(1 + ½·W/(batch·m·n)) + batch·(bpv·(m·k + k·n + m·n) + cast·m·k)/(hbm_bw·hbm_eff)

    with F = 2·m·n·k·batch and eff = gemm_eff_max unless given (FP8: gemm_eff_fp8; small expert
    GEMMs: × grouped_gemm_eff). Two size effects, both physical: (1) the tail wave — the output is
    cut into tiles spread over the streaming multiprocessors, one wave = W output elements
    (``gemm_wave_elements`` = SMs × tile, e.g. 108 × 128·256 on A100), and on average half a wave
    is wasted (wave quantisation, NVIDIA "Matrix Multiplication Background" guide); (2) operand
    traffic not hidden (a roofline summed, Williams et al. 2009). ``cast_bytes`` per input element
    is the FP8 quantisation of the activation operand (read 16-bit, write 8-bit, amax: Transformer
    Engine), memory-bound. Large matrices approach eff; thin or small ones run below it.
    """
    eff = cal["gemm_eff_max"] if eff is None else eff
    flops = 2.0 * m * n * k * batch
    tail = 1.0 + 0.5 * cal["gemm_wave_elements"] / jnp.maximum(batch * m * n, 1.0)
    traffic = batch * (bytes_per_value * (m * k + k * n + m * n) + cast_bytes * m * k)
    return flops * tail / (peak_flops * eff) + traffic / (hbm_bw_bytes_s * cal["hbm_eff"])


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
    """Ring all-reduce time [s]: 2·(n−1)/n·bytes/(bw·link_eff) + α·log2(n), 0 when n = 1
    (Thakur et al. 2005; NCCL). A reduce-scatter or an all-gather alone is half the volume
    (``allgather_time``)."""
    n = jnp.maximum(group, 1.0)
    t = 2.0 * (n - 1.0) / n * nbytes / (bw * cal["link_eff"]) + cal["collective_latency_s"] * jnp.log2(n)
    return jnp.where(n > 1.0, t, 0.0)


def allgather_time(nbytes, group, bw, cal):
    """Ring all-gather (or reduce-scatter) of ``nbytes`` gathered per device [s]:
    (n−1)/n·bytes/(bw·link_eff) + α·log2(n), 0 when n = 1 (Thakur et al. 2005)."""
    n = jnp.maximum(group, 1.0)
    t = (n - 1.0) / n * nbytes / (bw * cal["link_eff"]) + cal["collective_latency_s"] * jnp.log2(n)
    return jnp.where(n > 1.0, t, 0.0)


def alltoall_time(nbytes, ep, stride, devices_per_node, intra_bw, inter_bw, cal, copies=1.0, dedup=0.0):
    """All-to-all of ``nbytes`` per device over ``ep`` ranks ``stride`` apart [s] (stride = the
    expert tensor-parallel degree etp: expert ranks are laid out etp-innermost, Megatron-core).

    A fraction (g−1)/ep of the data stays on the node (NVLink), (ep−g)/ep leaves it through the
    device's own NIC (g = ep peers per node); no aggregation across NICs (DeepSpeed-MoE §5, Tutel).
    t = bytes·((g−1)/ep/intra + (ep−g)/ep/inter)/link_eff + α·log2(ep), bytes = copies × ``nbytes``
    (a token routed to top_k experts is sent top_k times). With ``dedup`` (DeepEP / HybridEP,
    Megatron-core's flex dispatcher; DeepSeek-V3's node-limited routing) a token crosses the
    network once per remote node it has experts on, then is forwarded over NVLink: the inter-node
    copies are the expected number of distinct remote nodes, (N − 1)·(1 − (1 − 1/N)^copies) of the
    N = ep/g nodes, for experts chosen uniformly.
    """
    n = jnp.maximum(ep, 1.0)
    g = jnp.clip(devices_per_node / jnp.maximum(stride, 1.0), 1.0, n)
    nodes = n / g
    distinct = jnp.where(nodes > 1.0,
                         (nodes - 1.0) * -jnp.expm1(copies * jnp.log1p(-1.0 / jnp.maximum(nodes, 1.0 + 1e-6))), 0.0)
    remote = jnp.where(dedup > 0, distinct, copies * (n - g) / n)
    t = nbytes * (copies * (g - 1.0) / n / intra_bw + remote / inter_bw) / cal["link_eff"]
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


def stage_layers(layers, pp):
    """Layers on the (first, middle, last) pipeline stages [layers] → (first, middle, last).

    Layers need not divide into stages (Megatron-core ``num_layers_in_first/last_pipeline_stage``
    and ``pipeline_model_parallel_layout``, DeepSpeed's partitioning, torchtitan; Llama 3 405B: 126
    layers on PP 16 with one layer fewer on the first and the last stage, Dubey et al. 2024
    §3.3.2; BLOOM: 70 layers on PP 12, Le Scao et al. 2022): with q = ⌊L/pp⌋ and rem = L − q·pp,
    rem stages hold q + 1 layers and the others q, the lighter ones at the ends, which also hold
    the embedding and the output layer: last = q; first = q + 1 only when a single stage is light
    (rem = pp − 1 > 0), else q; the middle stages q + 1 (q when pp divides L). pp = 2: ⌈L/2⌉ and
    ⌊L/2⌋ (the middle stage is then the first); pp = 1: one stage of L layers.
    """
    pp1 = jnp.maximum(pp, 1.0)
    q = jnp.floor(layers / pp1 + 1e-9)
    rem = jnp.round(layers - q * pp1)
    first = q + jnp.where((rem > 0) & (rem >= pp1 - 1.0), 1.0, 0.0)
    middle = q + jnp.where(rem > 0, 1.0, 0.0)
    return first, jnp.where(pp1 >= 3.0, middle, first), q


def unpaired_fraction(m, pp, v):
    """Fraction of a stage's m·v forward (and backward) chunk passes that the overlapped 1F1B
    schedule runs without a partner, averaged over the pp stages: a stage of rank r warms up with
    pp − r − 1 forwards, 2·(pp − r − 1) + (v − 1)·pp chunks when interleaved (Megatron-core
    ``schedules.py``), and its first forward has no backward before it, nor its last backward a
    forward after it: (mean warm-up + 1) / (m·v), at most 1."""
    warmup = jnp.where(v > 1, (pp - 1.0) + (v - 1.0) * pp, (pp - 1.0) / 2.0)
    return jnp.minimum((warmup + 1.0) / jnp.maximum(m * v, 1.0), 1.0)


# --------------------------------------------------------------------------------------------
# Per-layer work of one micro-batch on one device
# --------------------------------------------------------------------------------------------
def score_fraction(s, window, window_layers):
    """Fraction of the s×s attention scores a causal flash-attention kernel computes, averaged over
    the layers [1]: CAUSAL_FRACTION on full-attention layers; on a sliding-window layer (window W <
    s tokens, each query attends to the last W) Σᵢ min(i+1, W)/s² = W/s − W²/(2s²) (+ W/(2s²),
    dropped) — Beltagy et al. 2020 (Longformer), Mistral 7B (Jiang et al. 2023), GPT-OSS (OpenAI
    2025: window 128 on alternating layers). ``window`` 0 = no window; ``window_layers`` is the
    fraction of layers that have it."""
    windowed = jnp.where((window > 0) & (window < s), window / s - window * window / (2.0 * s * s), CAUSAL_FRACTION)
    return (1.0 - window_layers) * CAUSAL_FRACTION + window_layers * windowed


def attention_gemms(T, b, s, h, heads, kv_dim, d_attn, tp, bpv, peak, bw, cal, flash, cp=1.0, lin=None,
                    scores=CAUSAL_FRACTION):
    """Forward matrix-multiply time of one attention block, one micro-batch [s] → (projections, core).

    projections: QKV (T × h → (d_attn + 2·kv_dim)/tp) and output (T × d_attn/tp → h), T = b·s/cp
    tokens on the device (context parallelism splits the sequence), at the linear layers' precision
    ``lin`` = (bytes, peak, eff, cast) (FP8 in an FP8 run) — kv_dim already replicated when tp
    exceeds the KV heads; core: QKᵀ and P·V, b·heads/tp batched (s/cp)×s×head_dim products
    (Korthikanti 2022 §4.1), always at 16-bit (Transformer Engine keeps attention in BF16).
    With flash attention the core's traffic is Q, K, V, O only (Dao 2022) and a causal mask skips
    the blocks above the diagonal: ``scores`` (CAUSAL_FRACTION, less with sliding windows:
    score_fraction) of the counted FLOPs are computed (FlashAttention-2 §3.1), at ``attention_eff``
    of the peak (a fused attention kernel is not a GEMM: FlashAttention-3 reports ~75 % of H100's
    BF16 peak forward and less backward); without it the whole s×s product is computed as two
    batched GEMMs, then masked (Megatron-LM 2021-22).
    """
    lb, lpeak, leff, lcast = (bpv, peak, cal["gemm_eff_max"], 0.0) if lin is None else lin
    proj = gemm_time(T, (d_attn + 2.0 * kv_dim) / tp, h, 1.0, lb, lpeak, bw, cal, leff, lcast)
    proj = proj + gemm_time(T, h, d_attn / tp, 1.0, lb, lpeak, bw, cal, leff, lcast)
    hd = d_attn / heads
    nb = b * heads / tp
    sq = s / cp
    core_plain = gemm_time(sq, s, hd, nb, bpv, peak, bw, cal) + gemm_time(sq, hd, s, nb, bpv, peak, bw, cal)
    core_flash = (scores * 4.0 * nb * sq * s * hd / (peak * cal.get("attention_eff", cal["gemm_eff_max"]))
                  + stream_time(4.0 * nb * sq * hd, bpv, bw, cal))
    core_flash = core_flash * (1.0 + 0.5 * cal["gemm_wave_elements"] / (nb * sq * hd))
    return proj, jnp.where(flash > 0, core_flash, core_plain)


def ffn_gemm_time(tokens, h, d_ff, ffn_matrices, tp, count, bpv, peak, bw, cal, eff=None, cast=0.0):
    """Forward time of ``count`` FFNs each fed ``tokens`` rows [s]:
    up/gate T × h → (ffn_matrices−1)·d_ff/tp, down T × d_ff/tp → h (Shazeer 2020 for gated FFNs)."""
    up = gemm_time(tokens, (ffn_matrices - 1.0) * d_ff / tp, h, count, bpv, peak, bw, cal, eff, cast)
    down = gemm_time(tokens, h, d_ff / tp, count, bpv, peak, bw, cal, eff, cast)
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


def activation_bytes_per_layer(s, b, h, heads, d_attn, kv_dim, mlp_rows_ff, tp, sp, recompute, flash,
                               fp8_inputs=(0.0, 0.0), dropout=1.0, act_inputs=0.0):
    """Activation memory of one layer, one micro-batch [bytes, 2-byte activations].

    Korthikanti et al. 2022 §4 (Table 2) per component, generalised (d_attn, kv_dim, gated FFN):
      attention  3·s·b·h + 4·s·b·d_attn + 4·s·b·kv_dim   (LN out, Q, K, V, context, dropout mask)
                 + 5·heads·s²·b                           (softmax out, dropout mask and out)
      MLP        3·s·b·h + 2·s·b·mlp_rows_ff               (mlp_rows_ff = ffn_matrices·d_ff,
                                                            ×top_k·imb for MoE)
      norms      4·s·b·h
    Without sequence parallelism 10·s·b·h of these (norms, masks, the two GEMM inputs) are not split
    by tp. Selective recompute drops the 5·heads·s²·b core (so does flash attention); full recompute
    keeps only the layer input, 2·s·b·h (÷tp with sequence parallelism). With context parallelism
    the caller passes s/cp (every term is per token of the device's chunk; flash only). In an FP8
    run the inputs of the linear layers are kept in FP8 for the backward pass (Transformer Engine):
    ``fp8_inputs`` = (elements per token not split by tp without sequence parallelism: the QKV and
    first-FFN inputs; elements split by tp: the output-projection and second-FFN inputs), each
    1 byte instead of 2. A model without dropout (``dropout`` 0: Llama, Mixtral, Qwen, DeepSeek)
    keeps no masks: 2·s·b·h fewer (of the 10 not split by tp without sequence parallelism).
    Selective recompute with flash attention (whose core recomputes itself) means Megatron-core's
    cheap modules instead: the norms (4·s·b·h) and the activation functions, whose inputs
    (``act_inputs`` elements per token: (ffn_matrices − 1)·d_ff, per routed copy in an MoE layer)
    are recomputed, not kept (recompute_modules layernorm, moe_act).
    Check (d_attn = kv_dim = h, d_ff = 4h, gelu): 34·s·b·h + 5·a·s²·b, as in the paper.
    """
    sbh = s * b * h
    attn = 3.0 * sbh + 4.0 * s * b * d_attn + 4.0 * s * b * kv_dim
    mlp = 3.0 * sbh + 2.0 * s * b * mlp_rows_ff
    total = attn + mlp + 4.0 * sbh
    split = jnp.where(sp > 0, total / tp, 10.0 * sbh + (total - 10.0 * sbh) / tp)
    core = jnp.where((recompute >= 1) | (flash > 0), 0.0, 5.0 * heads * s * s * b / tp)
    full = 2.0 * sbh / jnp.where(sp > 0, tp, 1.0)
    saved = s * b * (fp8_inputs[0] / jnp.where(sp > 0, tp, 1.0) + fp8_inputs[1] / tp)
    saved = saved + jnp.where(dropout > 0, 0.0, 2.0 * sbh / jnp.where(sp > 0, tp, 1.0))
    cheap = 4.0 * sbh / jnp.where(sp > 0, tp, 1.0) + 2.0 * s * b * act_inputs / tp
    saved = saved + jnp.where((recompute == 1) & (flash > 0), cheap, 0.0)
    return jnp.where(recompute >= 2, full, split + core - saved)


# --------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------
def layout_fields(layout: Mapping, cal: Mapping | None = None) -> dict:
    """The layout with the optional keys filled in (absent or NaN = not given): cp 1, etp = tp
    (experts tensor-split like the dense FFN, Megatron-core's default), zero_stage =
    shard_optimizer (ZeRO-1 or none), overlap and flash_attention the accelerator class's
    (calibration.toml: 0 for the A100 class, calibrated on Megatron-LM 2021-22, which hid no
    communication and ran unfused attention; 1 for today's classes, calibrated on Megatron-core runs
    with overlap_grad_reduce / overlap_param_gather / tp_comm_overlap and flash attention), ep_overlap
    0 (1 = expert all-to-all under another micro-batch's compute), ep_dedup 0 (1 = tokens cross the
    network once per remote node, ``alltoall_time``), moe_host_sync 0 (1 = the MoE dispatcher
    synchronises with the host every MoE layer, Megatron-core's alltoall dispatcher:
    moe_sync_latency_s per MoE layer and micro-batch), gemm_per_expert 0 (1 = the experts' grouped GEMM
    is one GEMM per local expert, Transformer Engine's multi-stream cuBLAS GroupedLinear:
    moe_expert_latency_s per local expert, MoE layer and micro-batch, + moe_expert_fp8_latency_s in
    an FP8 run), cuda_graphs 0 (1 = whole
    layers replayed as CUDA graphs: no per-layer launch, per-expert launch or host-sync latency),
    cp_allgather 0 (1 = context parallelism by an exposed all-gather of K and V, Llama 3's, instead
    of the overlapped ring), offload_layers 0
    (layers of a stage whose activations wait in host memory, Megatron-core
    cpu_offloading_num_layers; the copies are taken as hidden), moe_imbalance and grad_bytes NaN
    (= the calibrated defaults)."""
    cal = {} if cal is None else cal
    f = lambda x: jnp.asarray(x) * 1.0  # noqa: E731  keep float32 inputs float32
    lay = {key: f(val) for key, val in layout.items()}
    tp = lay["tp"]

    def fill(key, default):
        value = lay.get(key)
        lay[key] = jnp.broadcast_to(f(default), jnp.shape(tp)) * 1.0 if value is None else \
            jnp.where(jnp.isfinite(value), value, default)

    fill("cp", 1.0)
    fill("etp", tp)
    fill("zero_stage", lay["shard_optimizer"])
    fill("overlap", cal.get("overlap", 0.0))
    fill("flash_attention", cal.get("flash_attention", 0.0))
    fill("ep_overlap", 0.0)
    fill("ep_dedup", 0.0)
    fill("offload_layers", 0.0)
    fill("moe_host_sync", 0.0)
    fill("gemm_per_expert", 0.0)
    fill("cuda_graphs", 0.0)
    fill("cp_allgather", 0.0)
    return lay


def reason_code(design, layout, dp, micro_batches):
    """First broken rule as an int32 code of kernels.reasons (0 = structurally valid).

    Order: top_k > experts; tp ∤ heads; tp ∤ kv_heads unless kv_heads | tp (the KV heads are then
    replicated, Megatron-core); pp > layers (any pp up to the layers may split them unevenly,
    ``stage_layers``; the candidate enumeration offers the same set);
    tp·cp·pp ∤ devices; ep ∤ experts; ep·etp ∤ tp·cp·dp (expert layers fold their own etp × ep ×
    edp grid over a stage's devices, Megatron-core MoE parallel folding, Liu et al. 2025); global
    batch < dp (before the disjoint micro-batch rule); microbatch·dp ∤ batch; interleave invalid
    (v > 1 needs pp > 1, micro-batches % pp = 0 and pp·v ≤ layers + 2: stages may be uneven, and the
    embedding and the loss may count as two more units, Megatron-core's
    account_for_embedding/loss_in_pipeline_split, Narayanan 2021 §2.2); cp ∤
    seq_len. Out of memory is applied by ``step``.
    """
    tp, pp, ep, cp, etp = layout["tp"], layout["pp"], layout["ep"], layout["cp"], layout["etp"]
    v, mb = layout["interleave"], layout["microbatch"]
    B, L = design["global_batch"], design["layers"]
    dp_ok = _divides(tp * cp * pp, layout["devices"])
    dp1 = jnp.where(dp_ok, dp, 1.0)
    pp_ok = pp <= L  # any pp up to the layers: uneven stages where pp ∤ L (stage_layers)
    v_fits = pp * v <= L + 2.0
    vok = (v == 1) | ((v > 1) & (pp > 1) & v_fits & _divides(pp, micro_batches))
    kv_ok = _divides(tp, design["kv_heads"]) | _divides(design["kv_heads"], tp)
    rules = [
        ("top_k_exceeds_experts", design["top_k"] > jnp.maximum(design["experts"], 1.0)),
        ("tp_not_dividing_heads", ~_divides(tp, design["heads"])),
        ("tp_not_dividing_kv_heads", ~kv_ok),
        ("pp_not_dividing_layers", ~pp_ok),
        ("devices_not_divisible_by_tp_pp", ~dp_ok),
        ("ep_not_dividing_experts", ~_divides(ep, jnp.maximum(design["experts"], 1.0))),
        ("ep_not_dividing_dp", ~_divides(ep * etp, tp * cp * dp1)),
        ("batch_too_small_for_dp", B < dp1),
        ("microbatch_not_dividing_batch", ~_divides(dp1 * mb, B)),
        ("interleave_invalid", ~vok | (v < 1)),
        ("cp_not_dividing_seq_len", ~_divides(cp, design["seq_len"])),
    ]
    code = jnp.zeros(jnp.broadcast_shapes(*[jnp.shape(c) for _, c in rules]), dtype=jnp.int32)
    for name, bad in reversed(rules):
        code = jnp.where(bad, jnp.int32(CODE[name]), code)
    return code


def _stage_params(design, layout):
    """Parameters per device of one layer's non-expert and expert parts, and of the embedding table
    of an end stage: (layer_nonexp, layer_exp, emb_end, emb_single) [parameters per device]."""
    L, h, V = design["layers"], design["d_model"], design["vocab"]
    fm, E, n_moe, f_e = (design["ffn_matrices"], jnp.maximum(design["experts"], 1.0), design["moe_layers"],
                         design["expert_d_ff"])
    tp, ep, etp = layout["tp"], layout["ep"], layout["etp"]
    emb_all = V * h * (2.0 - design["tied_embeddings"])
    expert_total = n_moe * E * fm * h * f_e
    layer_nonexp = (design["params"] - emb_all - h - expert_total) / L / tp
    layer_exp = expert_total / L / (etp * ep)
    return layer_nonexp, layer_exp, V * h / tp, emb_all / tp


def memory_per_device(design, layout, dp, micro_batches, cal):
    """Peak memory of the busiest device (the first pipeline stage, or a middle one when the first
    holds fewer layers) [bytes] → (bytes, parameters on the first stage's device).

    weights + gradients + optimizer states + activations + reserve, with
      params on a device = its stage's layers × (non-expert layer params/tp + expert params/(etp·ep))
                           + embedding table(s)/tp (both when pp = 1, one per end stage otherwise);
      bytes per param: weights ``weight_bytes`` (16-bit; fp8_weight_bytes in an FP8 run), gradients
      grad_bytes (the run's or the calibrated default), optimizer 12 (fp32 master, Adam m, v; 8
      when training in fp32); ZeRO stage z shards over the data-parallel ranks D = dp·cp (experts:
      edp = tp·cp·dp/(etp·ep)): z ≥ 1 the optimizer states, z ≥ 2 the gradients, z = 3 the weights
      too, then two layers' weights are gathered at a time (Rajbhandari et al. 2020 ZeRO; PyTorch
      FSDP, Zhao et al. 2023; Megatron distributed optimizer: 6 + 12/d);
      activations = per-layer bytes (activation_bytes_per_layer, s/cp tokens) × stage layers ×
                    micro-batches in flight (min(pp, m) on the first stage, min(pp − 1, m) on the
                    second) × (1 + (pp−1)/(pp·v) if interleaved) (Korthikanti 2022 §4.2.3),
      + one layer's full activations while recomputing (full recompute)
      + fp32 logits 4·s·b·vocab/tp when pp = 1.
    """
    L, h, V = design["layers"], design["d_model"], design["vocab"]
    s, heads = design["seq_len"], design["heads"]
    d_attn = heads * design["head_dim"]
    fm, E, k = design["ffn_matrices"], jnp.maximum(design["experts"], 1.0), design["top_k"]
    n_moe, f_e = design["moe_layers"], design["expert_d_ff"]
    bpv = design["bytes_per_value"]
    tp, pp, ep, b = layout["tp"], layout["pp"], layout["ep"], layout["microbatch"]
    cp, etp, zero = layout["cp"], layout["etp"], layout["zero_stage"]
    rc, v = layout["recompute"], layout["interleave"]
    sp = layout["sequence_parallel"] * (tp > 1)
    flash = layout["flash_attention"]
    kv_dim = design["kv_heads"] * design["head_dim"] * jnp.maximum(tp / design["kv_heads"], 1.0)
    fp8 = bpv < 1.5

    first, middle, _ = stage_layers(L, pp)
    lnx, lex, emb_end, emb_one = _stage_params(design, layout)
    dp1 = jnp.maximum(dp, 1.0)
    D = dp1 * cp
    edp = jnp.maximum(tp * cp * dp1 / (etp * ep), 1.0)
    w_b = weight_bytes(bpv, cal)
    gb = _grad_bytes(layout, cal)
    opt_bytes = jnp.where(bpv >= 4, 8.0, 12.0)

    def states(nonexp, exp):
        def per(p, d):
            return p * (w_b / jnp.where(zero >= 3, d, 1.0) + gb / jnp.where(zero >= 2, d, 1.0)
                        + opt_bytes / jnp.where(zero >= 1, d, 1.0))
        return per(nonexp, D) + per(exp, edp)

    nonexp_first = first * lnx + jnp.where(pp > 1, emb_end, emb_one)
    nonexp_mid = middle * lnx
    gathered = jnp.where(zero >= 3, 2.0 * (lnx + lex) * w_b, 0.0)

    imb = _imbalance(layout, cal)
    moe_frac = _safe_div(n_moe, L)
    ff_dense = fm * design["d_ff"]
    ff_moe = fm * f_e * (k * imb + design["shared_experts"]) + 2.0 * h * k * imb  # + permuted copies
    ff_rows = (1.0 - moe_frac) * ff_dense + moe_frac * ff_moe
    sc = s / cp
    # FP8 runs keep the linear layers' inputs in FP8: QKV and first-FFN inputs (h, and the k·imb
    # permuted copies in an MoE layer), output-projection and second-FFN inputs (d_attn, d_ff)
    fp8_in = (jnp.where(fp8, h + (1.0 - moe_frac) * h
                        + moe_frac * (h * k * imb + h * (design["shared_experts"] > 0)), 0.0),
              jnp.where(fp8, d_attn + (1.0 - moe_frac) * design["d_ff"]
                        + moe_frac * f_e * (k * imb + design["shared_experts"]), 0.0))
    drop = design.get("dropout", 1.0)
    act_in = (fm - 1.0) * ((1.0 - moe_frac) * design["d_ff"] + moe_frac * f_e * (k * imb + design["shared_experts"]))
    act_full_layer = activation_bytes_per_layer(sc, b, h, heads, d_attn, kv_dim, ff_rows, tp, sp, 0.0, flash, fp8_in,
                                                drop, act_in)
    act_layer = activation_bytes_per_layer(sc, b, h, heads, d_attn, kv_dim, ff_rows, tp, sp, rc, flash, fp8_in, drop,
                                           act_in)
    inter = jnp.where(v > 1, 1.0 + _safe_div(pp - 1.0, pp * v), 1.0)
    scale = jnp.maximum(bpv, 2.0) / 2.0
    extra = jnp.where(rc >= 2, act_full_layer, 0.0) + gathered / scale

    offload = layout["offload_layers"]

    def act(layers, in_flight, logits):
        kept = jnp.maximum(layers - offload, 0.0)  # activations of offloaded layers wait in host memory
        a = act_layer * kept * in_flight * inter + extra + logits
        return a * scale

    logits = jnp.where(pp > 1, 0.0, 4.0 * sc * b * V / tp)
    mem_first = states(nonexp_first, first * lex) + act(first, jnp.minimum(pp, micro_batches), logits)
    mem_mid = (states(nonexp_mid, middle * lex)
               + act(middle, jnp.minimum(jnp.maximum(pp - 1.0, 1.0), micro_batches), 0.0))
    mem = jnp.where(pp > 1, jnp.maximum(mem_first, mem_mid), mem_first)
    return mem + cal["memory_reserve_bytes"], nonexp_first + first * lex


def weight_bytes(bytes_per_value, cal):
    """Bytes of one stored weight: 16-bit (or 4-byte fp32) weights; in an FP8 run
    ``fp8_weight_bytes`` (NeMo's FP8 recipes keep the weights in FP8, fp8_params, and gather them
    in FP8; the fp32 master copy is the optimizer's)."""
    return jnp.where(bytes_per_value < 1.5, cal.get("fp8_weight_bytes", 2.0), jnp.maximum(bytes_per_value, 2.0))


def _grad_bytes(layout, cal):
    """Bytes per gradient value kept and reduced: the run's ``grad_bytes`` when given (2 = reduced
    in 16 bits, grad_reduce_in_fp32 off, as NeMo's performance recipes run), else the calibrated
    default (4: fp32 main gradients)."""
    given = layout.get("grad_bytes")
    if given is None:
        return cal["grad_bytes"]
    return jnp.where(jnp.isfinite(given), given, cal["grad_bytes"])


def _imbalance(layout, cal):
    """Busiest device's expert load / mean: the run's ``moe_imbalance`` when given (finite), else the
    calibrated default (capacity factor 1.25; 1 for forced-balanced benchmarks)."""
    given = layout.get("moe_imbalance")
    if given is None:
        return cal["moe_imbalance"]
    return jnp.where(jnp.isfinite(given), given, cal["moe_imbalance"])


def step(design: Mapping, hw: Mapping, layout: Mapping, cal: Mapping) -> dict:
    """Time, throughput, MFU/HFU, memory and feasibility of one training step.

    Units: seconds, bytes, tokens/s; MFU = B·s·train_flops_per_token/(step·devices·peak) with
    kernels.flops (6·N_mm + 12·l·s·d_attn, no recomputation) and peak the run's precision's;
    HFU adds recompute_flops_per_token. See the module docstring for the decomposition; reason
    0 = feasible (kernels.reasons). Function of ~150 lines: one step is one critical path, kept
    whole so the terms can be read against each other.
    """
    f = lambda x: jnp.asarray(x) * 1.0  # noqa: E731  keep float32 inputs float32
    d = {key: f(val) for key, val in design.items()}
    w = {key: f(val) for key, val in hw.items()}
    lay = layout_fields(layout, cal)

    L, h, V, s = d["layers"], d["d_model"], d["vocab"], d["seq_len"]
    heads, hd = d["heads"], d["head_dim"]
    d_attn = heads * hd
    kv_dim = d["kv_heads"] * hd * jnp.maximum(lay["tp"] / d["kv_heads"], 1.0)  # replicated when tp > kv_heads
    fm, d_ff = d["ffn_matrices"], d["d_ff"]
    E, k = jnp.maximum(d["experts"], 1.0), d["top_k"]
    n_moe, f_e, n_sh = d["moe_layers"], d["expert_d_ff"], d["shared_experts"]
    B, bpv_run = d["global_batch"], d["bytes_per_value"]
    peak, bw = w["peak_flops"], w["hbm_bw_bytes_s"]
    peak16 = w.get("peak_bf16_flops", peak)
    intra, inter, node = w["intra_bw_bytes_s"], w["inter_bw_bytes_s"], w["devices_per_node"]
    devices, tp, pp, ep = lay["devices"], lay["tp"], lay["pp"], lay["ep"]
    cp, etp, zero = lay["cp"], lay["etp"], lay["zero_stage"]
    b, rc, v = lay["microbatch"], lay["recompute"], lay["interleave"]
    sp = lay["sequence_parallel"] * (tp > 1)
    flash = lay["flash_attention"]
    ov = lay["overlap"] * cal.get("overlap_eff", 1.0)  # fraction of overlappable time that hides comm

    # precisions: FP8 covers the linear layers only (Transformer Engine); attention core, head,
    # router, elementwise work and communication stay 16-bit
    fp8 = bpv_run < 1.5
    bpv = jnp.maximum(bpv_run, 2.0)  # activations, streams, communication
    peak_a = jnp.where(fp8, peak16, peak)
    lin_eff = jnp.where(fp8, cal.get("gemm_eff_fp8", cal["gemm_eff_max"]), cal["gemm_eff_max"])
    lin_cast = jnp.where(fp8, cal.get("fp8_cast_bytes", 0.0), 0.0)
    lin = (bpv_run, peak, lin_eff, lin_cast)
    grouped = cal.get("grouped_gemm_eff", 1.0)

    dp = devices / (tp * cp * pp)
    dp_int = jnp.maximum(jnp.floor(dp), 1.0)
    m = jnp.maximum(B / (dp_int * b), 1.0)  # micro-batches per replica
    reason = reason_code(d, lay, dp, m)
    T = b * s / cp  # tokens per micro-batch on one device (before the tp split)
    imb = _imbalance(lay, cal)

    # ---- forward work of one layer (dense and MoE), one micro-batch: GEMMs g, streams m ----
    scores = score_fraction(s, d.get("sliding_window", 0.0), d.get("window_layers", 0.0))
    proj, core_g = attention_gemms(T, b, s, h, heads, kv_dim, d_attn, tp, bpv, peak_a, bw, cal, flash, cp, lin,
                                   scores)
    rest_el, core_el = layer_stream_elements(T, h, heads, s, d_ff, fm, tp, sp, flash)
    core = core_g + stream_time(core_el, bpv, bw, cal)  # what selective recompute redoes (unfused attention)
    # with flash attention, selective recompute redoes the norms and activation functions instead
    norms_el = 4.0 * h * T / jnp.where(sp > 0, tp, 1.0)
    sel_dense = jnp.where(flash > 0, stream_time(norms_el + fm * d_ff * T / tp, bpv, bw, cal), core)
    dense_g = proj + core_g + ffn_gemm_time(T, h, d_ff, fm, tp, 1.0, bpv_run, peak, bw, cal, lin_eff, lin_cast)
    dense_m = stream_time(rest_el + core_el, bpv, bw, cal)
    experts_dev = E / ep
    # busiest device: its E/ep experts each get T·k·imb·etp·ep/(E·tp) rows (the stage's dp·b·s·k
    # assignments over E experts, each expert replicated over edp = tp·cp·dp/(etp·ep) devices)
    rows_per_expert = T * k * imb * etp * ep / (E * tp)
    moe_g = proj + core_g + ffn_gemm_time(rows_per_expert, h, f_e, fm, etp, experts_dev, bpv_run, peak, bw, cal,
                                          lin_eff * grouped, lin_cast)
    moe_g = moe_g + jnp.where(n_sh > 0, ffn_gemm_time(T, h, n_sh * f_e, fm, tp, 1.0, bpv_run, peak, bw, cal,
                                                      lin_eff, lin_cast), 0.0)
    moe_g = moe_g + gemm_time(T, E, h, 1.0, bpv, peak_a, bw, cal)  # router
    attn_el = rest_el - fm * d_ff * T / tp
    # token copies per routed token and MoE layer, forward: the permutation before the dispatch and
    # the unpermutation after the combine (read + write h each: 4h); the alltoall dispatcher
    # (Megatron-core MoEAlltoAllTokenDispatcher, ep_dedup 0) also sorts the received tokens by local
    # expert and back ("Permutation 2: Sort tokens by local expert", sort_chunks_by_idxs, one copy each
    # way, when the device holds more than one expert: 4h more); DeepEP / HybridEP (flex) return the
    # per-expert layout with the tokens, so one permutation each way suffices (NVIDIA/Megatron-LM
    # megatron/core/transformer/moe/token_dispatcher.py, moe_utils.py)
    perm = 4.0 + 4.0 * (1.0 - lay["ep_dedup"]) * (experts_dev > 1.0)
    moe_el = attn_el + core_el + fm * f_e * (T * k * imb + n_sh * T) / tp + perm * k * imb * h * T / tp + 4.0 * E * T
    moe_m = stream_time(moe_el, bpv, bw, cal)
    sel_moe = jnp.where(flash > 0, stream_time(norms_el + fm * f_e * (T * k * imb + n_sh * T) / tp, bpv, bw, cal), core)

    # TP comm overlap (Transformer Engine's userbuffers, Megatron-core tp_comm_overlap) splits each
    # GEMM and exchanges the pieces by peer-to-peer copies over NVLink (CUDA IPC): only a tensor-parallel
    # group inside one NVLink domain hides its forward collectives; across nodes they are exposed
    ov_tp = ov * (tp <= node)
    # ---- tensor-parallel collectives: 2 all-reduce volumes forward (1 in an MoE layer whose
    # experts are not tensor-split: tokens go to the experts from their sequence-parallel shard) ----
    bw_tp = group_bandwidth(tp, 1.0, node, intra, inter)
    ar = allreduce_time(T * h * bpv, tp, bw_tp, cal)
    c_fwd = 2.0 * ar
    c_fwd_moe = ar * (1.0 + (etp > 1))
    # ---- expert all-to-all: dispatch + combine per MoE layer, forward and backward ----
    a2a_bytes = T * imb * h * bpv / tp  # one copy of the device's tokens
    a2a = alltoall_time(a2a_bytes, ep, etp, node, intra, inter, cal, k, lay["ep_dedup"])
    # ---- context parallel: ring exchange of K and V (forward), K, V, dK, dV (backward), hidden
    # under the attention core it overlaps with (ring attention, Liu et al. 2023; Megatron-core CP,
    # cp_comm_type "p2p"); with ``cp_allgather`` the K and V of the whole sequence are all-gathered
    # before the attention and dK, dV reduce-scattered after it, the same volume, exposed in the
    # critical path (Llama 3: Dubey et al. 2024 §3.3.2, "all-gather based" context parallelism) ----
    cp_link = jnp.where(tp * cp <= node, intra, inter)
    cp_bytes = (cp - 1.0) * 2.0 * T * kv_dim / tp * bpv
    cp_t = jnp.where(cp > 1, cp_bytes / (cp_link * cal["link_eff"]) + (cp - 1.0) * cal["collective_latency_s"], 0.0)
    cp_hidden_by = jnp.where(lay["cp_allgather"] > 0, 0.0, core_g)  # what the exchange can hide under
    cp_exposed = jnp.maximum(cp_t - cp_hidden_by, 0.0) + jnp.maximum(2.0 * cp_t - 2.0 * cp_hidden_by, 0.0)

    full = rc >= 2

    def layer_time(g, mem, c, latency, sel):
        """(compute, exposed comm) of one layer and micro-batch: forward g + m + c;
        backward 2·g + 2·m with its tp collectives hidden under the weight-gradient GEMMs (time g)
        where they fit (Megatron async all-reduce; Korthikanti 2022 Table 4: 22B layer forward
        7.7 ms, backward 11.9 ms); with ``overlap`` the forward ones hide under the forward GEMMs
        too (TP comm overlap); recompute redoes the forward (full, with its collectives exposed)
        or the attention core (selective). ``latency``: fixed time per layer and micro-batch (kernel
        launches and host synchronisation, layer_latency_s; an MoE layer adds moe_layer_latency_s
        for its router, token-count exchange and permutation launches), calibrated per class."""
        comp = 3.0 * (g + mem) + jnp.where(full, g + mem, jnp.where(rc >= 1, sel, 0.0)) + latency
        fwd = jnp.maximum(c - ov_tp * g, 0.0)
        comm = fwd + jnp.maximum(c - g, 0.0) + jnp.where(full, fwd, 0.0) + cp_exposed
        return comp, comm

    # CUDA graphs over whole layers (Megatron-core full-iteration capture, NeMo's per-layer
    # enable_cuda_graph) replay the layer's kernels without launching them one by one and without
    # host work between them (NVIDIA CUDA C++ Programming Guide, "CUDA Graphs"): the per-layer
    # latencies below, launches and host synchronisation, are then absent. Partial scopes
    # (attention, router) leave the expert dispatch and GEMMs launched: not whole layers.
    launched = jnp.where(lay["cuda_graphs"] > 0, 0.0, 1.0)
    lat = cal.get("layer_latency_s", 0.0) * launched
    # flash attention's backward costs 2.5 forwards, not 2 (FLASH_BWD_EXTRA), on top of 3·g
    lat = lat + jnp.where(flash > 0, FLASH_BWD_EXTRA * core_g, 0.0)
    # softmax exponentials of flash attention run on the special-function units, not the tensor
    # cores: one per computed score forward and one backward (P recomputed; + one more forward under
    # full recompute), at ``attention_exp_per_s`` (SMs × 16 MUFU.EX2 per clock × clock; FlashAttention-3,
    # Shah et al. 2024 §3: H100 SXM5 989 TFLOPS of matmul but 3.9 T special functions/s; on
    # Blackwell the tensor cores doubled and the exponential units did not, FlashAttention-4), not
    # overlapped with the matrix products here. A score costs 4·head_dim matmul FLOPs forward, so
    # the exponentials weigh most at small head_dim (GPT-OSS: 64). Absent: no term (A100 set).
    exp_rate = cal.get("attention_exp_per_s", jnp.inf)
    n_exp = scores * (b * heads / lay["tp"]) * (s / cp) * s * (2.0 + (rc >= 2))
    exp_ok = (flash > 0) & jnp.isfinite(exp_rate)  # NaN (a class without the figure) = absent
    lat = lat + jnp.where(exp_ok, n_exp / jnp.where(jnp.isfinite(exp_rate), exp_rate, 1.0), 0.0)
    comp_dense, comm_dense = layer_time(dense_g, dense_m, c_fwd, lat, sel_dense)
    # the alltoall dispatcher (Megatron-core MoEAlltoAllTokenDispatcher) copies the per-expert token
    # counts to the host to size its all-to-all and the grouped GEMM's splits: a device-to-host
    # synchronisation per MoE layer, forward and backward, that drains the launch queue (and keeps
    # the layer out of CUDA graphs); the flex dispatcher (DeepEP / HybridEP) and padded or
    # graph-captured dispatch are sync-free (``moe_host_sync`` 0, the default). With
    # ``gemm_per_expert`` the experts' grouped GEMM is not one kernel: Transformer Engine's GroupedLinear
    # (Megatron-core's TEGroupedMLP) runs nvte_multi_stream_cublas_gemm, one cuBLAS GEMM per local
    # expert issued round-robin on 4 compute streams (NVIDIA/TransformerEngine,
    # transformer_engine/common/gemm/cublaslt_gemm.cu): fixed work per local expert, layer and
    # micro-batch (``moe_expert_latency_s``, forward and backward) that more tokens per expert do not
    # spread; a single grouped kernel (DeepGEMM, CUTLASS grouped GEMM, torch._grouped_mm) has none (0,
    # the default). In an FP8 run GroupedLinear also quantises per expert, with one quantiser per GEMM
    # for the input, the weight and the output gradient (fused_multi_quantize / split quantise over the
    # m_splits; current scaling first reduces each tensor's amax): more launches per local expert,
    # ``moe_expert_fp8_latency_s`` on top
    fp8_extra_s = jnp.where(fp8, cal.get("moe_expert_fp8_latency_s", 0.0), 0.0)
    per_expert_s = cal.get("moe_expert_latency_s", 0.0) + fp8_extra_s
    per_expert = lay["gemm_per_expert"] * experts_dev * per_expert_s
    moe_lat = launched * (cal.get("moe_layer_latency_s", 0.0)
                          + lay["moe_host_sync"] * cal.get("moe_sync_latency_s", 0.0) + per_expert)
    comp_moe, comm_moe = layer_time(moe_g, moe_m, c_fwd_moe, lat + moe_lat, sel_moe)
    a2a_layer = 2.0 * a2a * (2.0 + jnp.where(full, 1.0, 0.0))
    # with ep_overlap the all-to-all runs under another micro-batch's compute (DeepSeek-V3 DualPipe;
    # Megatron-core's overlapped 1F1B for MoE): only what exceeds the MoE layer's compute is exposed,
    # except on the passes that have no partner: the schedule pairs the forward of one micro-batch
    # with the backward of the one before, so a stage's first forward, its last backward and its
    # pipeline warm-up (Megatron-core's (pp − rank − 1), interleaved 2·(pp − rank − 1) + (v − 1)·pp
    # chunks) run alone (Megatron-Bridge docs/training/moe-optimization.md: 'first FWD and last BWD
    # can't be hidden'); unpaired_fraction averages them over the stages
    ep_ov = lay["ep_overlap"] * cal.get("overlap_eff", 1.0)
    a2a_hidden = jnp.maximum(a2a_layer - ep_ov * comp_moe, 0.0)
    unpaired = unpaired_fraction(m, pp, v)
    a2a_layer = jnp.where(lay["ep_overlap"] > 0, a2a_hidden + unpaired * (a2a_layer - a2a_hidden), a2a_layer)
    # per-layer averages over the model (MoE layers spread over the stages)
    moe_frac = _safe_div(n_moe, L)
    comp_l = (1.0 - moe_frac) * comp_dense + moe_frac * comp_moe
    tp_l = (1.0 - moe_frac) * comm_dense + moe_frac * comm_moe
    a2a_l = moe_frac * a2a_layer
    # output layer (last stage): logits T × h → V/tp, fwd + 2× bwd (16-bit), fp32 cross-entropy traffic
    head = 3.0 * gemm_time(T, V / tp, h, 1.0, bpv, peak_a, bw, cal) + stream_time(6.0 * T * V / tp, 4.0, bw, cal)

    # ---- pipeline point-to-point: activation forward, gradient backward, per virtual stage ----
    p2p_bw = jnp.where(tp * cp * pp * dp_int <= node, intra, inter)
    p2p_bytes = T * h * bpv / tp  # scatter/gather (or sequence parallel) split over tp
    p2p_mb = jnp.where(pp > 1, 2.0 * v * (p2p_bytes / (p2p_bw * cal["link_eff"]) + cal["collective_latency_s"]), 0.0)

    # ---- the critical stage: a middle stage of ⌈L/pp⌉ layers or the last with the head ----
    _, middle, last = stage_layers(L, pp)
    unit = comp_l + tp_l + a2a_l
    last_is_critical = last * unit + head >= middle * unit
    n_c = jnp.where(last_is_critical, last, middle)
    compute_mb = n_c * comp_l + jnp.where(last_is_critical, head, 0.0)
    tp_mb = n_c * tp_l + 2.0 * ar  # + embedding, logits
    a2a_mb = n_c * a2a_l

    t_mb = compute_mb + tp_mb + a2a_mb + p2p_mb  # slowest stage: steady-state period
    t_mb_avg = (L * unit + head) / pp + 2.0 * ar + p2p_mb  # the work spread over the stages
    bubble = (pp - 1.0) / v * t_mb_avg  # warm-up + cool-down pass through the other stages once

    # ---- data-parallel gradient reduction (and parameter gathers) and optimizer ----
    mem, p_dev = memory_per_device(d, lay, dp, m, cal)
    first, _, _ = stage_layers(L, pp)
    p_exp = first * _stage_params(d, lay)[1]
    p_nonexp = p_dev - p_exp
    w_b = weight_bytes(bpv_run, cal)
    gb = _grad_bytes(lay, cal)
    D = dp_int * cp
    edp = jnp.maximum(tp * cp * dp_int / (etp * ep), 1.0)
    bw_dp = group_bandwidth(D, tp, node, intra, inter)
    bw_edp = group_bandwidth(edp, etp * ep, node, intra, inter)

    def dp_comm(p, n, link):
        """ZeRO 0: all-reduce of gradients; 1: reduce-scatter of gradients + all-gather of the
        updated weights; 2: the same, the gradients reduce-scattered after every micro-batch (they are
        not kept whole to accumulate); 3: reduce-scatter after every micro-batch only (the weights are
        gathered per micro-batch; DeepSpeed ZeRO-2/3, PyTorch FSDP with gradient accumulation)."""
        rs = allgather_time(p * gb, n, link, cal) * jnp.where(zero >= 2, m, 1.0)
        rs_ag = rs + jnp.where(zero >= 3, 0.0, allgather_time(p * w_b, n, link, cal))
        return jnp.where(zero >= 1, rs_ag, allreduce_time(p * gb, n, link, cal))

    t_dp = dp_comm(p_nonexp, D, bw_dp) + dp_comm(p_exp, edp, bw_edp)
    last_bwd = 2.0 / 3.0 * compute_mb
    window = jnp.where(lay["overlap"] > 0, ov * (last_bwd + jnp.where(zero >= 1, compute_mb / 3.0, 0.0)),
                       cal["dp_overlap"] * last_bwd)
    dp_exposed = jnp.maximum(t_dp - window, 0.0)
    # ZeRO-3 / FSDP: weights all-gathered for the forward and again for the backward of each micro-batch
    ag3 = 2.0 * (allgather_time(p_nonexp * w_b, D, bw_dp, cal) + allgather_time(p_exp * w_b, edp, bw_edp, cal))
    fsdp_exposed = jnp.where(zero >= 3, m * jnp.maximum(ag3 - ov * compute_mb, 0.0), 0.0)
    dp_exposed = dp_exposed + fsdp_exposed
    opt_params = jnp.where(zero >= 1, p_nonexp / D + p_exp / edp, p_dev)
    t_opt = optimizer_time(opt_params, bw, cal)

    compute_s = m * compute_mb + t_opt
    # interleaved schedules overlap the point-to-point sends with the other chunk's compute
    # (Megatron-core overlap_p2p_comm, set with virtual pipeline stages; it refuses them without;
    # Llama 3 paper §3.3.2: asynchronous point-to-point): only what exceeds it is exposed
    # (written p2p − min(p2p, ov·compute): a product feeding a difference directly is contracted into
    # a fused multiply-add in some fusions only, and the per-point and sampled paths must round alike)
    p2p_hidden = jnp.where((lay["overlap"] > 0) & (v > 1), jnp.minimum(p2p_mb, ov * compute_mb), 0.0)
    p2p_exposed = p2p_mb - p2p_hidden
    comm_exposed_s = m * (tp_mb + a2a_mb + p2p_exposed) + dp_exposed
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
        "pp_comm_s": m * p2p_exposed,
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


def _pipeline_degrees(layers: int, ranks: int) -> list[int]:
    """Pipeline degrees offered on ``ranks`` devices (devices / (tp·cp)): its divisors up to the
    layers, which they may split unevenly (``stage_layers``): the set ``reason_code`` accepts."""
    return [p for p in _divisors(ranks) if p <= int(layers)]


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
    seq_len=None,
    context_parallel=(1,),
    zero_stages=None,
    expert_tp=False,
) -> dict[str, np.ndarray]:
    """Every candidate layout for one design and device count, as equal-length 1-D int arrays.

    tp: divisors of heads up to max_tp (default 2·devices_per_node, i.e. at most two nodes);
    pp: any degree up to the layers (uneven stages where it does not divide them); cp: the given
    degrees dividing seq_len (1 only by default); only (tp, cp, pp) with tp·cp·pp dividing devices are kept
    (others have no integral dp: skipped, not counted). ep: divisors of experts up to dp (ep ∤ dp
    kept, flagged by ``step``); 1 for dense models; with ``expert_tp`` the experts may also be left
    unsplit (etp 1, ep then up to tp·cp·dp, Megatron-core's folding) besides etp = tp. microbatch:
    the given sizes dividing global_batch/dp; when dp does not divide the batch (or it is below dp)
    one micro-batch-1 entry is kept so ``step`` flags it. interleave: 1, and v > 1 only when pp > 1
    and pp·v ≤ layers + 2. sequence_parallel only
    with tp > 1 (0 otherwise). ``zero_stages`` (e.g. (0, 1, 2, 3)) replaces shard_optimizer by the
    ZeRO stage (shard_optimizer = stage ≥ 1). tp ∤ kv_heads and out-of-memory points are kept
    (flagged by ``step``). The keys cp, etp and zero_stage appear only when asked for (the sweep's
    best-layout grid enumerates the classic eight).
    """
    devices, layers, heads = int(devices), int(layers), int(heads)
    experts = max(int(experts), 1)
    global_batch, node = int(global_batch), int(devices_per_node)
    max_tp = 2 * node if max_tp is None else int(max_tp)
    extended = seq_len is not None or zero_stages is not None or expert_tp or tuple(context_parallel) != (1,)
    cps = [c for c in context_parallel if seq_len is None or int(seq_len) % c == 0]
    zeros = [(so, so) for so in shard_optimizer] if zero_stages is None else [(int(z >= 1), z) for z in zero_stages]
    rows = []
    for tp in _divisors(heads):
        if tp > max_tp or devices % tp:
            continue
        for cp in cps:
            if (devices // tp) % cp:
                continue
            for pp in _pipeline_degrees(layers, devices // (tp * cp)):
                dp = devices // (tp * cp * pp)
                etps = [tp, 1] if (expert_tp and experts > 1 and tp > 1) else [tp]
                if global_batch % dp == 0:
                    mbs = [mb for mb in microbatches if (global_batch // dp) % mb == 0]
                else:
                    mbs = [1]
                vs = [v for v in interleaves if v == 1 or (pp > 1 and pp * v <= layers + 2)]
                sps = sorted({x if tp > 1 else 0 for x in sequence_parallel})
                for etp in etps:
                    room = dp if etp == tp else tp * cp * dp  # expert ranks fold over the stage's devices
                    eps = [e for e in _divisors(experts) if e <= room and (max_ep is None or e <= max_ep)] or [1]
                    for ep in eps:
                        for mb in mbs:
                            for v in vs:
                                for rc in recompute_modes:
                                    for so, z in zeros:
                                        for sp in sps:
                                            rows.append((tp, pp, ep, mb, rc, v, so, sp, cp, etp, z))
    arr = np.array(rows, dtype=np.int64).reshape(-1, 11)
    names = ("tp", "pp", "ep", "microbatch", "recompute", "interleave", "shard_optimizer", "sequence_parallel",
             "cp", "etp", "zero_stage")
    out = {name: arr[:, i].copy() for i, name in enumerate(names if extended else names[:8])}
    out["devices"] = np.full(len(arr), devices, dtype=np.int64)
    return out
