"""Serving an LLM: prefill, decode, KV cache, batching, latency and energy per request.

Pure JAX; every function broadcasts over its arguments (a scalar request or a grid of batch × devices
× precision × ...). Units are in the names (``_s``, ``_w``, ``_bytes``, ``_j``). Constants (``cal``) are
data: hardware_db/serving.toml, fitted on the measured rows of hardware_db/serving_runs.toml.

Model of one replica of ``devices`` accelerators holding one copy of the weights, split evenly over
them (tensor parallel for dense layers; expert parallel for routed experts), running continuous
batching at ``batch`` concurrent sequences (Yu et al. 2022, Orca; Kwon et al. 2023, vLLM). Each request
has ``input_tokens`` (prompt) and ``output_tokens`` (generated; reasoning tokens count as output).

Weights (Pope et al. 2022 §2; Kim et al. 2023 on weight-only quantisation):
    resident_weight_bytes = params · weight_bytes / devices                  per device
    routed_params         = moe_layers · experts · ffn_matrices · d_model · expert_d_ff
    experts_touched(E, k, n) = E · (1 − (1 − k/E)^n)                          distinct experts a batch of
                            n tokens routes to, each token picking k of E uniformly (expected value)
    streamed_weight_bytes = (params − routed_params − vocab·d_model
                             + routed_params · experts_touched/E) · weight_bytes / devices
    (the input embedding is a lookup: one row per token, not streamed; tied embeddings are
     streamed once, as the output head)
KV cache (Pope et al. 2022 §3.1; GQA Ainslie et al. 2023; MLA DeepSeek-AI 2024 §2.1.1):
    kv_bytes_per_token = layers · (2·kv_heads·head_dim, or kv_latent_dim for MLA) · kv_bytes
    max_batch = floor((kv_memory_fraction · hbm_bytes − resident_weight_bytes) · devices
                      / (kv_bytes_per_token · (input_tokens + output_tokens)))
A decode step of the steady state (every sequence emits one token; new requests arrive at
batch/output_tokens per step and their prompts are prefilled in the same step, chunked prefill):
    context      = input_tokens + output_tokens/2                           mean cached tokens
    step_tokens  = batch · (1 + input_tokens/output_tokens)                 decode + prefill tokens
    step_flops   = [2·active·step_tokens + batch·context·attn_flops_per_ctx
                    + batch·(input/output)·(input/2)·attn_flops_per_ctx] / devices
    attn_flops_per_ctx = 4·layers·heads·head_dim   (QK^T and AV; MLA: 4·layers·heads·kv_latent_dim)
    step_bytes   = streamed_weight_bytes(step_tokens) + batch·context·kv_bytes_per_token/devices
    step_time_s  = max(step_bytes/(hbm_eff·hbm_bw), step_flops/(compute_eff·peak))
                   + layers·layer_latency_s + tp_collectives·tp_latency_s + ep_collectives·ep_latency_s
                   + batch·seq_overhead_s
    (roofline: Williams et al. 2009; tp_collectives = 2 per dense layer and ep_collectives = 2 per MoE
     layer when devices > 1: the all-reduces of Megatron TP, the dispatch/combine all-to-alls of EP;
     seq_overhead_s = the engine's per-sequence work per step: scheduling, sampling, detokenising)
    tpot_s = step_time_s;  output tokens/s per replica = batch / step_time_s
    ttft_s = prefill of one prompt alone: 2·active·input_tokens/devices/(compute_eff·peak)
             + layers·layer_latency_s + collectives, plus one step_time_s of queueing behind the batch
A request mix (``request_mix``: requests of different lengths): a request holds its batch slot for
its output_tokens steps, so a running slot holds request r with probability ∝ out_r, and the step
sees the mix's moments (E over the requests):
    context  = (E[in·out] + E[out²]/2) / E[out]       prefill ratio = E[in]/E[out]
    prefill attention context per output token = E[in²] / (2·E[out])
    a slot's final length (the KV reserve of max_batch) = (E[in·out] + E[out²]) / E[out]
(one request shape gives back the single-shape terms above).
Power and energy (component model: static power plus energy per operation, Horowitz 2014;
the static share fitted like ML.ENERGY's "static power wastage"):
    device_power_w = min(tdp, static_frac·tdp + (flop_energy_frac·tdp·step_flops/peak
                                                 + byte_energy_frac·tdp·step_bytes/hbm_bw)/step_time_s)
    gpu_j_per_output_token = devices · device_power_w · step_time_s / batch
Load, replicas and idle capacity: a replica serves at most batch/(step_time_s·output_tokens) requests/s.
    replicas = ceil(requests_per_s / capacity); load = requests_per_s / (replicas · capacity)
    device_w (facility) = [load·device_power_w + (1 − load)·static_frac·tdp
                           + host_power_w·power_util/devices_per_node] · pue
    (an idle replica still draws its static power, Chung et al. 2025, ML.ENERGY §static power)
    wh_per_request = replicas·devices·device_w·86,400 s / 3,600 / requests_per_day
    gco2e_per_request = wh_per_request/1000 · carbon_intensity + embodied per device-hour share
"""

import jax.numpy as jnp

from . import architecture

# Names of the constants of ``cal`` (hardware_db/serving.toml), in the order the fit uses.
TIME_CONSTANTS = ("hbm_eff", "compute_eff", "layer_latency_s", "tp_latency_s", "ep_latency_s", "seq_overhead_s")
POWER_CONSTANTS = ("static_frac", "flop_energy_frac", "byte_energy_frac")
CONSTANTS = TIME_CONSTANTS + POWER_CONSTANTS


def experts_touched(experts, top_k, tokens):
    """Expected distinct experts hit when ``tokens`` tokens each route to ``top_k`` of ``experts``
    uniformly: E·(1 − (1 − k/E)^n). Dense (E = k = 1) gives 1."""
    e = jnp.maximum(experts, 1.0)
    return e * (1.0 - (1.0 - jnp.minimum(top_k, e) / e) ** tokens)


def routed_params(layers, d_model, experts, expert_d_ff, ffn_matrices, moe_every, first_dense_layers):
    """Weights of all routed experts: moe_layers · experts · ffn_matrices · d_model · expert_d_ff."""
    n_moe = architecture.moe_layer_count(layers, experts, moe_every, first_dense_layers)
    return n_moe * experts * ffn_matrices * d_model * expert_d_ff


def resident_weight_bytes(params, weight_bytes, devices):
    """Bytes of weights held by each device of a replica: params · weight_bytes / devices."""
    return params * weight_bytes / devices


def streamed_weight_bytes(params, routed, experts, top_k, tokens, vocab, d_model, weight_bytes, devices,
                          tied_embeddings=0.0):
    """Bytes of weights one step reads per device: the always-active weights (all but the routed
    experts and the input embedding table, which tied embeddings share with the output head that is
    read) plus the share of routed experts the step's tokens touch."""
    frac = experts_touched(experts, top_k, tokens) / jnp.maximum(experts, 1.0)
    always = params - routed - vocab * d_model * (1.0 - tied_embeddings)
    return (always + routed * jnp.where(experts > 1, frac, 0.0)) * weight_bytes / devices


def kv_bytes_per_token(layers, kv_heads, head_dim, kv_latent_dim, kv_bytes):
    """KV-cache bytes of one token: layers · 2·kv_heads·head_dim · kv_bytes (GQA), or
    layers · kv_latent_dim · kv_bytes when a latent cache (MLA) is given (kv_latent_dim > 0)."""
    per_layer = jnp.where(kv_latent_dim > 0, kv_latent_dim, 2.0 * kv_heads * head_dim)
    return layers * per_layer * kv_bytes


def attn_flops_per_ctx(layers, heads, head_dim, kv_latent_dim):
    """Attention FLOPs of one new token per cached token: 4·layers·heads·head_dim (QK^T and AV);
    with MLA the absorbed attention works in the latent space: 4·layers·heads·kv_latent_dim."""
    return 4.0 * layers * heads * jnp.where(kv_latent_dim > 0, kv_latent_dim, head_dim)


def max_batch(hbm_bytes, resident_bytes, kv_per_token, seq_tokens, devices, kv_memory_fraction):
    """Largest number of sequences whose KV cache fits: floor((f·hbm − weights)·devices / (kv·seq)).
    Negative → 0 (the weights alone do not fit)."""
    free = (kv_memory_fraction * hbm_bytes - resident_bytes) * devices
    return jnp.maximum(jnp.floor(free / (kv_per_token * seq_tokens)), 0.0)


def collectives_per_step(layers, moe_layers, devices):
    """(tp_collectives, ep_collectives) of one forward pass: 2 all-reduces per dense layer and 2
    all-to-alls per MoE layer, when the replica spans more than one device."""
    multi = devices > 1
    return jnp.where(multi, 2.0 * (layers - moe_layers), 0.0), jnp.where(multi, 2.0 * moe_layers, 0.0)


def request_mix(input_tokens, output_tokens, axis=None):
    """The moments of a request mix a steady-state decode step sees (module docstring), as a dict:
    input_tokens = E[in], output_tokens = E[out], context_tokens, prefill_ratio, prefill_context
    (attention context of the prefill per output token) and seq_tokens (a slot's final length).

    ``axis`` None: one request shape (in, out), giving in + out/2, in/out, (in/out)·in/2, in + out.
    Otherwise the mix's requests lie along ``axis`` (equally likely draws)."""
    if axis is None:
        ratio = input_tokens / output_tokens
        return {"input_tokens": input_tokens, "output_tokens": output_tokens,
                "context_tokens": input_tokens + output_tokens / 2.0, "prefill_ratio": ratio,
                "prefill_context": ratio * input_tokens / 2.0, "seq_tokens": input_tokens + output_tokens}
    mean = lambda v: jnp.mean(v, axis=axis)  # noqa: E731
    e_in, e_out = mean(input_tokens), mean(output_tokens)
    e_in_out, e_out2 = mean(input_tokens * output_tokens), mean(output_tokens * output_tokens)
    return {"input_tokens": e_in, "output_tokens": e_out, "context_tokens": (e_in_out + e_out2 / 2.0) / e_out,
            "prefill_ratio": e_in / e_out, "prefill_context": mean(input_tokens * input_tokens) / (2.0 * e_out),
            "seq_tokens": (e_in_out + e_out2) / e_out}


def decode_step(m, hw, batch, input_tokens, output_tokens, devices, weight_bytes, kv_bytes, cal, mix=None):
    """One steady-state step of continuous batching (module docstring). ``m``: architecture mapping
    (layers, d_model, heads, kv_heads, head_dim, vocab, experts, top_k, moe_layers, params,
    active_params, routed_params, kv_latent_dim); ``hw``: peak_flops (at the weight precision),
    hbm_bw_bytes_s; ``mix``: a ``request_mix`` (default: the one shape input_tokens, output_tokens).
    Returns dict(step_time_s, step_flops, step_bytes, memory_s, compute_s, overhead_s)."""
    mix = request_mix(input_tokens, output_tokens) if mix is None else mix
    ratio, context = mix["prefill_ratio"], mix["context_tokens"]
    tokens = batch * (1.0 + ratio)
    a = attn_flops_per_ctx(m["layers"], m["heads"], m["head_dim"], m["kv_latent_dim"])
    flops = (2.0 * m["active_params"] * tokens + batch * context * a + batch * mix["prefill_context"] * a) / devices
    w = streamed_weight_bytes(m["params"], m["routed_params"], m["experts"], m["top_k"], tokens, m["vocab"],
                              m["d_model"], weight_bytes, devices, m.get("tied_embeddings", 0.0))
    kv = batch * context * kv_bytes_per_token(m["layers"], m["kv_heads"], m["head_dim"], m["kv_latent_dim"],
                                              kv_bytes) / devices
    nbytes = w + kv
    memory_s = nbytes / (cal["hbm_eff"] * hw["hbm_bw_bytes_s"])
    compute_s = flops / (cal["compute_eff"] * hw["peak_flops"])
    n_tp, n_ep = collectives_per_step(m["layers"], m["moe_layers"], devices)
    overhead = (m["layers"] * cal["layer_latency_s"] + n_tp * cal["tp_latency_s"] + n_ep * cal["ep_latency_s"]
                + batch * cal["seq_overhead_s"])
    return {"step_time_s": jnp.maximum(memory_s, compute_s) + overhead, "step_flops": flops,
            "step_bytes": nbytes, "memory_s": memory_s, "compute_s": compute_s, "overhead_s": overhead}


def prefill_time_s(m, hw, input_tokens, devices, weight_bytes, cal):
    """Prefill of one prompt alone (compute-bound unless the prompt is short): the larger of its
    FLOPs at compute_eff·peak and one read of the weights, plus the per-layer and collective latencies."""
    a = attn_flops_per_ctx(m["layers"], m["heads"], m["head_dim"], m["kv_latent_dim"])
    flops = (2.0 * m["active_params"] * input_tokens + input_tokens * input_tokens / 2.0 * a) / devices
    w = streamed_weight_bytes(m["params"], m["routed_params"], m["experts"], m["top_k"], input_tokens, m["vocab"],
                              m["d_model"], weight_bytes, devices, m.get("tied_embeddings", 0.0))
    n_tp, n_ep = collectives_per_step(m["layers"], m["moe_layers"], devices)
    return (jnp.maximum(flops / (cal["compute_eff"] * hw["peak_flops"]), w / (cal["hbm_eff"] * hw["hbm_bw_bytes_s"]))
            + m["layers"] * cal["layer_latency_s"] + n_tp * cal["tp_latency_s"] + n_ep * cal["ep_latency_s"])


def device_power_w(step_flops, step_bytes, step_time_s, peak_flops, hbm_bw_bytes_s, tdp_w, cal):
    """Average power of a busy device: static_frac·tdp + (energy per FLOP·flops + per byte·bytes)/t,
    the energies expressed as fractions of tdp at peak rate; capped at tdp."""
    # written as tdp·(static + dynamic share): no product feeds a sum directly, so XLA's CPU backend
    # (which contracts a·b + c into one fused multiply-add wherever both land in one loop) rounds it
    # the same in every fusion, and the grid and per-point paths agree to the bit
    share = (cal["flop_energy_frac"] * step_flops / peak_flops
             + cal["byte_energy_frac"] * step_bytes / hbm_bw_bytes_s) / step_time_s
    return jnp.minimum(tdp_w * (cal["static_frac"] + share), tdp_w)


def serve(m, hw, req, cal):
    """The serving figures of one configuration (or a grid of them: everything broadcasts).

    ``m``: architecture (see ``decode_step``), ``hw``: peak_flops, hbm_bw_bytes_s, hbm_bytes, tdp_w,
    host_power_w, devices_per_node, device_embodied_kgco2e, host_embodied_kgco2e; ``req``: batch,
    devices, input_tokens and output_tokens (or ``mix``, a ``request_mix``), weight_bytes, kv_bytes,
    requests_per_day, pue, carbon_intensity_kg_per_kwh, power_util, lifespan_years,
    kv_memory_fraction. Returns a dict with units in the names; ``fits`` is False where the batch's
    KV cache does not fit in memory.
    """
    b, n = req["batch"], req["devices"]
    mix = req.get("mix") or request_mix(req["input_tokens"], req["output_tokens"])
    step = decode_step(m, hw, b, None, None, n, req["weight_bytes"], req["kv_bytes"], cal, mix=mix)
    t = step["step_time_s"]
    p_busy = device_power_w(step["step_flops"], step["step_bytes"], t, hw["peak_flops"], hw["hbm_bw_bytes_s"],
                            hw["tdp_w"], cal)
    gpu_j_tok = n * p_busy * t / b
    resident = resident_weight_bytes(m["params"], req["weight_bytes"], n)
    kv_tok = kv_bytes_per_token(m["layers"], m["kv_heads"], m["head_dim"], m["kv_latent_dim"], req["kv_bytes"])
    seq = mix["seq_tokens"]
    bmax = max_batch(hw["hbm_bytes"], resident, kv_tok, seq, n, req["kv_memory_fraction"])
    ttft = prefill_time_s(m, hw, mix["input_tokens"], n, req["weight_bytes"], cal) + t
    capacity_rps = b / (t * mix["output_tokens"])
    demand_rps = req["requests_per_day"] / 86400.0
    replicas = jnp.maximum(jnp.ceil(demand_rps / capacity_rps), 1.0)
    load = demand_rps / (replicas * capacity_rps)
    p_idle = cal["static_frac"] * hw["tdp_w"]
    host_w = hw["host_power_w"] * req["power_util"] / hw["devices_per_node"]
    it_w = load * p_busy + (1.0 - load) * p_idle + host_w       # per device, averaged over the day
    facility_w = it_w * req["pue"]
    devices_total = replicas * n
    day_kwh = devices_total * facility_w * 24.0 / 1000.0
    per_req = jnp.maximum(req["requests_per_day"], 1e-30)
    wh_req = day_kwh * 1000.0 / per_req
    emb_kg_per_device = hw["device_embodied_kgco2e"] + hw["host_embodied_kgco2e"] / hw["devices_per_node"]
    emb_g_day = devices_total * emb_kg_per_device * 1000.0 * 24.0 / (req["lifespan_years"] * 8760.0)
    op_g_req = wh_req / 1000.0 * req["carbon_intensity_kg_per_kwh"] * 1000.0
    g_req = op_g_req + emb_g_day / per_req
    per_1k = 1000.0 / mix["output_tokens"]
    return {
        "step_time_s": t, "tpot_s": t, "ttft_s": ttft, "memory_s": step["memory_s"], "compute_s": step["compute_s"],
        "overhead_s": step["overhead_s"], "device_power_w": p_busy, "gpu_j_per_output_token": gpu_j_tok,
        "tokens_per_s_per_replica": b / t, "max_batch": bmax, "fits": b <= bmax,
        "resident_weight_gb": resident / 1e9, "kv_cache_gb_per_device": b * seq * kv_tok / n / 1e9,
        "replicas": replicas, "load": load, "device_hours_per_day": devices_total * 24.0,
        "energy_kwh_per_day": day_kwh, "wh_per_request": wh_req, "wh_per_1k_output_tokens": wh_req * per_1k,
        "gco2e_per_request": g_req, "gco2e_per_1k_output_tokens": g_req * per_1k,
        "operational_gco2e_per_request": op_g_req, "tco2e_per_day": g_req * req["requests_per_day"] / 1e6,
    }
