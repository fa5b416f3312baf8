"""Floating-point operations of training and inference, per token and in total.

Model FLOPs of one training token, forward + backward (backward = 2× forward), no recomputation
(Narayanan et al. 2021 eq. 3; Korthikanti et al. 2022 §6; throughput.md "Definitions"):
    train_flops_per_token = 6·N_mm + 12·layers·seq_len·d_attn
where N_mm = active_params − vocab·d_model·[untied] is the parameters that multiply (the input
lookup table does none; a tied table multiplies once, as the output projection), and the second
term is the attention scores QKᵀ and the weighted sum over V (2·2·s·d_attn per token and layer,
forward; full, non-causal, as Megatron-LM counts it). Only the matrix multiplies are counted.

Recomputation (Korthikanti et al. 2022 §4-5) is a separate factor, giving hardware FLOPs:
    none      : 0 extra
    selective : the attention core again, 4·layers·seq_len·d_attn per token
    full      : the whole forward again, 2·N_mm + 4·layers·seq_len·d_attn per token

Inference (forward only): prefill of a prompt of ``seq_len`` tokens with a causal mask averages a
context of seq_len/2, decode at context ``context`` attends to all of it:
    prefill_flops_per_token = 2·N_mm + 2·layers·seq_len·d_attn
    decode_flops_per_token  = 2·N_mm + 4·layers·context·d_attn
"""

import jax.numpy as jnp

def matmul_params(active_params, vocab, d_model, tied_embeddings):
    """Parameters that take part in matrix multiplies: active minus an untied input table."""
    return active_params - jnp.where(tied_embeddings, 0.0, vocab * d_model)


def train_flops_per_token(active_params, vocab, d_model, tied_embeddings, layers, seq_len, d_attn):
    """Model FLOPs of one training token: 6·N_mm + 12·layers·seq_len·d_attn."""
    n_mm = matmul_params(active_params, vocab, d_model, tied_embeddings)
    return 6.0 * n_mm + 12.0 * layers * seq_len * d_attn


def recompute_flops_per_token(recompute, active_params, vocab, d_model, tied_embeddings, layers, seq_len, d_attn):
    """Extra forward FLOPs per token from activation recomputation (recompute: 0 none, 1 selective, 2 full)."""
    n_mm = matmul_params(active_params, vocab, d_model, tied_embeddings)
    attn_core = 4.0 * layers * seq_len * d_attn
    full = 2.0 * n_mm + attn_core
    return jnp.where(recompute >= 2, full, jnp.where(recompute >= 1, attn_core, 0.0))


def simple_train_flops_per_token(active_params):
    """The 6·N rule (Kaplan et al. 2020 §2.1; LLMCarbon §3) for models known only by size."""
    return 6.0 * active_params


def prefill_flops_per_token(active_params, vocab, d_model, tied_embeddings, layers, seq_len, d_attn):
    """Forward FLOPs of one prompt token under a causal mask: 2·N_mm + 2·layers·seq_len·d_attn."""
    n_mm = matmul_params(active_params, vocab, d_model, tied_embeddings)
    return 2.0 * n_mm + 2.0 * layers * seq_len * d_attn


def decode_flops_per_token(active_params, vocab, d_model, tied_embeddings, layers, context, d_attn):
    """Forward FLOPs of one generated token at a context of ``context`` tokens: 2·N_mm + 4·l·c·d_attn."""
    n_mm = matmul_params(active_params, vocab, d_model, tied_embeddings)
    return 2.0 * n_mm + 4.0 * layers * context * d_attn


def total_flops(flops_per_token, tokens):
    """FLOPs of a run: per-token FLOPs × tokens."""
    return flops_per_token * tokens
