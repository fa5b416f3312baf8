"""Two independent re-implementations of the layout model and of the best-layout search, for
benchmarks and tests (the fixed-layout chain's are in bench.models).

Written from the equations in kernels/layout.py's docstrings, not by calling the kernel:

``step_python(p, lay, cal)``    plain Python floats and ``math``, one design × layout at a time;
``step_numpy(p, lay, cal)``     NumPy over broadcast arrays, in the inputs' float dtype;
``best_layout_python(p, layouts, cal)``  the plain per-configuration loop of the best-layout
                                benchmark: every candidate layout of one configuration through
                                ``step_python`` and ``bench.models.footprint_python``, the least
                                ``total_tco2e`` among the feasible ones (ties: the shortest step);
``best_layout_numpy(x, layouts, cal)``   the same search vectorised over points × layouts.

``p`` holds the chain's inputs (the names of ``kernels.footprint.INPUT_KEYS``, with params and
active_params counted or given, as ``bench.models`` computes them); ``lay`` holds devices, tp, pp,
ep, microbatch, recompute, interleave, shard_optimizer, sequence_parallel; ``cal`` the calibrated
constants of hardware_db/calibration.toml. Outputs: step_time_s, compute_s, comm_exposed_s,
bubble_s, tokens_per_s, mfu, hfu, memory_bytes, dp, micro_batches, reason.

Step of the slowest (last) pipeline stage, per micro-batch (T = microbatch·seq_len tokens):
    gemm(m, n, k, c)  = 2mnkc/(peak·gemm_eff_max)·(1 + ½·W/(c·m·n)) + c·bpv·(mk + kn + mn)/(hbm_bw·hbm_eff)
    stream(e, bytes)  = e·bytes/(hbm_bw·hbm_eff)
    attention GEMMs   = gemm(T, (d_attn + 2·kv_dim)/tp, h) + gemm(T, h, d_attn/tp)
                        + core: gemm(s, s, hd, b·heads/tp) + gemm(s, hd, s, b·heads/tp)
                          (flash: 4·nb·s²·hd/(peak·eff)·(1 + ½·W/(nb·s·hd)) + stream(4·nb·s·hd))
    FFN GEMMs         = gemm(T', (fm − 1)·f/tp, h, c) + gemm(T', h, f/tp, c)
    streams           = 11·h·T/(tp if sequence parallel) + fm·d_ff·T/tp, core 4.5·heads·s·T/tp (not flash)
    MoE layer         = attention + experts E/ep per device, T·k·imb/(E/ep) rows each, shared
                        experts, router gemm(T, E, h); streams + fm·f_e·(T·k·imb + n_sh·T)/tp
                        + 4·k·imb·h·T/tp + 4·E·T
    layer             = compute 3·(g + m) + recompute (full: g + m; selective: the core),
                        tp comm c + max(c − g, 0) + (c if full), c = 2 all-reduces of T·h·bpv
    ring all-reduce   = 2(n − 1)/n·bytes/(bw·link_eff) + latency·log2 n
    all-to-all        = bytes·((g − 1)/n/intra + (n − g)/n/inter)/link_eff + latency·log2 n
    head              = 3·gemm(T, V/tp, h) + stream(6·T·V/tp, 4 bytes)
    p2p               = 2·v·(T·h·bpv/tp/(bw·link_eff) + latency) when pp > 1
    bubble            = (pp − 1)/v·(t_mb − head·(1 − 1/pp))
    step              = m·(compute_mb + comm_mb) + optimizer + exposed dp reduction + bubble
    memory            = states (weights, grads, Adam, sharded over dp or not) + activations
                        (Korthikanti 2022 Table 2, × layers/pp × min(pp, m) × interleave factor)
                        + full-recompute layer + fp32 logits (pp = 1) + reserve
    MFU               = B·s·(6·N_mm + 12·L·s·d_attn)/(step·devices·peak)
Reasons (kernels.reasons), first broken rule: top_k > experts (1), tp ∤ heads (2), tp ∤ kv_heads (3),
pp ∤ layers (4), tp·pp ∤ devices (5), ep ∤ experts (6), ep ∤ dp (7), batch < dp (11),
microbatch·dp ∤ batch (8), interleave invalid (9); then out of memory (10).
"""

from __future__ import annotations

import math

import numpy as np

from bench.models import footprint_numpy, footprint_python

OPTIMIZER_BYTES_PER_PARAM = 58.0
LAYOUT_INPUTS = ("devices", "tp", "pp", "ep", "microbatch", "recompute", "interleave", "shard_optimizer",
                 "sequence_parallel")
# optional layout inputs (kernels.layout.layout_fields gives their defaults)
OPTIONAL_LAYOUT_INPUTS = ("cp", "etp", "zero_stage", "overlap", "ep_overlap", "moe_imbalance", "grad_bytes",
                          "offload_layers", "ep_dedup", "flash_attention", "moe_host_sync", "cuda_graphs",
                          "cp_allgather", "gemm_per_expert")
STEP_OUTPUTS = ("step_time_s", "compute_s", "comm_exposed_s", "bubble_s", "tokens_per_s", "mfu", "hfu",
                "memory_bytes", "dp", "micro_batches", "reason")
# reason codes (kernels.reasons), spelled out here so the reference does not import the kernels
TOP_K_EXCEEDS_EXPERTS, TP_HEADS, TP_KV, PP_LAYERS, DEVICES_TP_PP = 1, 2, 3, 4, 5
EP_EXPERTS, EP_DP, MICROBATCH_BATCH, INTERLEAVE, OUT_OF_MEMORY, BATCH_DP, MISSING_DATA = 6, 7, 8, 9, 10, 11, 14
CP_SEQ = 15
CAUSAL = 0.5  # causal flash attention computes half of the s×s score blocks
FLASH_BWD_EXTRA = 0.5  # flash-attention backward = 2.5 forwards (FlashAttention-2 §4.1), 0.5 above 2


def moe_layer_count(p):
    """floor((layers − first_dense_layers)/moe_every), at least 0; 0 for dense models."""
    if p["experts"] <= 1:
        return 0.0
    return max(math.floor((p["layers"] - p["first_dense_layers"]) / p["moe_every"]), 0.0)


# ---------------------------------------------------------------------------------------------
# plain Python, one design × layout


def _divides(d, n) -> bool:
    return d >= 1 and abs(n / d - round(n / d)) < 1e-6


def _stage_layers_py(L, pp):
    """(first, middle, last) layers per stage: q = ⌊L/pp⌋, rem = L − q·pp stages of q + 1 in the
    middle, q at the ends (first q + 1 when only one stage is light); pp = 1 one stage of L."""
    if pp <= 1:
        return L, L, L
    q = math.floor(L / pp + 1e-9)
    rem = round(L - q * pp)
    first = q + 1 if (rem > 0 and rem >= pp - 1) else q
    middle = q + 1 if rem > 0 else q
    return first, (middle if pp >= 3 else first), q


def step_python(p: dict, lay: dict, cal: dict) -> dict:
    """The layout model for one design and layout (plain numbers) → dict of floats (reason an int).

    Long: an independent, flat re-implementation of kernels.layout.step, line by line, to be checked
    against it.
    """
    L, h, V, s = p["layers"], p["d_model"], p["vocab"], p["seq_len"]
    heads, hd, kv = p["heads"], p["head_dim"], p["kv_heads"]
    fm, d_ff, f_e, n_sh = p["ffn_matrices"], p["d_ff"], p["expert_d_ff"], p["shared_experts"]
    E, k = max(p["experts"], 1.0), p["top_k"]
    n_moe = moe_layer_count(p)
    B, bpv_run = p["global_batch"], p["bytes_per_value"]
    peak, bw = p["peak_flops"], p["hbm_bw_bytes_s"]
    peak16 = p.get("peak_bf16_flops", peak)
    intra, inter, node = p["intra_bw_bytes_s"], p["inter_bw_bytes_s"], p["devices_per_node"]
    devices, tp, pp, ep = lay["devices"], lay["tp"], lay["pp"], lay["ep"]

    def opt(key, default):  # an optional layout input: absent or NaN = not given
        value = lay.get(key, math.nan)
        return value if math.isfinite(value) else default

    cp, etp = opt("cp", 1.0), opt("etp", tp)
    zero = opt("zero_stage", lay["shard_optimizer"])
    overlap = opt("overlap", cal.get("overlap", 0.0)) > 0
    b, rc, v = lay["microbatch"], lay["recompute"], lay["interleave"]
    sp = tp > 1 and lay["sequence_parallel"] != 0
    flash = opt("flash_attention", cal.get("flash_attention", 0.0)) > 0
    full = rc >= 2
    geff, heff, leff, lat = cal["gemm_eff_max"], cal["hbm_eff"], cal["link_eff"], cal["collective_latency_s"]
    wave = cal["gemm_wave_elements"]
    gb = lay.get("grad_bytes", math.nan)
    gb = gb if math.isfinite(gb) else cal["grad_bytes"]
    offload = opt("offload_layers", 0.0)
    no_dropout = p.get("dropout", 1.0) <= 0
    imb = lay.get("moe_imbalance", math.nan)
    imb = imb if math.isfinite(imb) else cal["moe_imbalance"]
    ov = cal.get("overlap_eff", 1.0) if overlap else 0.0
    fp8 = bpv_run < 1.5
    bpv = max(bpv_run, 2.0)
    peak_a = peak16 if fp8 else peak
    lin_eff = cal.get("gemm_eff_fp8", geff) if fp8 else geff
    cast = cal.get("fp8_cast_bytes", 0.0) if fp8 else 0.0
    grouped = cal.get("grouped_gemm_eff", 1.0)
    kv_dim = kv * hd * max(tp / kv, 1.0)
    d_attn = heads * hd

    def gemm(m_, n_, k_, count=1.0, nbytes=bpv, pk=peak_a, eff=geff, cst=0.0):
        tail = 1.0 + 0.5 * wave / max(count * m_ * n_, 1.0)
        return (2.0 * m_ * n_ * k_ * count * tail / (pk * eff)
                + count * (nbytes * (m_ * k_ + k_ * n_ + m_ * n_) + cst * m_ * k_) / (bw * heff))

    def lin(m_, n_, k_, count=1.0, eff=None):
        return gemm(m_, n_, k_, count, bpv_run, peak, lin_eff if eff is None else eff, cast)

    def stream(elements, nbytes=bpv):
        return elements * nbytes / (bw * heff)

    def ring_bw(group, stride):
        if group * stride <= node:
            return intra
        g = min(max(node / max(stride, 1.0), 1.0), max(group, 1.0))
        return min(intra, g * inter)

    def allreduce(nbytes, group, link):
        n = max(group, 1.0)
        return 0.0 if n <= 1.0 else 2.0 * (n - 1.0) / n * nbytes / (link * leff) + lat * math.log2(n)

    def allgather(nbytes, group, link):
        n = max(group, 1.0)
        return 0.0 if n <= 1.0 else (n - 1.0) / n * nbytes / (link * leff) + lat * math.log2(n)

    def ffn(tokens, width, split, count=1.0, eff=None):
        return (lin(tokens, (fm - 1.0) * width / split, h, count, eff)
                + lin(tokens, h, width / split, count, eff))

    # --- structure ---
    dp = devices / (tp * cp * pp)
    dp_int = max(math.floor(dp), 1.0)
    m = max(B / (dp_int * b), 1.0)
    dp_ok = _divides(tp * cp * pp, devices)
    dp1 = dp if dp_ok else 1.0
    pp_ok = pp <= L  # any pp up to the layers (uneven stages)
    v_ok = v == 1 or (v > 1 and pp > 1 and pp * v <= L + 2 and _divides(pp, m))
    if k > E:
        reason = TOP_K_EXCEEDS_EXPERTS
    elif not _divides(tp, heads):
        reason = TP_HEADS
    elif not (_divides(tp, kv) or _divides(kv, tp)):
        reason = TP_KV
    elif not pp_ok:
        reason = PP_LAYERS
    elif not dp_ok:
        reason = DEVICES_TP_PP
    elif not _divides(ep, E):
        reason = EP_EXPERTS
    elif not _divides(ep * etp, tp * cp * dp1):
        reason = EP_DP
    elif B < dp1:
        reason = BATCH_DP
    elif not _divides(dp1 * b, B):
        reason = MICROBATCH_BATCH
    elif not v_ok or v < 1:
        reason = INTERLEAVE
    elif not _divides(cp, s):
        reason = CP_SEQ
    else:
        reason = 0

    # --- one layer, one micro-batch, forward ---
    T = b * s / cp
    sq = s / cp
    proj = lin(T, (d_attn + 2.0 * kv_dim) / tp, h) + lin(T, h, d_attn / tp)
    nb = b * heads / tp
    hd_ = d_attn / heads
    # sliding-window layers compute each query's last W scores: Σ min(i+1, W) ≈ W·s − W²/2 of s²
    W, q_win = p.get("sliding_window", 0.0), p.get("window_layers", 0.0)
    scores = (1.0 - q_win) * CAUSAL + q_win * (W / s - W * W / (2.0 * s * s) if 0 < W < s else CAUSAL)
    if flash:
        core_g = (scores * 4.0 * nb * sq * s * hd_ / (peak_a * cal.get("attention_eff", geff))
                  + stream(4.0 * nb * sq * hd_))
        core_g *= 1.0 + 0.5 * wave / (nb * sq * hd_)
        core_el = 0.0
    else:
        core_g = gemm(sq, s, hd_, nb) + gemm(sq, hd_, s, nb)
        core_el = 4.5 * heads * s * T / tp
    rest_el = 11.0 * h * T / (tp if sp else 1.0) + fm * d_ff * T / tp
    core = core_g + stream(core_el)
    norms_el = 4.0 * h * T / (tp if sp else 1.0)
    sel_dense = stream(norms_el + fm * d_ff * T / tp) if flash else core
    dense_g = proj + core_g + ffn(T, d_ff, tp)
    dense_m = stream(rest_el + core_el)
    experts_dev = E / ep
    rows = T * k * imb * etp * ep / (E * tp)
    moe_g = proj + core_g + ffn(rows, f_e, etp, experts_dev, lin_eff * grouped)
    if n_sh > 0:
        moe_g += ffn(T, n_sh * f_e, tp)
    moe_g += gemm(T, E, h)
    perm = 4.0 + (4.0 if opt("ep_dedup", 0.0) == 0 and experts_dev > 1 else 0.0)  # alltoall: sort by expert
    moe_el = (rest_el - fm * d_ff * T / tp + core_el + fm * f_e * (T * k * imb + n_sh * T) / tp
              + perm * k * imb * h * T / tp + 4.0 * E * T)
    moe_m = stream(moe_el)
    sel_moe = stream(norms_el + fm * f_e * (T * k * imb + n_sh * T) / tp) if flash else core

    # --- communication ---
    ar = allreduce(T * h * bpv, tp, ring_bw(tp, 1.0))
    c_dense, c_moe = 2.0 * ar, (2.0 if etp > 1 else 1.0) * ar
    n_ep = max(ep, 1.0)
    if n_ep > 1.0:
        g_ep = min(max(node / max(etp, 1.0), 1.0), n_ep)
        a2a_bytes = T * imb * h * bpv / tp
        nodes = n_ep / g_ep
        if opt("ep_dedup", 0.0) > 0:
            remote = (nodes - 1.0) * (1.0 - (1.0 - 1.0 / nodes) ** k) if nodes > 1.0 else 0.0
        else:
            remote = k * (n_ep - g_ep) / n_ep
        a2a = a2a_bytes * (k * (g_ep - 1.0) / n_ep / intra + remote / inter) / leff + lat * math.log2(n_ep)
    else:
        a2a = 0.0
    if cp > 1:
        link = intra if tp * cp <= node else inter
        cp_t = (cp - 1.0) * 2.0 * T * kv_dim / tp * bpv / (link * leff) + (cp - 1.0) * lat
    else:
        cp_t = 0.0
    under = 0.0 if opt("cp_allgather", 0.0) > 0 else core_g  # all-gather CP (Llama 3): exposed
    cp_hidden = max(cp_t - under, 0.0) + max(2.0 * cp_t - 2.0 * under, 0.0)

    def layer(g, mem, c, latency, sel):
        redo = g + mem if full else (sel if rc >= 1 else 0.0)
        fwd = max(c - (ov if tp <= node else 0.0) * g, 0.0)  # TP overlap: NVLink peers only
        return 3.0 * (g + mem) + redo + latency, fwd + max(c - g, 0.0) + (fwd if full else 0.0) + cp_hidden

    launched = 0.0 if opt("cuda_graphs", 0.0) > 0 else 1.0  # whole-layer CUDA graphs: no launch latency
    lat_l = cal.get("layer_latency_s", 0.0) * launched + (FLASH_BWD_EXTRA * core_g if flash else 0.0)
    # softmax exponentials on the special-function units
    if flash and math.isfinite(cal.get("attention_exp_per_s", math.inf)):
        lat_l += scores * nb * sq * s * (3.0 if full else 2.0) / cal["attention_exp_per_s"]
    comp_dense, comm_dense = layer(dense_g, dense_m, c_dense, lat_l, sel_dense)
    moe_lat = (cal.get("moe_layer_latency_s", 0.0)
               + opt("moe_host_sync", 0.0) * cal.get("moe_sync_latency_s", 0.0)
               + opt("gemm_per_expert", 0.0) * experts_dev
               * (cal.get("moe_expert_latency_s", 0.0) + (cal.get("moe_expert_fp8_latency_s", 0.0) if fp8 else 0.0))
               ) * launched
    comp_moe, comm_moe = layer(moe_g, moe_m, c_moe, lat_l + moe_lat, sel_moe)
    frac = n_moe / L if L != 0 else n_moe
    comp_l = (1.0 - frac) * comp_dense + frac * comp_moe
    tp_l = (1.0 - frac) * comm_dense + frac * comm_moe
    a2a_layer = 2.0 * a2a * (3.0 if full else 2.0)
    if opt("ep_overlap", 0.0) > 0:  # hidden under the partner pass, exposed on the unpaired ones
        hidden = max(a2a_layer - cal.get("overlap_eff", 1.0) * comp_moe, 0.0)
        warmup = (pp - 1.0) + (v - 1.0) * pp if v > 1 else (pp - 1.0) / 2.0
        unpaired = min((warmup + 1.0) / max(m * v, 1.0), 1.0)
        a2a_layer = hidden + unpaired * (a2a_layer - hidden)
    a2a_l = frac * a2a_layer
    head = 3.0 * gemm(T, V / tp, h) + stream(6.0 * T * V / tp, 4.0)
    first, middle, last = _stage_layers_py(L, pp)
    unit = comp_l + tp_l + a2a_l
    crit_last = last * unit + head >= middle * unit
    n_c = last if crit_last else middle
    compute_mb = n_c * comp_l + (head if crit_last else 0.0)
    tp_mb = n_c * tp_l + 2.0 * ar
    a2a_mb = n_c * a2a_l
    if pp > 1:
        link = intra if tp * cp * pp * dp_int <= node else inter
        p2p_mb = 2.0 * v * (T * h * bpv / tp / (link * leff) + lat)
    else:
        p2p_mb = 0.0
    bubble = (pp - 1.0) / v * ((L * unit + head) / pp + 2.0 * ar + p2p_mb)

    # --- memory: the first stage, or the second when the first holds fewer layers ---
    emb_all = V * h * (2.0 - p["tied_embeddings"])
    expert_total = n_moe * E * fm * h * f_e
    lnx = (p["params"] - emb_all - h - expert_total) / L / tp
    lex = expert_total / L / (etp * ep)
    dp_m = max(dp, 1.0)
    D_m = dp_m * cp
    edp_m = max(tp * cp * dp_m / (etp * ep), 1.0)
    w_b = cal.get("fp8_weight_bytes", 2.0) if fp8 else bpv
    opt_b = 8.0 if bpv_run >= 4 else 12.0

    def per_param(d_):
        return ((w_b / d_ if zero >= 3 else w_b) + (gb / d_ if zero >= 2 else gb)
                + (opt_b / d_ if zero >= 1 else opt_b))

    moe_frac = n_moe / L if L != 0 else n_moe
    ff_rows = (1.0 - moe_frac) * fm * d_ff + moe_frac * (fm * f_e * (k * imb + n_sh) + 2.0 * h * k * imb)

    def activations(mode):
        sbh = sq * b * h
        total = (3.0 * sbh + 4.0 * sq * b * d_attn + 4.0 * sq * b * kv_dim + 3.0 * sbh + 2.0 * sq * b * ff_rows
                 + 4.0 * sbh)
        if mode >= 2:
            return 2.0 * sbh / (tp if sp else 1.0)
        split = total / tp if sp else 10.0 * sbh + (total - 10.0 * sbh) / tp
        saved = 0.0
        if fp8:  # linear-layer inputs kept in FP8 (1 byte of 2)
            unsplit = h + (1.0 - moe_frac) * h + moe_frac * (h * k * imb + (h if n_sh > 0 else 0.0))
            split_in = d_attn + (1.0 - moe_frac) * d_ff + moe_frac * f_e * (k * imb + n_sh)
            saved = sq * b * (unsplit / (tp if sp else 1.0) + split_in / tp)
        if no_dropout:  # no dropout masks
            saved += 2.0 * sbh / (tp if sp else 1.0)
        if mode == 1 and flash:  # norms and activation functions recomputed
            act_in = (fm - 1.0) * ((1.0 - moe_frac) * d_ff + moe_frac * f_e * (k * imb + n_sh))
            saved += 4.0 * sbh / (tp if sp else 1.0) + 2.0 * sq * b * act_in / tp
        return split + (0.0 if (mode >= 1 or flash) else 5.0 * heads * sq * sq * b / tp) - saved

    interleaved = 1.0 + (pp - 1.0) / (pp * v) if v > 1 else 1.0
    scale = bpv / 2.0
    gathered = 2.0 * (lnx + lex) * w_b if zero >= 3 else 0.0

    def stage_memory(layers, in_flight, emb, logits):
        states = (layers * lnx + emb) * per_param(D_m) + layers * lex * per_param(edp_m)
        act = (activations(rc) * max(layers - offload, 0.0) * in_flight * interleaved
               + (activations(0.0) if full else 0.0))
        act = (act + gathered / scale + logits) * scale
        return states + act

    if pp > 1:
        memory = max(stage_memory(first, min(pp, m), V * h / tp, 0.0),
                     stage_memory(middle, min(max(pp - 1.0, 1.0), m), 0.0, 0.0))
    else:
        memory = stage_memory(first, min(pp, m), emb_all / tp, 4.0 * sq * b * V / tp)
    memory += cal["memory_reserve_bytes"]

    # --- data parallel, optimizer, step ---
    p_exp = first * lex
    p_nonexp = first * lnx + (V * h / tp if pp > 1 else emb_all / tp)
    D = dp_int * cp
    edp = max(tp * cp * dp_int / (etp * ep), 1.0)

    def reduce(p_, n, link):
        if zero >= 1:  # gradients reduce-scattered after every micro-batch with ZeRO-2/3
            return (allgather(p_ * gb, n, link) * (m if zero >= 2 else 1.0)
                    + (0.0 if zero >= 3 else allgather(p_ * w_b, n, link)))
        return allreduce(p_ * gb, n, link)

    t_dp = reduce(p_nonexp, D, ring_bw(D, tp)) + reduce(p_exp, edp, ring_bw(edp, etp * ep))
    if overlap:
        window = ov * (2.0 / 3.0 * compute_mb + (compute_mb / 3.0 if zero >= 1 else 0.0))
    else:
        window = cal["dp_overlap"] * 2.0 / 3.0 * compute_mb
    dp_exposed = max(t_dp - window, 0.0)
    if zero >= 3:
        ag = 2.0 * (allgather(p_nonexp * w_b, D, ring_bw(D, tp)) + allgather(p_exp * w_b, edp, ring_bw(edp, etp * ep)))
        dp_exposed += m * max(ag - ov * compute_mb, 0.0)
    t_opt = stream((p_nonexp / D + p_exp / edp if zero >= 1 else p_nonexp + p_exp) * OPTIMIZER_BYTES_PER_PARAM, 1.0)
    compute_s = m * compute_mb + t_opt
    # interleaved schedules hide the p2p sends under the other chunk's compute (overlap_p2p_comm)
    p2p_exp = p2p_mb - min(p2p_mb, ov * compute_mb) if (overlap and v > 1) else p2p_mb
    comm_s = m * (tp_mb + a2a_mb + p2p_exp) + dp_exposed
    step_s = compute_s + comm_s + bubble

    n_mm = p["active_params"] - (0.0 if p["tied_embeddings"] else V * h)
    model_flops = 6.0 * n_mm + 12.0 * L * s * d_attn
    attn_core = 4.0 * L * s * d_attn
    redo_flops = 2.0 * n_mm + attn_core if full else (attn_core if rc >= 1 else 0.0)
    tokens_per_s = B * s / step_s
    if reason == 0 and memory > p["hbm_bytes"]:
        reason = OUT_OF_MEMORY
    return {
        "step_time_s": step_s, "compute_s": compute_s, "comm_exposed_s": comm_s, "bubble_s": bubble,
        "tokens_per_s": tokens_per_s, "mfu": tokens_per_s * model_flops / (devices * peak),
        "hfu": tokens_per_s * (model_flops + redo_flops) / (devices * peak),
        "memory_bytes": memory, "dp": dp, "micro_batches": m, "reason": reason,
    }


def with_params(p: dict) -> dict:
    """p with params and active_params counted by the fixed-layout chain where not given (for the
    layout model only: the chain itself counts FLOPs differently when params are given)."""
    out = footprint_python({**p, "mfu": 1.0})
    return {**p, "params": out["params"], "active_params": out["active_params"]}


def best_layout_python(p: dict, layouts: list[dict], cal: dict, objective: str = "total_tco2e") -> dict:
    """The feasible layout of least ``objective`` (ties: the shortest step, then the first
    candidate) for one configuration: the chain's outputs with
    the layout model's (``layout`` = its index in ``layouts``, −1 when none is feasible; then
    ``reason`` is 14 if a figure is missing for some layout, else the highest code met)."""
    q = with_params(p)
    best, best_score, worst, missing = None, (math.inf, math.inf), 0, False
    for i, lay in enumerate(layouts):
        st = step_python(q, lay, cal)
        out = footprint_python({**p, "devices": lay["devices"], "mfu": st["mfu"]})
        reason = TOP_K_EXCEEDS_EXPERTS if out["reason"] == TOP_K_EXCEEDS_EXPERTS else st["reason"]
        if reason == 0 and not (math.isfinite(out["total_tco2e"]) and math.isfinite(out[objective])):
            reason = MISSING_DATA
        if reason == 0 and (out[objective], st["step_time_s"]) < best_score:
            best, best_score = {**out, **st, "layout": i}, (out[objective], st["step_time_s"])
        worst, missing = max(worst, reason), missing or reason == MISSING_DATA
    if best is None:
        return {"layout": -1, "reason": MISSING_DATA if missing else worst, objective: math.nan}
    best["reason"] = 0
    return best


# ---------------------------------------------------------------------------------------------
# NumPy, broadcast arrays


def _divides_np(d, n):
    q = n / np.maximum(d, 1.0)
    return (d >= 1) & (np.abs(q - np.round(q)) < 1e-6)


def step_numpy(p: dict, lay: dict, cal: dict) -> dict:
    """The layout model over broadcast NumPy arrays (design inputs against layout inputs).

    Long: an independent, flat re-implementation of kernels.layout.step, line by line, to be checked
    against it.
    """
    a = {k: np.asarray(val) for k, val in p.items()}
    w = {k: np.asarray(lay[k]) for k in LAYOUT_INPUTS}
    for key in OPTIONAL_LAYOUT_INPUTS:
        if key in lay:
            w[key] = np.asarray(lay[key])
    dt = np.result_type(*[x.dtype for x in list(a.values()) + list(w.values())], np.float32)
    a = {k: x.astype(dt, copy=False) for k, x in a.items()}
    w = {k: x.astype(dt, copy=False) for k, x in w.items()}
    c = {k: np.asarray(val).astype(dt) for k, val in cal.items()}
    one, zero_ = dt.type(1.0), dt.type(0.0)
    L, h, V, s = a["layers"], a["d_model"], a["vocab"], a["seq_len"]
    heads, hd, kv = a["heads"], a["head_dim"], a["kv_heads"]
    fm, d_ff, f_e, n_sh = a["ffn_matrices"], a["d_ff"], a["expert_d_ff"], a["shared_experts"]
    E, k = np.maximum(a["experts"], one), a["top_k"]
    n_moe = np.where(a["experts"] > 1, np.maximum(np.floor((L - a["first_dense_layers"]) / a["moe_every"]), zero_),
                     zero_)
    B, bpv_run = a["global_batch"], a["bytes_per_value"]
    peak, bw = a["peak_flops"], a["hbm_bw_bytes_s"]
    peak16 = a.get("peak_bf16_flops", peak)
    intra, inter, node = a["intra_bw_bytes_s"], a["inter_bw_bytes_s"], a["devices_per_node"]
    devices, tp, pp, ep = w["devices"], w["tp"], w["pp"], w["ep"]
    def opt(key, default):  # an optional layout input: absent or NaN = not given
        value = w.get(key)
        return np.asarray(default, dt) + np.zeros_like(tp) if value is None else \
            np.where(np.isfinite(value), value, default)

    cp = opt("cp", one)
    etp = opt("etp", tp)
    zero = opt("zero_stage", w["shard_optimizer"])
    overlap = opt("overlap", c.get("overlap", zero_)) > 0
    b, rc, v = w["microbatch"], w["recompute"], w["interleave"]
    sp = (tp > 1) & (w["sequence_parallel"] != 0)
    flash = opt("flash_attention", c.get("flash_attention", zero_)) > 0
    full = rc >= 2
    geff, heff, leff, lat = c["gemm_eff_max"], c["hbm_eff"], c["link_eff"], c["collective_latency_s"]
    wave = c["gemm_wave_elements"]
    gb_given = w.get("grad_bytes")
    gb = c["grad_bytes"] if gb_given is None else np.where(np.isfinite(gb_given), gb_given, c["grad_bytes"])
    offload = opt("offload_layers", zero_)
    no_dropout = np.asarray(a.get("dropout", one)) <= 0
    imb_given = w.get("moe_imbalance")
    imb = c["moe_imbalance"] if imb_given is None else np.where(np.isfinite(imb_given), imb_given, c["moe_imbalance"])
    ov = np.where(overlap, c.get("overlap_eff", one), zero_)
    fp8 = bpv_run < 1.5
    bpv = np.maximum(bpv_run, dt.type(2.0))
    peak_a = np.where(fp8, peak16, peak)
    lin_eff = np.where(fp8, c.get("gemm_eff_fp8", geff), geff)
    cast = np.where(fp8, c.get("fp8_cast_bytes", zero_), zero_)
    grouped = c.get("grouped_gemm_eff", one)
    d_attn = heads * hd
    kv_dim = kv * hd * np.maximum(tp / kv, one)

    def gemm(m_, n_, k_, count=one, nbytes=None, pk=None, eff=None, cst=zero_):
        nbytes = bpv if nbytes is None else nbytes
        pk = peak_a if pk is None else pk
        eff = geff if eff is None else eff
        tail = 1.0 + 0.5 * wave / np.maximum(count * m_ * n_, one)
        return (2.0 * m_ * n_ * k_ * count * tail / (pk * eff)
                + count * (nbytes * (m_ * k_ + k_ * n_ + m_ * n_) + cst * m_ * k_) / (bw * heff))

    def lin(m_, n_, k_, count=one, eff=None):
        return gemm(m_, n_, k_, count, bpv_run, peak, lin_eff if eff is None else eff, cast)

    def stream(elements, nbytes=None):
        return elements * (bpv if nbytes is None else nbytes) / (bw * heff)

    def ring_bw(group, stride):
        g = np.clip(node / np.maximum(stride, one), one, np.maximum(group, one))
        return np.where(group * stride <= node, intra, np.minimum(intra, g * inter))

    def allreduce(nbytes, group, link):
        n = np.maximum(group, one)
        return np.where(n > 1, 2.0 * (n - 1.0) / n * nbytes / (link * leff) + lat * np.log2(n), zero_)

    def allgather(nbytes, group, link):
        n = np.maximum(group, one)
        return np.where(n > 1, (n - 1.0) / n * nbytes / (link * leff) + lat * np.log2(n), zero_)

    def ffn(tokens, width, split, count=one, eff=None):
        return lin(tokens, (fm - 1.0) * width / split, h, count, eff) + lin(tokens, h, width / split, count, eff)

    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        dp = devices / (tp * cp * pp)
        dp_int = np.maximum(np.floor(dp), one)
        m = np.maximum(B / (dp_int * b), one)
        dp_ok = _divides_np(tp * cp * pp, devices)
        dp1 = np.where(dp_ok, dp, one)
        pp_ok = pp <= L
        v_ok = (v == 1) | ((v > 1) & (pp > 1) & (pp * v <= L + 2) & _divides_np(pp, m))
        rules = [(TOP_K_EXCEEDS_EXPERTS, k > E), (TP_HEADS, ~_divides_np(tp, heads)),
                 (TP_KV, ~(_divides_np(tp, kv) | _divides_np(kv, tp))),
                 (PP_LAYERS, ~pp_ok), (DEVICES_TP_PP, ~dp_ok), (EP_EXPERTS, ~_divides_np(ep, E)),
                 (EP_DP, ~_divides_np(ep * etp, tp * cp * dp1)), (BATCH_DP, B < dp1),
                 (MICROBATCH_BATCH, ~_divides_np(dp1 * b, B)), (INTERLEAVE, ~v_ok | (v < 1)),
                 (CP_SEQ, ~_divides_np(cp, s))]
        reason = np.zeros(np.broadcast_shapes(*[np.shape(r) for _, r in rules]), np.int32)
        for code, bad in reversed(rules):
            reason = np.where(bad, np.int32(code), reason)

        T = b * s / cp
        sq = s / cp
        proj = lin(T, (d_attn + 2.0 * kv_dim) / tp, h) + lin(T, h, d_attn / tp)
        nb = b * heads / tp
        hd_ = d_attn / heads
        W = a.get("sliding_window", zero_)
        q_win = a.get("window_layers", zero_)
        win = (W > 0) & (W < s)
        scores = (one - q_win) * CAUSAL + q_win * np.where(win, W / s - W * W / (2.0 * s * s), dt.type(CAUSAL))
        core_flash = ((scores * 4.0 * nb * sq * s * hd_ / (peak_a * c.get("attention_eff", geff))
                       + stream(4.0 * nb * sq * hd_))
                      * (1.0 + 0.5 * wave / (nb * sq * hd_)))
        core_g = np.where(flash, core_flash, gemm(sq, s, hd_, nb) + gemm(sq, hd_, s, nb))
        core_el = np.where(flash, zero_, 4.5 * heads * s * T / tp)
        rest_el = 11.0 * h * T / np.where(sp, tp, one) + fm * d_ff * T / tp
        core = core_g + stream(core_el)
        norms_el = 4.0 * h * T / np.where(sp, tp, one)
        sel_dense = np.where(flash, stream(norms_el + fm * d_ff * T / tp), core)
        dense_g = proj + core_g + ffn(T, d_ff, tp)
        dense_m = stream(rest_el + core_el)
        experts_dev = E / ep
        rows = T * k * imb * etp * ep / (E * tp)
        moe_g = (proj + core_g + ffn(rows, f_e, etp, experts_dev, lin_eff * grouped)
                 + np.where(n_sh > 0, ffn(T, n_sh * f_e, tp), zero_) + gemm(T, E, h))
        perm = 4.0 + np.where((opt("ep_dedup", zero_) == 0) & (experts_dev > 1), 4.0 * one, zero_)
        moe_el = (rest_el - fm * d_ff * T / tp + core_el + fm * f_e * (T * k * imb + n_sh * T) / tp
                  + perm * k * imb * h * T / tp + 4.0 * E * T)
        moe_m = stream(moe_el)
        sel_moe = np.where(flash, stream(norms_el + fm * f_e * (T * k * imb + n_sh * T) / tp), core)

        ar = allreduce(T * h * bpv, tp, ring_bw(tp, one))
        c_dense, c_moe = 2.0 * ar, np.where(etp > 1, dt.type(2.0), one) * ar
        n_ep = np.maximum(ep, one)
        g_ep = np.clip(node / np.maximum(etp, one), one, n_ep)
        a2a_bytes = T * imb * h * bpv / tp
        nodes = n_ep / g_ep
        distinct = np.where(nodes > 1, (nodes - 1.0) * (1.0 - (1.0 - 1.0 / np.maximum(nodes, one)) ** k), zero_)
        remote = np.where(opt("ep_dedup", zero_) > 0, distinct, k * (n_ep - g_ep) / n_ep)
        a2a = np.where(n_ep > 1, a2a_bytes * (k * (g_ep - 1.0) / n_ep / intra + remote / inter) / leff
                       + lat * np.log2(n_ep), zero_)
        cp_link = np.where(tp * cp <= node, intra, inter)
        cp_t = np.where(cp > 1, (cp - 1.0) * 2.0 * T * kv_dim / tp * bpv / (cp_link * leff) + (cp - 1.0) * lat, zero_)
        under = np.where(opt("cp_allgather", zero_) > 0, zero_, core_g)  # all-gather CP (Llama 3): exposed
        cp_hidden = np.maximum(cp_t - under, zero_) + np.maximum(2.0 * cp_t - 2.0 * under, zero_)

        def layer(g, mem, cc, latency, sel):
            redo = np.where(full, g + mem, np.where(rc >= 1, sel, zero_))
            fwd = np.maximum(cc - np.where(tp <= node, ov, zero_) * g, zero_)  # TP overlap: NVLink peers only
            comm = fwd + np.maximum(cc - g, zero_) + np.where(full, fwd, zero_) + cp_hidden
            return 3.0 * (g + mem) + redo + latency, comm

        launched = np.where(opt("cuda_graphs", zero_) > 0, zero_, one)  # whole-layer CUDA graphs
        lat_l = c.get("layer_latency_s", zero_) * launched + np.where(flash, FLASH_BWD_EXTRA * core_g, zero_)
        if "attention_exp_per_s" in c:  # softmax exponentials on the special-function units
            rate = np.asarray(c["attention_exp_per_s"], dt)
            lat_l = lat_l + np.where(flash & np.isfinite(rate),
                                     scores * nb * sq * s * np.where(full, dt.type(3.0), dt.type(2.0))
                                     / np.where(np.isfinite(rate), rate, one), zero_)
        comp_dense, comm_dense = layer(dense_g, dense_m, c_dense, lat_l, sel_dense)
        moe_lat = (c.get("moe_layer_latency_s", zero_)
                   + opt("moe_host_sync", zero_) * c.get("moe_sync_latency_s", zero_)
                   + opt("gemm_per_expert", zero_) * experts_dev
                   * (c.get("moe_expert_latency_s", zero_) + np.where(fp8, c.get("moe_expert_fp8_latency_s", zero_),
                                                                      zero_))) * launched
        comp_moe, comm_moe = layer(moe_g, moe_m, c_moe, lat_l + moe_lat, sel_moe)
        frac = n_moe / np.where(L == 0, one, L)
        comp_l = (1.0 - frac) * comp_dense + frac * comp_moe
        tp_l = (1.0 - frac) * comm_dense + frac * comm_moe
        a2a_layer = 2.0 * a2a * np.where(full, dt.type(3.0), dt.type(2.0))
        ep_ov = opt("ep_overlap", zero_) > 0
        hidden = np.maximum(a2a_layer - c.get("overlap_eff", one) * comp_moe, zero_)
        warmup = np.where(v > 1, (pp - 1.0) + (v - 1.0) * pp, (pp - 1.0) / 2.0)
        unpaired = np.minimum((warmup + 1.0) / np.maximum(m * v, one), one)
        a2a_layer = np.where(ep_ov, hidden + unpaired * (a2a_layer - hidden), a2a_layer)
        a2a_l = frac * a2a_layer
        head = 3.0 * gemm(T, V / tp, h) + stream(6.0 * T * V / tp, dt.type(4.0))
        pp1 = np.maximum(pp, one)
        q = np.floor(L / pp1 + 1e-9)
        rem = np.round(L - q * pp1)
        first = q + np.where((rem > 0) & (rem >= pp1 - 1), one, zero_)
        middle = np.where(pp1 >= 3, q + np.where(rem > 0, one, zero_), first)
        last = q
        unit = comp_l + tp_l + a2a_l
        crit_last = last * unit + head >= middle * unit
        n_c = np.where(crit_last, last, middle)
        compute_mb = n_c * comp_l + np.where(crit_last, head, zero_)
        tp_mb = n_c * tp_l + 2.0 * ar
        a2a_mb = n_c * a2a_l
        link = np.where(tp * cp * pp * dp_int <= node, intra, inter)
        p2p_mb = np.where(pp > 1, 2.0 * v * (T * h * bpv / tp / (link * leff) + lat), zero_)
        bubble = (pp - 1.0) / v * ((L * unit + head) / pp + 2.0 * ar + p2p_mb)

        emb_all = V * h * (2.0 - a["tied_embeddings"])
        expert_total = n_moe * E * fm * h * f_e
        lnx = (a["params"] - emb_all - h - expert_total) / L / tp
        lex = expert_total / L / (etp * ep)
        dp_m = np.maximum(dp, one)
        D_m = dp_m * cp
        edp_m = np.maximum(tp * cp * dp_m / (etp * ep), one)
        w_b = np.where(fp8, c.get("fp8_weight_bytes", dt.type(2.0)), bpv)
        opt_b = np.where(bpv_run >= 4, dt.type(8.0), dt.type(12.0))

        def per_param(d_):
            return (w_b / np.where(zero >= 3, d_, one) + gb / np.where(zero >= 2, d_, one)
                    + opt_b / np.where(zero >= 1, d_, one))

        ff_rows = (1.0 - frac) * fm * d_ff + frac * (fm * f_e * (k * imb + n_sh) + 2.0 * h * k * imb)
        sbh = sq * b * h
        total = (3.0 * sbh + 4.0 * sq * b * d_attn + 4.0 * sq * b * kv_dim + 3.0 * sbh + 2.0 * sq * b * ff_rows
                 + 4.0 * sbh)
        split = np.where(sp, total / tp, 10.0 * sbh + (total - 10.0 * sbh) / tp)
        kept = 2.0 * sbh / np.where(sp, tp, one)
        scores = 5.0 * heads * sq * sq * b / tp
        unsplit_in = h + (1.0 - frac) * h + frac * (h * k * imb + np.where(n_sh > 0, h, zero_))
        split_in = d_attn + (1.0 - frac) * d_ff + frac * f_e * (k * imb + n_sh)
        saved = np.where(fp8, sq * b * (unsplit_in / np.where(sp, tp, one) + split_in / tp), zero_)
        saved = saved + np.where(no_dropout, 2.0 * sbh / np.where(sp, tp, one), zero_)
        act_in = (fm - 1.0) * ((1.0 - frac) * d_ff + frac * f_e * (k * imb + n_sh))
        cheap = 4.0 * sbh / np.where(sp, tp, one) + 2.0 * sq * b * act_in / tp
        saved_sel = saved + np.where(flash, cheap, zero_)
        act_none = split + np.where(flash, zero_, scores) - saved
        act_mode = np.where(full, kept, split + np.where((rc >= 1) | flash, zero_, scores)
                            - np.where(rc == 1, saved_sel, saved))
        interleaved = np.where(v > 1, 1.0 + (pp - 1.0) / (pp * v), one)
        scale = bpv / 2.0
        gathered = np.where(zero >= 3, 2.0 * (lnx + lex) * w_b, zero_)

        def stage_memory(layers, in_flight, emb, logits):
            states = (layers * lnx + emb) * per_param(D_m) + layers * lex * per_param(edp_m)
            act = (act_mode * np.maximum(layers - offload, zero_) * in_flight * interleaved
                   + np.where(full, act_none, zero_))
            return states + (act + gathered / scale + logits) * scale

        mem_first = stage_memory(first, np.minimum(pp, m), np.where(pp > 1, V * h, emb_all) / tp,
                                 np.where(pp > 1, zero_, 4.0 * sq * b * V / tp))
        mem_mid = stage_memory(middle, np.minimum(np.maximum(pp - 1.0, one), m), zero_, zero_)
        memory = np.where(pp > 1, np.maximum(mem_first, mem_mid), mem_first) + c["memory_reserve_bytes"]

        p_exp = first * lex
        p_nonexp = first * lnx + np.where(pp > 1, V * h, emb_all) / tp
        D = dp_int * cp
        edp = np.maximum(tp * cp * dp_int / (etp * ep), one)

        def reduce(p_, n, lk):
            rs_ag = (allgather(p_ * gb, n, lk) * np.where(zero >= 2, m, one)
                     + np.where(zero >= 3, zero_, allgather(p_ * w_b, n, lk)))
            return np.where(zero >= 1, rs_ag, allreduce(p_ * gb, n, lk))

        bw_d, bw_e = ring_bw(D, tp), ring_bw(edp, etp * ep)
        t_dp = reduce(p_nonexp, D, bw_d) + reduce(p_exp, edp, bw_e)
        window = np.where(overlap, ov * (2.0 / 3.0 * compute_mb + np.where(zero >= 1, compute_mb / 3.0, zero_)),
                          c["dp_overlap"] * 2.0 / 3.0 * compute_mb)
        dp_exposed = np.maximum(t_dp - window, zero_)
        ag = 2.0 * (allgather(p_nonexp * w_b, D, bw_d) + allgather(p_exp * w_b, edp, bw_e))
        dp_exposed = dp_exposed + np.where(zero >= 3, m * np.maximum(ag - ov * compute_mb, zero_), zero_)
        t_opt = stream(np.where(zero >= 1, p_nonexp / D + p_exp / edp, p_nonexp + p_exp) * OPTIMIZER_BYTES_PER_PARAM,
                       one)
        compute_s = m * compute_mb + t_opt
        p2p_exp = p2p_mb - np.where(overlap & (v > 1), np.minimum(p2p_mb, ov * compute_mb), zero_)
        comm_s = m * (tp_mb + a2a_mb + p2p_exp) + dp_exposed
        step_s = compute_s + comm_s + bubble

        n_mm = a["active_params"] - np.where(a["tied_embeddings"] != 0, zero_, V * h)
        model_flops = 6.0 * n_mm + 12.0 * L * s * d_attn
        attn_core = 4.0 * L * s * d_attn
        redo_flops = np.where(full, 2.0 * n_mm + attn_core, np.where(rc >= 1, attn_core, zero_))
        tokens_per_s = B * s / step_s
        reason = np.where((reason == 0) & (memory > a["hbm_bytes"]), np.int32(OUT_OF_MEMORY), reason)
        out = {
            "step_time_s": step_s, "compute_s": compute_s, "comm_exposed_s": comm_s, "bubble_s": bubble,
            "tokens_per_s": tokens_per_s, "mfu": tokens_per_s * model_flops / (devices * peak),
            "hfu": tokens_per_s * (model_flops + redo_flops) / (devices * peak),
            "memory_bytes": memory, "dp": dp, "micro_batches": m, "reason": reason.astype(np.int32),
        }
    shape = np.broadcast_shapes(*[np.shape(x) for x in out.values()])
    return {key: np.broadcast_to(x, shape) for key, x in out.items()}


def best_layout_numpy(x: dict, layouts: dict, cal: dict, objective: str = "total_tco2e") -> dict:
    """``best_layout_python`` vectorised: x holds n points (1-D arrays, params counted or given by
    ``footprint_numpy``'s rule), ``cal`` scalars or n-arrays, layouts m candidates (1-D arrays, the
    points keep their own device counts); every point meets every layout (n × m), the least
    feasible ``objective`` is picked per point. Returns 1-D arrays."""
    x = {key: np.asarray(val) for key, val in x.items()}
    n = np.broadcast_shapes(*[val.shape for val in x.values()])[0]
    design = footprint_numpy({**x, "mfu": np.ones(n, x["tokens"].dtype)})
    col = {key: val[:, None] for key, val in x.items()}
    counted = {**col, "params": design["params"][:, None], "active_params": design["active_params"][:, None]}
    row = {key: np.asarray(val, x["tokens"].dtype)[None, :] for key, val in layouts.items()}
    st = step_numpy(counted, {**row, "devices": col["devices"]},
                    {key: np.asarray(val)[..., None] for key, val in cal.items()})
    out = footprint_numpy({**col, "mfu": st["mfu"]})
    reason = np.where(out["reason"] == TOP_K_EXCEEDS_EXPERTS, TOP_K_EXCEEDS_EXPERTS, st["reason"])
    unknown = ~np.isfinite(out["total_tco2e"]) | ~np.isfinite(out[objective])
    reason = np.where((reason == 0) & unknown, MISSING_DATA, reason)
    score = np.where(reason == 0, out[objective], np.inf)
    least = score == score.min(axis=1, keepdims=True)  # among those, the shortest step, then the first
    j = np.argmin(np.where(least & (reason == 0), st["step_time_s"], np.inf), axis=1)
    rows = np.arange(n)
    best = {key: np.broadcast_to(val, score.shape)[rows, j] for key, val in {**out, **st}.items()}
    none = ~np.isfinite(score[rows, j])
    worst = np.where((reason == MISSING_DATA).any(axis=1), MISSING_DATA, reason.max(axis=1))
    best["reason"] = np.where(none, worst, 0).astype(np.int32)
    best["layout"] = np.where(none, -1, j)
    return best
