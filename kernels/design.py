"""The design stage: what a design's architecture and token budget alone fix, before any layout,
device or site: the sizes a spec may leave out, the design's own rules, its parameters and FLOPs
(``footprint.design_terms``) and the scaling-law loss.

The sweep evaluates it once per design and broadcasts it to every deployment of the design;
`estimate` evaluates it on one design; both call these functions, so the two agree by
construction. Inputs are the chain's (names as in the spec, ``footprint.DESIGN_KEYS``); NaN in an
optional input means "not given", as everywhere in the kernels.
"""

from typing import NamedTuple

import jax.numpy as jnp

from . import scaling
from .footprint import DESIGN_KEYS, design_terms
from .reasons import CODE

# Sizes a spec may leave out, each with its default: head_dim = d_model / heads, kv_heads = heads
# (multi-head attention), d_ff = 4·d_model (Vaswani et al. 2017), expert_d_ff = d_ff.
DERIVABLE = ("head_dim", "kv_heads", "d_ff", "expert_d_ff")
D_FF_PER_D_MODEL = 4
# What the design stage reads: the architecture and the token budget (with given FLOPs).
DESIGN_INPUTS = frozenset(DESIGN_KEYS) | {"tokens", "flops"}


class DesignStage(NamedTuple):
    """The design stage's results (a pytree): ``inputs`` the design inputs with the derived sizes,
    ``terms`` params, active_params, flops_per_token, train_flops, ``loss`` the scaling-law
    outputs (loss, loss_in_range as float32; empty without a law), ``reason`` the design's code."""
    inputs: dict
    terms: dict
    loss: dict
    reason: object


def default_d_ff(d_model):
    """The FFN width a spec leaves out: 4·d_model (an int for an int; exact in floating point)."""
    return D_FF_PER_D_MODEL * d_model


def derived_sizes(x, derive) -> dict:
    """The sizes named in ``derive`` (a subset of DERIVABLE, those the spec or grid leaves out)
    from their defaults, as plain arithmetic on the arrays (NumPy or JAX alike)."""
    out = {}
    if "head_dim" in derive:
        out["head_dim"] = x["d_model"] / x["heads"]
    if "kv_heads" in derive:
        out["kv_heads"] = x["heads"]
    if "d_ff" in derive:
        out["d_ff"] = default_d_ff(x["d_model"])
    if "expert_d_ff" in derive:
        out["expert_d_ff"] = out.get("d_ff", x.get("d_ff"))
    return out


def size_reason(x, derive):
    """The design's own size rules, where a grid varies them: heads divides d_model (when
    head_dim is derived), kv_heads divides heads (when given). 0 or the code of the first broken."""
    reason = jnp.int32(0)
    if "head_dim" in derive:
        uneven = jnp.isfinite(x["d_model"]) & (jnp.mod(x["d_model"], x["heads"]) != 0)
        reason = jnp.where(uneven, CODE["heads_not_dividing_d_model"], reason)
    if "kv_heads" not in derive:
        reason = jnp.where((reason == 0) & jnp.isfinite(x["heads"]) & (jnp.mod(x["heads"], x["kv_heads"]) != 0),
                           CODE["kv_heads_not_dividing_heads"], reason)
    return reason


def embedding_params(vocab, d_model, tied_embeddings):
    """Parameters of the embeddings: vocab·d_model, twice when input and output are untied."""
    return vocab * d_model * jnp.where(tied_embeddings > 0, 1.0, 2.0)


def loss_terms(law, constants, x, params, active_params):
    """(loss, in_range) under a scaling law (``scaling.predict_loss``, ``scaling.in_fitted_range``):
    ``law`` a form or law id, ``constants`` its numeric table; the non-embedding count is
    params − embeddings where the architecture is known, else params."""
    emb = embedding_params(x["vocab"], x["d_model"], x["tied_embeddings"])
    non_emb = jnp.where(jnp.isfinite(emb), params - emb, params)
    kw = dict(params=params, active_params=active_params, tokens=x["tokens"])
    loss = scaling.predict_loss(law, constants, non_embedding_params=non_emb, experts=x["experts"],
                                top_k=x["top_k"], **kw)
    in_range = scaling.in_fitted_range(constants, non_embedding_params=non_emb, total_params=params,
                                       experts=x["experts"], top_k=x["top_k"], **kw)
    return loss, in_range


def design_stage(x, *, derive=(), law=None, law_table=()) -> DesignStage:
    """What the design alone fixes, on the shapes of the design inputs: the derived sizes, the
    size rules' reason, parameters and FLOPs, and (with a ``law``: its form, ``law_table`` its
    (name, value) pairs) the predicted loss."""
    x = {k: v for k, v in x.items() if k in DESIGN_INPUTS}
    reason = size_reason(x, derive)
    x.update(derived_sizes(x, derive))
    terms = design_terms(x)
    loss = {}
    if law is not None:
        value, in_range = loss_terms(law, dict(law_table), x, terms["params"], terms["active_params"])
        loss["loss"] = value
        loss["loss_in_range"] = jnp.asarray(in_range).astype(jnp.float32)
    return DesignStage(x, terms, loss, reason.astype(jnp.int32))
