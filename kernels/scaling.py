"""Accuracy proxies: published scaling laws for pre-training loss, as pure JAX functions.

Every law is a function of counts (parameters, tokens, experts) returning the predicted final
pre-training cross-entropy loss in nats per token, on the paper's own data set and tokenizer.
Losses from different laws are therefore NOT comparable with each other: a quality target is a
loss under one named law. Outside a law's fitted ranges (see ``in_fitted_range``) it extrapolates.

Constants are always passed explicitly as keyword arguments; the packaged values, their fitted
ranges and where each is printed live in ``hardware_db/scaling_laws.toml``. The Besiroglu et al.
(2024) replication has the Chinchilla form, so it reuses ``chinchilla_loss`` through its data
(``form = "chinchilla"``).

All functions broadcast over arrays, keep float32 inputs in float32 (constants are Python floats,
which JAX treats as weakly typed) and compile under ``jax.jit``. No printing, no file I/O.
"""

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

# --------------------------------------------------------------------------------------------
# Dense laws
# --------------------------------------------------------------------------------------------


def power(x, y):
    """x^y for x >= 0 as exp(y·ln x), the form the sweeps evaluate billions of times.

    XLA on CPU vectorises exp and log but not pow: this is 2× faster in float32 (1.2× in float64)
    and agrees with pow to a few ulps, with the same 0, inf and NaN (x < 0 gives NaN, as
    pow does for a non-integer y). Not for y = 0 (every exponent here is a fitted, non-zero one).
    """
    return jnp.exp(y * jnp.log(x))


def chinchilla_loss(params, tokens, *, E, A, B, alpha, beta):
    """Chinchilla parametric loss, approach 3: L(N, D) = E + A / N^alpha + B / D^beta.

    Source: Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models",
    arXiv:2203.15556, Sec. 3.3 eq. (2); fitted constants in Appendix D.2. Also the form of the
    Besiroglu et al. 2024 replication (arXiv:2404.10102) with its own constants.
    Units: N = parameters (total, embeddings included, Hoffmann App. F), D = training tokens,
    L = nats/token.
    """
    return E + A / power(params, alpha) + B / power(tokens, beta)


def kaplan_loss(non_embedding_params, tokens, *, N_c, D_c, alpha_N, alpha_D):
    """Kaplan L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D.

    Source: Kaplan et al. 2020, "Scaling Laws for Neural Language Models", arXiv:2001.08361,
    eq. (1.5) = (4.1); the joint fit of its four constants is Table 2 (Sec. 4.2).
    Units: N = non-embedding parameters, D = tokens (early-stopped), L = nats/token (WebText2).
    """
    ratio = power(N_c / non_embedding_params, alpha_N / alpha_D)
    return power(ratio + D_c / tokens, alpha_D)


def chinchilla_compute_optimal(flops, *, E, A, B, alpha, beta):
    """Loss-minimising (N, D) for a budget C = 6 N D under the Chinchilla form.

    N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b, G = (alpha A / (beta B))^(1/(alpha+beta)),
    a = beta / (alpha + beta), b = alpha / (alpha + beta).
    Source: Hoffmann et al. 2022 (arXiv:2203.15556) Sec. 3.3 eq. (4). E does not move the
    optimum. Units: C in FLOPs; returns (parameters, tokens).
    """
    del E
    g = jnp.power(alpha * A / (beta * B), 1.0 / (alpha + beta))
    c6 = flops / 6.0
    params = g * jnp.power(c6, beta / (alpha + beta))
    tokens = jnp.power(c6, alpha / (alpha + beta)) / g
    return params, tokens


def tokens_for_loss(target_loss, params, *, E, A, B, alpha, beta):
    """Tokens D that reach ``target_loss`` with N parameters under the Chinchilla form.

    D = (B / (L - E - A / N^alpha))^(1/beta); NaN where unreachable (L <= E + A / N^alpha).
    Source: inverse of Hoffmann et al. 2022 (arXiv:2203.15556) eq. (2) in D.
    Units: L in nats/token, N parameters; returns tokens.
    """
    gap = target_loss - E - A / jnp.power(params, alpha)
    ok = gap > 0
    safe_gap = jnp.where(ok, gap, 1.0)
    return jnp.where(ok, jnp.power(B / safe_gap, 1.0 / beta), jnp.nan)


# --------------------------------------------------------------------------------------------
# Mixture of experts: joint MoE scaling law (Ludziejewski et al. 2025)
# --------------------------------------------------------------------------------------------


def joint_moe_expert_transform(experts, *, E_start, E_max):
    """Saturating transform of the expert count: 1/Ê = 1/(E - 1 + (1/E_start - 1/E_max)^-1) + 1/E_max.

    Ê(1) = E_start and Ê -> E_max as E -> inf. Source: Ludziejewski et al. 2025, "Joint MoE
    Scaling Laws: Mixture of Experts Can Be Memory Efficient", arXiv:2502.05172, eq. (4)
    (after Clark et al. 2022, arXiv:2202.01169). Units: E = experts (dimensionless).
    """
    offset = 1.0 / (1.0 / E_start - 1.0 / E_max)
    return 1.0 / (1.0 / (experts - 1.0 + offset) + 1.0 / E_max)


def joint_moe_reduced(experts, *, a, alpha, delta, gamma, b, beta, omega, zeta, c, E_start, E_max):
    """Joint MoE law at fixed E as a Chinchilla-form law: L = m N^mu + n D^nu + c.

    m = a Ê^delta, mu = alpha + gamma ln Ê, n = b Ê^omega, nu = beta + zeta ln Ê (mu, nu < 0).
    Source: Ludziejewski et al. 2025 (arXiv:2502.05172) eqs. (5)-(6); tabulated in Table 4.
    Returns (m, mu, n, nu); c is unchanged.
    """
    del c
    e_hat = joint_moe_expert_transform(experts, E_start=E_start, E_max=E_max)
    log_e = jnp.log(e_hat)
    m = a * jnp.power(e_hat, delta)
    n = b * jnp.power(e_hat, omega)
    return m, alpha + gamma * log_e, n, beta + zeta * log_e


def joint_moe_loss(active_params, tokens, experts, *, a, alpha, delta, gamma, b, beta, omega, zeta,
                   c, E_start, E_max):
    """Joint MoE law: L(N_act, D, Ê) = a Ê^delta N_act^(alpha + gamma ln Ê) + b Ê^omega D^(beta + zeta ln Ê) + c.

    Source: Ludziejewski et al. 2025, arXiv:2502.05172, eq. (6) (= eq. 1); constants Table 3,
    with alpha, beta < 0 as printed there. E = 1 is a dense model. Fitted with top-1 (Switch)
    routing and experts the size of the dense FFN (granularity 1).
    Units: N_act = active parameters incl. embedding and unembedding (App. A.1), D = tokens,
    E = experts; L = final training loss, nats/token (FineWeb-Edu, GPT-2 tokenizer).
    """
    m, mu, n, nu = joint_moe_reduced(experts, a=a, alpha=alpha, delta=delta, gamma=gamma, b=b,
                                     beta=beta, omega=omega, zeta=zeta, c=c, E_start=E_start,
                                     E_max=E_max)
    return m * power(active_params, mu) + n * power(tokens, nu) + c


def joint_moe_compute_optimal(flops, experts, **constants):
    """Compute-optimal (N_act, D) for a budget F = 6 N_act D at fixed expert count E.

    At fixed E the law has the Chinchilla form with A = m, alpha = -mu, B = n, beta = -nu, so
    Hoffmann eq. (4) applies. Source: Ludziejewski et al. 2025 (arXiv:2502.05172) eq. (7),
    example values in Table 1. Units: F in FLOPs; returns (active parameters, tokens).
    """
    m, mu, n, nu = joint_moe_reduced(experts, **constants)
    return chinchilla_compute_optimal(flops, E=0.0, A=m, B=n, alpha=-mu, beta=-nu)


# --------------------------------------------------------------------------------------------
# Dispatch by the ``form`` string stored in the data
# --------------------------------------------------------------------------------------------

_KEYS = {
    "chinchilla": ("E", "A", "B", "alpha", "beta"),
    "kaplan": ("N_c", "D_c", "alpha_N", "alpha_D"),
    "joint_moe": ("a", "alpha", "delta", "gamma", "b", "beta", "omega", "zeta", "c", "E_start",
                  "E_max"),
}
FORMS = tuple(_KEYS)


def _form(law, constants):
    form = law if law in _KEYS else constants.get("form")
    if form not in _KEYS:
        raise ValueError(f"unknown scaling-law form {form!r} (law {law!r}); known: {FORMS}")
    return form


def _pick(form, constants):
    return {k: constants[k] for k in _KEYS[form]}


def _need(name, value, form):
    if value is None:
        raise ValueError(f"scaling-law form {form!r} needs {name}")
    return value


def joint_moe_effective_experts(experts, top_k=None):
    """Expert count to feed the joint MoE law: the expansion rate experts / top_k.

    The paper routes top-1 to experts the size of the dense FFN, so its E equals the ratio of
    total to active expert parameters; for top-k designs we pass that ratio (an extrapolation:
    ``in_fitted_range`` flags top_k != 1). Source: modelling choice of this package, not of
    arXiv:2502.05172.
    """
    return experts if top_k is None else experts / top_k


def predict_loss(law: str, constants: Mapping[str, float], *, params=None, active_params=None,
                 non_embedding_params=None, tokens=None, experts=None, top_k=None,
                 granularity=None):
    """Predicted loss (nats/token) under the law whose ``form`` is ``law`` or ``constants["form"]``.

    ``law`` may be a form name ("chinchilla", "kaplan", "joint_moe") or a law id such as
    "besiroglu", in which case ``constants["form"]`` selects the function. The branch is in
    Python (static); the arithmetic is jnp, so a closure over this call jit-compiles.
    Choices: dense laws applied to an MoE design see its TOTAL parameter count ``params``
    (all experts), the conservative reading of a dense law; kaplan uses
    ``non_embedding_params`` and falls back to ``params`` (which overstates N by the
    embeddings); joint_moe uses ``active_params``, ``tokens`` and experts / top_k (see
    ``joint_moe_effective_experts``); granularity is not modelled by any packaged law.
    """
    del granularity
    form = _form(law, constants)
    c = _pick(form, constants)
    d = _need("tokens", tokens, form)
    if form == "chinchilla":
        return chinchilla_loss(_need("params", params, form), d, **c)
    if form == "kaplan":
        n = non_embedding_params if non_embedding_params is not None else params
        return kaplan_loss(_need("non_embedding_params", n, form), d, **c)
    e = joint_moe_effective_experts(1.0 if experts is None else experts, top_k)
    return joint_moe_loss(_need("active_params", active_params, form), d, e, **c)


def in_fitted_range(constants, *, params=None, active_params=None, tokens=None,
                    non_embedding_params=None, total_params=None, experts=None, top_k=None):
    """True where a design lies inside the ranges the law was fitted on (bool array).

    Checks ``params_min <= N <= params_max`` and ``tokens_min <= D <= tokens_max`` from the data,
    where N is the count the law is stated in (``params_kind``: "total" -> params,
    "non_embedding" -> non_embedding_params (else params), "active" -> active_params), plus,
    when the data has them, ``total_params_max`` (vs total_params, else params),
    ``experts_min``/``experts_max`` and the fitted ``top_k``. Ranges are those the papers state.
    """
    kind = constants.get("params_kind", "total")
    n = {"total": params, "active": active_params,
         "non_embedding": non_embedding_params if non_embedding_params is not None else params}[kind]
    ok = (n >= constants["params_min"]) & (n <= constants["params_max"])
    ok = ok & (tokens >= constants["tokens_min"]) & (tokens <= constants["tokens_max"])
    total = total_params if total_params is not None else params
    if "total_params_max" in constants and total is not None:
        ok = ok & (total <= constants["total_params_max"])
    if "experts_min" in constants and experts is not None:
        ok = ok & (experts >= constants["experts_min"]) & (experts <= constants["experts_max"])
    if "top_k" in constants and top_k is not None:
        ok = ok & (jnp.asarray(top_k) == constants["top_k"])
    return jnp.asarray(ok, dtype=bool)


def numeric_constants(table: Mapping) -> dict:
    """The numeric entries of a law's data table (drops strings such as form, paper, notes)."""
    return {k: v for k, v in table.items()
            if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)}
