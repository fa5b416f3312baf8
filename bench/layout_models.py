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
STEP_OUTPUTS = ("step_time_s", "compute_s", "comm_exposed_s", "bubble_s", "tokens_per_s", "mfu", "hfu",
                "memory_bytes", "dp", "micro_batches", "reason")
# reason codes (kernels.reasons), spelled out here so the reference does not import the kernels
TOP_K_EXCEEDS_EXPERTS, TP_HEADS, TP_KV, PP_LAYERS, DEVICES_TP_PP = 1, 2, 3, 4, 5
EP_EXPERTS, EP_DP, MICROBATCH_BATCH, INTERLEAVE, OUT_OF_MEMORY, BATCH_DP, MISSING_DATA = 6, 7, 8, 9, 10, 11, 14


def moe_layer_count(p):
    """floor((layers − first_dense_layers)/moe_every), at least 0; 0 for dense models."""
    if p["experts"] <= 1:
        return 0.0
    return max(math.floor((p["layers"] - p["first_dense_layers"]) / p["moe_every"]), 0.0)


# ---------------------------------------------------------------------------------------------
# plain Python, one design × layout


def _divides(d, n) -> bool:
    return d >= 1 and abs(n / d - round(n / d)) < 1e-6


def step_python(p: dict, lay: dict, cal: dict) -> dict:
    """The layout model for one design and layout (plain numbers) → dict of floats (reason an int).

    Long: an independent, flat re-implementation of kernels.layout.step, line by line, to be checked
    against it.
    """
    L, h, V, s = p["layers"], p["d_model"], p["vocab"], p["seq_len"]
    heads, hd, kv = p["heads"], p["head_dim"], p["kv_heads"]
    d_attn, kv_dim = heads * hd, kv * hd
    fm, d_ff, f_e, n_sh = p["ffn_matrices"], p["d_ff"], p["expert_d_ff"], p["shared_experts"]
    E, k = max(p["experts"], 1.0), p["top_k"]
    n_moe = moe_layer_count(p)
    B, bpv = p["global_batch"], p["bytes_per_value"]
    peak, bw = p["peak_flops"], p["hbm_bw_bytes_s"]
    intra, inter, node = p["intra_bw_bytes_s"], p["inter_bw_bytes_s"], p["devices_per_node"]
    devices, tp, pp, ep = lay["devices"], lay["tp"], lay["pp"], lay["ep"]
    b, rc, v = lay["microbatch"], lay["recompute"], lay["interleave"]
    sp = tp > 1 and lay["sequence_parallel"] != 0
    shard = lay["shard_optimizer"] > 0
    flash = lay.get("flash_attention", 0.0) > 0
    full = rc >= 2
    geff, heff, leff, lat = cal["gemm_eff_max"], cal["hbm_eff"], cal["link_eff"], cal["collective_latency_s"]
    wave, imb, gb = cal["gemm_wave_elements"], cal["moe_imbalance"], cal["grad_bytes"]

    def gemm(m_, n_, k_, count=1.0):
        tail = 1.0 + 0.5 * wave / max(count * m_ * n_, 1.0)
        return (2.0 * m_ * n_ * k_ * count * tail / (peak * geff)
                + count * bpv * (m_ * k_ + k_ * n_ + m_ * n_) / (bw * heff))

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

    def ffn(tokens, width, count=1.0):
        return gemm(tokens, (fm - 1.0) * width / tp, h, count) + gemm(tokens, h, width / tp, count)

    # --- structure ---
    dp = devices / (tp * pp)
    dp_int = max(math.floor(dp), 1.0)
    m = max(B / (dp_int * b), 1.0)
    dp_ok = _divides(tp * pp, devices)
    dp1 = dp if dp_ok else 1.0
    v_ok = v == 1 or (v > 1 and pp > 1 and _divides(pp * v, L) and _divides(pp, m))
    if k > E:
        reason = TOP_K_EXCEEDS_EXPERTS
    elif not _divides(tp, heads):
        reason = TP_HEADS
    elif not _divides(tp, kv):
        reason = TP_KV
    elif not _divides(pp, L):
        reason = PP_LAYERS
    elif not dp_ok:
        reason = DEVICES_TP_PP
    elif not _divides(ep, E):
        reason = EP_EXPERTS
    elif not _divides(ep, dp1):
        reason = EP_DP
    elif B < dp1:
        reason = BATCH_DP
    elif not _divides(dp1 * b, B):
        reason = MICROBATCH_BATCH
    elif not v_ok or v < 1:
        reason = INTERLEAVE
    else:
        reason = 0

    # --- one layer, one micro-batch, forward ---
    T = b * s
    proj = gemm(T, (d_attn + 2.0 * kv_dim) / tp, h) + gemm(T, h, d_attn / tp)
    nb = b * heads / tp
    hd_ = d_attn / heads
    if flash:
        core_g = 4.0 * nb * s * s * hd_ / (peak * geff) + stream(4.0 * nb * s * hd_)
        core_g *= 1.0 + 0.5 * wave / (nb * s * hd_)
        core_el = 0.0
    else:
        core_g = gemm(s, s, hd_, nb) + gemm(s, hd_, s, nb)
        core_el = 4.5 * heads * s * T / tp
    rest_el = 11.0 * h * T / (tp if sp else 1.0) + fm * d_ff * T / tp
    core = core_g + stream(core_el)
    dense_g = proj + core_g + ffn(T, d_ff)
    dense_m = stream(rest_el + core_el)
    experts_dev = E / ep
    moe_g = proj + core_g + ffn(T * k * imb / experts_dev, f_e, experts_dev)
    if n_sh > 0:
        moe_g += ffn(T, n_sh * f_e)
    moe_g += gemm(T, E, h)
    moe_el = (rest_el - fm * d_ff * T / tp + core_el + fm * f_e * (T * k * imb + n_sh * T) / tp
              + 4.0 * k * imb * h * T / tp + 4.0 * E * T)
    moe_m = stream(moe_el)

    # --- communication ---
    ar = allreduce(T * h * bpv, tp, ring_bw(tp, 1.0))
    c_fwd = 2.0 * ar
    n_ep = max(ep, 1.0)
    if n_ep > 1.0:
        g_ep = min(max(node / max(tp, 1.0), 1.0), n_ep)
        a2a_bytes = T * k * imb * h * bpv / tp
        a2a = a2a_bytes * ((g_ep - 1.0) / n_ep / intra + (n_ep - g_ep) / n_ep / inter) / leff + lat * math.log2(n_ep)
    else:
        a2a = 0.0

    def layer(g, mem):
        redo = g + mem if full else (core if rc >= 1 else 0.0)
        return 3.0 * (g + mem) + redo, c_fwd + max(c_fwd - g, 0.0) + (c_fwd if full else 0.0)

    comp_dense, comm_dense = layer(dense_g, dense_m)
    comp_moe, comm_moe = layer(moe_g, moe_m)
    per_stage, moe_per_stage = L / pp, n_moe / pp
    head = 3.0 * gemm(T, V / tp, h) + stream(6.0 * T * V / tp, 4.0)
    compute_mb = (per_stage - moe_per_stage) * comp_dense + moe_per_stage * comp_moe + head
    tp_mb = (per_stage - moe_per_stage) * comm_dense + moe_per_stage * comm_moe + 2.0 * ar
    a2a_mb = moe_per_stage * 2.0 * a2a * (3.0 if full else 2.0)
    if pp > 1:
        link = intra if tp * pp * dp_int <= node else inter
        p2p_mb = 2.0 * v * (T * h * bpv / tp / (link * leff) + lat)
    else:
        p2p_mb = 0.0
    t_mb = compute_mb + tp_mb + a2a_mb + p2p_mb
    bubble = (pp - 1.0) / v * (t_mb - head * (1.0 - 1.0 / pp))

    # --- memory of the first stage ---
    emb_all = V * h * (2.0 - p["tied_embeddings"])
    expert_total = n_moe * E * fm * h * f_e
    p_nonexp = (p["params"] - emb_all - h - expert_total) / (pp * tp) + (V * h if pp > 1 else emb_all) / tp
    p_exp = expert_total / (pp * tp * ep)
    p_dev = p_nonexp + p_exp
    dp_m = max(dp, 1.0)
    opt = (8.0 if bpv >= 4 else 12.0) * (p_nonexp / (dp_m if shard else 1.0)
                                         + p_exp / (max(dp_m / ep, 1.0) if shard else 1.0))
    states = p_dev * (bpv + gb) + opt
    moe_frac = n_moe / L if L != 0 else n_moe
    ff_rows = (1.0 - moe_frac) * fm * d_ff + moe_frac * (fm * f_e * (k * imb + n_sh) + 2.0 * h * k * imb)

    def activations(mode):
        sbh = s * b * h
        total = 3.0 * sbh + 4.0 * s * b * d_attn + 4.0 * s * b * kv_dim + 3.0 * sbh + 2.0 * s * b * ff_rows + 4.0 * sbh
        if mode >= 2:
            return 2.0 * sbh / (tp if sp else 1.0)
        split = total / tp if sp else 10.0 * sbh + (total - 10.0 * sbh) / tp
        return split + (0.0 if (mode >= 1 or flash) else 5.0 * heads * s * s * b / tp)

    interleaved = 1.0 + (pp - 1.0) / (pp * v) if v > 1 else 1.0
    act = activations(rc) * (L / pp) * min(pp, m) * interleaved
    if full:
        act += activations(0.0)
    if pp <= 1:
        act += 4.0 * s * b * V / tp
    act *= max(bpv, 2.0) / 2.0
    memory = states + act + cal["memory_reserve_bytes"]

    # --- data parallel, optimizer, step ---
    edp = max(dp_int / ep, 1.0)
    t_dp = (allreduce(p_nonexp * gb, dp_int, ring_bw(dp_int, tp))
            + allreduce(p_exp * gb, edp, ring_bw(edp, tp * ep)))
    dp_exposed = max(t_dp - cal["dp_overlap"] * 2.0 / 3.0 * compute_mb, 0.0)
    t_opt = stream((p_nonexp / dp_int + p_exp / edp if shard else p_dev) * OPTIMIZER_BYTES_PER_PARAM, 1.0)
    compute_s = m * compute_mb + t_opt
    comm_s = m * (tp_mb + a2a_mb + p2p_mb) + dp_exposed
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
    dt = np.result_type(*[x.dtype for x in list(a.values()) + list(w.values())], np.float32)
    a = {k: x.astype(dt, copy=False) for k, x in a.items()}
    w = {k: x.astype(dt, copy=False) for k, x in w.items()}
    c = {k: np.asarray(val).astype(dt) for k, val in cal.items()}
    one, zero = dt.type(1.0), dt.type(0.0)
    L, h, V, s = a["layers"], a["d_model"], a["vocab"], a["seq_len"]
    heads, hd, kv = a["heads"], a["head_dim"], a["kv_heads"]
    d_attn, kv_dim = heads * hd, kv * hd
    fm, d_ff, f_e, n_sh = a["ffn_matrices"], a["d_ff"], a["expert_d_ff"], a["shared_experts"]
    E, k = np.maximum(a["experts"], one), a["top_k"]
    n_moe = np.where(a["experts"] > 1, np.maximum(np.floor((L - a["first_dense_layers"]) / a["moe_every"]), zero),
                     zero)
    B, bpv = a["global_batch"], a["bytes_per_value"]
    peak, bw = a["peak_flops"], a["hbm_bw_bytes_s"]
    intra, inter, node = a["intra_bw_bytes_s"], a["inter_bw_bytes_s"], a["devices_per_node"]
    devices, tp, pp, ep = w["devices"], w["tp"], w["pp"], w["ep"]
    b, rc, v = w["microbatch"], w["recompute"], w["interleave"]
    sp = (tp > 1) & (w["sequence_parallel"] != 0)
    shard = w["shard_optimizer"] > 0
    flash = np.asarray(lay.get("flash_attention", 0.0)) > 0
    full = rc >= 2
    geff, heff, leff, lat = c["gemm_eff_max"], c["hbm_eff"], c["link_eff"], c["collective_latency_s"]
    wave, imb, gb = c["gemm_wave_elements"], c["moe_imbalance"], c["grad_bytes"]

    def gemm(m_, n_, k_, count=one):
        tail = 1.0 + 0.5 * wave / np.maximum(count * m_ * n_, one)
        return (2.0 * m_ * n_ * k_ * count * tail / (peak * geff)
                + count * bpv * (m_ * k_ + k_ * n_ + m_ * n_) / (bw * heff))

    def stream(elements, nbytes=bpv):
        return elements * nbytes / (bw * heff)

    def ring_bw(group, stride):
        g = np.clip(node / np.maximum(stride, one), one, np.maximum(group, one))
        return np.where(group * stride <= node, intra, np.minimum(intra, g * inter))

    def allreduce(nbytes, group, link):
        n = np.maximum(group, one)
        return np.where(n > 1, 2.0 * (n - 1.0) / n * nbytes / (link * leff) + lat * np.log2(n), zero)

    def ffn(tokens, width, count=one):
        return gemm(tokens, (fm - 1.0) * width / tp, h, count) + gemm(tokens, h, width / tp, count)

    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        dp = devices / (tp * pp)
        dp_int = np.maximum(np.floor(dp), one)
        m = np.maximum(B / (dp_int * b), one)
        dp_ok = _divides_np(tp * pp, devices)
        dp1 = np.where(dp_ok, dp, one)
        v_ok = (v == 1) | ((v > 1) & (pp > 1) & _divides_np(pp * v, L) & _divides_np(pp, m))
        rules = [(TOP_K_EXCEEDS_EXPERTS, k > E), (TP_HEADS, ~_divides_np(tp, heads)), (TP_KV, ~_divides_np(tp, kv)),
                 (PP_LAYERS, ~_divides_np(pp, L)), (DEVICES_TP_PP, ~dp_ok), (EP_EXPERTS, ~_divides_np(ep, E)),
                 (EP_DP, ~_divides_np(ep, dp1)), (BATCH_DP, B < dp1), (MICROBATCH_BATCH, ~_divides_np(dp1 * b, B)),
                 (INTERLEAVE, ~v_ok | (v < 1))]
        reason = np.zeros(np.broadcast_shapes(*[np.shape(r) for _, r in rules]), np.int32)
        for code, bad in reversed(rules):
            reason = np.where(bad, np.int32(code), reason)

        T = b * s
        proj = gemm(T, (d_attn + 2.0 * kv_dim) / tp, h) + gemm(T, h, d_attn / tp)
        nb = b * heads / tp
        hd_ = d_attn / heads
        core_flash = ((4.0 * nb * s * s * hd_ / (peak * geff) + stream(4.0 * nb * s * hd_))
                      * (1.0 + 0.5 * wave / (nb * s * hd_)))
        core_g = np.where(flash, core_flash, gemm(s, s, hd_, nb) + gemm(s, hd_, s, nb))
        core_el = np.where(flash, zero, 4.5 * heads * s * T / tp)
        rest_el = 11.0 * h * T / np.where(sp, tp, one) + fm * d_ff * T / tp
        core = core_g + stream(core_el)
        dense_g = proj + core_g + ffn(T, d_ff)
        dense_m = stream(rest_el + core_el)
        experts_dev = E / ep
        moe_g = (proj + core_g + ffn(T * k * imb / experts_dev, f_e, experts_dev)
                 + np.where(n_sh > 0, ffn(T, n_sh * f_e), zero) + gemm(T, E, h))
        moe_el = (rest_el - fm * d_ff * T / tp + core_el + fm * f_e * (T * k * imb + n_sh * T) / tp
                  + 4.0 * k * imb * h * T / tp + 4.0 * E * T)
        moe_m = stream(moe_el)

        ar = allreduce(T * h * bpv, tp, ring_bw(tp, one))
        c_fwd = 2.0 * ar
        n_ep = np.maximum(ep, one)
        g_ep = np.clip(node / np.maximum(tp, one), one, n_ep)
        a2a_bytes = T * k * imb * h * bpv / tp
        a2a = np.where(n_ep > 1, a2a_bytes * ((g_ep - 1.0) / n_ep / intra + (n_ep - g_ep) / n_ep / inter) / leff
                       + lat * np.log2(n_ep), zero)

        def layer(g, mem):
            redo = np.where(full, g + mem, np.where(rc >= 1, core, zero))
            return 3.0 * (g + mem) + redo, c_fwd + np.maximum(c_fwd - g, zero) + np.where(full, c_fwd, zero)

        comp_dense, comm_dense = layer(dense_g, dense_m)
        comp_moe, comm_moe = layer(moe_g, moe_m)
        per_stage, moe_per_stage = L / pp, n_moe / pp
        head = 3.0 * gemm(T, V / tp, h) + stream(6.0 * T * V / tp, dt.type(4.0))
        compute_mb = (per_stage - moe_per_stage) * comp_dense + moe_per_stage * comp_moe + head
        tp_mb = (per_stage - moe_per_stage) * comm_dense + moe_per_stage * comm_moe + 2.0 * ar
        a2a_mb = moe_per_stage * 2.0 * a2a * np.where(full, dt.type(3.0), dt.type(2.0))
        link = np.where(tp * pp * dp_int <= node, intra, inter)
        p2p_mb = np.where(pp > 1, 2.0 * v * (T * h * bpv / tp / (link * leff) + lat), zero)
        t_mb = compute_mb + tp_mb + a2a_mb + p2p_mb
        bubble = (pp - 1.0) / v * (t_mb - head * (1.0 - 1.0 / pp))

        emb_all = V * h * (2.0 - a["tied_embeddings"])
        expert_total = n_moe * E * fm * h * f_e
        p_nonexp = (a["params"] - emb_all - h - expert_total) / (pp * tp) + np.where(pp > 1, V * h, emb_all) / tp
        p_exp = expert_total / (pp * tp * ep)
        p_dev = p_nonexp + p_exp
        dp_m = np.maximum(dp, one)
        opt = np.where(bpv >= 4, dt.type(8.0), dt.type(12.0)) * (
            p_nonexp / np.where(shard, dp_m, one) + p_exp / np.where(shard, np.maximum(dp_m / ep, one), one))
        states = p_dev * (bpv + gb) + opt
        moe_frac = n_moe / np.where(L == 0, one, L)
        ff_rows = (1.0 - moe_frac) * fm * d_ff + moe_frac * (fm * f_e * (k * imb + n_sh) + 2.0 * h * k * imb)
        sbh = s * b * h
        total = (3.0 * sbh + 4.0 * s * b * d_attn + 4.0 * s * b * kv_dim + 3.0 * sbh + 2.0 * s * b * ff_rows
                 + 4.0 * sbh)
        split = np.where(sp, total / tp, 10.0 * sbh + (total - 10.0 * sbh) / tp)
        kept = 2.0 * sbh / np.where(sp, tp, one)
        scores = 5.0 * heads * s * s * b / tp
        act_none = split + np.where(flash, zero, scores)
        act_mode = np.where(full, kept, split + np.where((rc >= 1) | flash, zero, scores))
        interleaved = np.where(v > 1, 1.0 + (pp - 1.0) / (pp * v), one)
        act = (act_mode * (L / pp) * np.minimum(pp, m) * interleaved + np.where(full, act_none, zero)
               + np.where(pp > 1, zero, 4.0 * s * b * V / tp))
        act = act * np.maximum(bpv, dt.type(2.0)) / 2.0
        memory = states + act + c["memory_reserve_bytes"]

        edp = np.maximum(dp_int / ep, one)
        t_dp = (allreduce(p_nonexp * gb, dp_int, ring_bw(dp_int, tp))
                + allreduce(p_exp * gb, edp, ring_bw(edp, tp * ep)))
        dp_exposed = np.maximum(t_dp - c["dp_overlap"] * 2.0 / 3.0 * compute_mb, zero)
        t_opt = stream(np.where(shard, p_nonexp / dp_int + p_exp / edp, p_dev) * OPTIMIZER_BYTES_PER_PARAM, one)
        compute_s = m * compute_mb + t_opt
        comm_s = m * (tp_mb + a2a_mb + p2p_mb) + dp_exposed
        step_s = compute_s + comm_s + bubble

        n_mm = a["active_params"] - np.where(a["tied_embeddings"] != 0, zero, V * h)
        model_flops = 6.0 * n_mm + 12.0 * L * s * d_attn
        attn_core = 4.0 * L * s * d_attn
        redo_flops = np.where(full, 2.0 * n_mm + attn_core, np.where(rc >= 1, attn_core, zero))
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
    st = step_numpy(counted, {**row, "devices": col["devices"]}, {key: np.asarray(val)[..., None] for key, val in cal.items()})
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
