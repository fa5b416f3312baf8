"""Parameter counts of dense and mixture-of-experts decoder-only transformers.

Per layer (Narayanan et al. 2021 eq. 2; LLMCarbon §2 generalised to GQA and gated FFNs):
    attention  = d_model·(heads·head_dim)          query
               + 2·d_model·(kv_heads·head_dim)     key, value (grouped-query attention)
               + (heads·head_dim)·d_model          output
    ffn        = ffn_matrices·d_model·d_ff          2 for ``gelu``, 3 for ``swiglu``
    norms      = 2·d_model                          two norm weight vectors
    biases     = (heads+2·kv_heads)·head_dim + d_model (attn) + d_ff·(ffn_matrices−1) + d_model (ffn)
                 + 2·d_model (norm biases), only when ``bias``
An MoE layer replaces the FFN with ``experts`` FFNs of width ``expert_d_ff`` plus ``shared_experts``
always-active FFNs of the same width and a router of d_model·experts weights. Of the layers, the
MoE layers are every ``moe_every``-th one after ``first_dense_layers`` dense ones:
    moe_layers = floor((layers − first_dense_layers) / moe_every)   (0 when experts = 1)
Embeddings: vocab·d_model for the input table, plus as much again for the output projection unless
``tied_embeddings``; one final norm of d_model.

All arguments broadcast; results are float arrays holding integers (exact in float64).
"""

import jax.numpy as jnp


def moe_layer_count(layers, experts, moe_every, first_dense_layers):
    """Number of MoE layers: floor((layers − first_dense_layers)/moe_every), 0 for dense models."""
    n = jnp.floor((layers - first_dense_layers) / moe_every)
    return jnp.where(experts > 1, jnp.maximum(n, 0.0), 0.0)


def attention_params(d_model, heads, kv_heads, head_dim):
    """Q, K, V and output projection weights of one attention block (GQA-aware)."""
    d_attn = heads * head_dim
    return 2.0 * d_model * d_attn + 2.0 * d_model * kv_heads * head_dim


def ffn_params(d_model, d_ff, ffn_matrices):
    """Weights of one feed-forward block: ffn_matrices·d_model·d_ff (2 gelu, 3 swiglu)."""
    return ffn_matrices * d_model * d_ff


def bias_params(d_model, heads, kv_heads, head_dim, d_ff, ffn_matrices, bias):
    """Biases of one layer (attention, FFN, norm biases); zero unless ``bias``."""
    attn = (heads + 2.0 * kv_heads) * head_dim + d_model
    ffn = d_ff * (ffn_matrices - 1.0) + d_model
    return jnp.where(bias, attn + ffn + 2.0 * d_model, 0.0)


def embedding_params(vocab, d_model, tied_embeddings):
    """Input embedding table plus the output projection when untied."""
    return vocab * d_model * jnp.where(tied_embeddings, 1.0, 2.0)


def param_counts(
    layers,
    d_model,
    heads,
    kv_heads,
    head_dim,
    d_ff,
    ffn_matrices,
    vocab,
    tied_embeddings,
    experts,
    top_k,
    moe_every,
    first_dense_layers,
    shared_experts,
    expert_d_ff,
    bias=False,
):
    """Total and active parameters of a decoder-only transformer.

    Returns ``(params, active_params)``. Active parameters count, per MoE layer, the router, the
    ``top_k`` routed experts and the shared experts: what one token's forward pass multiplies by.
    Sources: Narayanan et al. 2021 (dense count), Fedus et al. 2022 / Jiang et al. 2024 (MoE
    total vs active), LLMCarbon §2.
    """
    n_moe = moe_layer_count(layers, experts, moe_every, first_dense_layers)
    n_dense = layers - n_moe
    attn = attention_params(d_model, heads, kv_heads, head_dim)
    norms = 2.0 * d_model
    dense_layer = attn + ffn_params(d_model, d_ff, ffn_matrices) + norms
    dense_layer = dense_layer + bias_params(d_model, heads, kv_heads, head_dim, d_ff, ffn_matrices, bias)
    expert = ffn_params(d_model, expert_d_ff, ffn_matrices)
    expert = expert + jnp.where(bias, expert_d_ff * (ffn_matrices - 1.0) + d_model, 0.0)
    router = d_model * experts
    moe_common = attn + norms + router + shared_experts * expert
    moe_common = moe_common + jnp.where(bias, (heads + 2.0 * kv_heads) * head_dim + 3.0 * d_model, 0.0)
    moe_total = moe_common + experts * expert
    moe_active = moe_common + top_k * expert
    outside = embedding_params(vocab, d_model, tied_embeddings) + d_model
    params = n_dense * dense_layer + n_moe * moe_total + outside
    active_params = n_dense * dense_layer + n_moe * moe_active + outside
    return params, active_params


def llmcarbon_dense_params(layers, d_model, vocab, seq_len):
    """LLMCarbon's dense estimate P = 12·l·h²·(1 + 13/(12h) + (V+s)/(12·l·h)) (Faiz et al. 2024 eq. 1)."""
    h = d_model
    return 12.0 * layers * h**2 * (1.0 + 13.0 / (12.0 * h) + (vocab + seq_len) / (12.0 * layers * h))
