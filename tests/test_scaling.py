"""Tests for kernels/scaling.py: each law against numbers printed in its paper, plus properties.

Expected values below are copied from the papers (with the hand arithmetic that connects them to
the constants), never from this code's output.
"""

import math
import pathlib
import tomllib

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

from kernels import scaling  # noqa: E402

DB = pathlib.Path(__file__).resolve().parents[1] / "hardware_db" / "scaling_laws.toml"


def load_laws():
    with DB.open("rb") as f:
        return tomllib.load(f)


LAWS = load_laws()


def law(law_id):
    """Numeric constants of one law, ready to pass as keyword arguments to its function."""
    return scaling.numeric_constants(LAWS[law_id])


def chin(law_id):
    c = law(law_id)
    return {k: c[k] for k in ("E", "A", "B", "alpha", "beta")}


def kap():
    c = law("kaplan")
    return {k: c[k] for k in ("N_c", "D_c", "alpha_N", "alpha_D")}


def moe():
    c = law("joint_moe")
    keys = ("a", "alpha", "delta", "gamma", "b", "beta", "omega", "zeta", "c", "E_start", "E_max")
    return {k: c[k] for k in keys}


GOPHER_FLOPS = 5.76e23  # Hoffmann et al. 2022 App. F: Gopher's budget as computed in Rae et al.


# ---------------------------------------------------------------------------------------------
# The data file
# ---------------------------------------------------------------------------------------------


def test_every_law_table_has_the_documented_keys():
    required = {"form", "name", "paper", "params_min", "params_max", "tokens_min", "tokens_max",
                "source", "notes", "params_kind"}
    for law_id, table in LAWS.items():
        assert required <= set(table), law_id
        assert table["form"] in scaling.FORMS, law_id
        assert table["params_min"] < table["params_max"], law_id
        assert table["tokens_min"] < table["tokens_max"], law_id


def test_chinchilla_is_the_only_default_law():
    defaults = [law_id for law_id, t in LAWS.items() if t.get("default")]
    assert defaults == ["chinchilla"]


def test_packaged_laws_are_the_four_named_by_their_papers():
    assert set(LAWS) == {"chinchilla", "besiroglu", "kaplan", "joint_moe"}


# ---------------------------------------------------------------------------------------------
# Chinchilla (Hoffmann et al. 2022, arXiv:2203.15556)
# ---------------------------------------------------------------------------------------------


def test_chinchilla_printed_constants_give_table2_approach3_exponents_to_rounding():
    # Table 2, approach 3: N_opt ~ C^a with a = 0.46, D_opt ~ C^b with b = 0.54.
    # Closed form (eq. 4): a = beta/(alpha+beta) = 0.28/0.62 = 0.4516 with the printed (rounded)
    # constants; the 0.008 gap is the rounding Besiroglu et al. 2024 point out.
    c = chin("chinchilla")
    n1, d1 = scaling.chinchilla_compute_optimal(1e22, **c)
    n2, d2 = scaling.chinchilla_compute_optimal(1e24, **c)
    a = math.log10(float(n2 / n1)) / 2.0
    b = math.log10(float(d2 / d1)) / 2.0
    assert abs(a - 0.46) < 0.01
    assert abs(b - 0.54) < 0.01
    assert a + b == pytest.approx(1.0, abs=1e-12)


def test_chinchilla_tex_precision_exponents_reproduce_40B_at_gopher_budget():
    # Fig. 4 caption: "We project the optimal model size given the Gopher FLOP budget to be 40B".
    # TeX-source exponents alpha = 0.3392, beta = 0.2849 (A, B as printed). By hand:
    # G = (0.3392*406.4/(0.2849*410.7))^(1/0.6241) = 1.17813^1.60231 = 1.3004,
    # a = 0.2849/0.6241 = 0.45650, (5.76e23/6)^a = 9.6e22^0.4565 = 3.100e10 -> N = 4.03e10.
    c = dict(chin("chinchilla"), alpha=0.3392, beta=0.2849)
    n, d = scaling.chinchilla_compute_optimal(GOPHER_FLOPS, **c)
    assert float(n) == pytest.approx(40e9, rel=0.05)
    assert float(6 * n * d) == pytest.approx(GOPHER_FLOPS, rel=1e-12)


def test_chinchilla_rounded_constants_underpredict_the_gopher_budget_optimum():
    # Same budget with the constants as printed in App. D.2 (alpha = 0.34, beta = 0.28). By hand:
    # G = (0.34*406.4/(0.28*410.7))^(1/0.62) = 1.20157^1.6129 = 1.3447,
    # 9.6e22^(0.28/0.62) = 2.394e10 -> N = 3.22e10: the rounding bias documented in the data notes.
    n, _ = scaling.chinchilla_compute_optimal(GOPHER_FLOPS, **chin("chinchilla"))
    assert float(n) == pytest.approx(32.2e9, rel=0.01)
    assert float(n) < 0.85 * 40e9


# ---------------------------------------------------------------------------------------------
# Besiroglu et al. 2024 (arXiv:2404.10102)
# ---------------------------------------------------------------------------------------------


def test_besiroglu_optimum_at_chinchilla_budget_is_70B_params_1p4T_tokens():
    # Chinchilla: 70B parameters trained on 1.4T tokens ("a ratio of 20 tokens per parameter"),
    # C = 6 * 70e9 * 1.4e12 = 5.88e23 FLOPs. Refit constants, by hand:
    # G = (0.3478*482.01/(0.3658*2085.43))^(1/0.7136) = 0.21976^1.40135 = 0.11961,
    # (5.88e23/6)^(0.3658/0.7136) = 9.8e22^0.51261 = 6.103e11 -> N = 7.30e10, D = 9.8e22/N = 1.34e12.
    c = chin("besiroglu")
    n, d = scaling.chinchilla_compute_optimal(6 * 70e9 * 1.4e12, **c)
    assert float(n) == pytest.approx(70e9, rel=0.10)
    assert float(d) == pytest.approx(1.4e12, rel=0.10)
    assert 15 < float(d / n) < 25


def test_besiroglu_compute_optimal_exponent_is_the_printed_0_5126():
    # Besiroglu et al. 2024 print the optimal-size exponent a = beta/(alpha+beta) = 0.5126 (b = 0.4874)
    # for their refit; 0.3658 / (0.3478 + 0.3658) = 0.51261
    c = LAWS["besiroglu"]
    assert c["beta"] / (c["alpha"] + c["beta"]) == pytest.approx(0.5126, abs=5e-5)
    assert c["alpha"] / (c["alpha"] + c["beta"]) == pytest.approx(0.4874, abs=5e-5)


def test_besiroglu_reuses_the_chinchilla_function_through_its_form():
    c = LAWS["besiroglu"]
    got = scaling.predict_loss("besiroglu", c, params=7e10, tokens=1.4e12)
    # By hand: 1.8172 + 482.01/7e10^0.3478 + 2085.43/1.4e12^0.3658
    want = 1.8172 + 482.01 / 7e10 ** 0.3478 + 2085.43 / 1.4e12 ** 0.3658
    assert float(got) == pytest.approx(want, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Kaplan et al. 2020 (arXiv:2001.08361)
# ---------------------------------------------------------------------------------------------


def test_kaplan_doubling_params_scales_loss_by_0p95_in_the_infinite_data_limit():
    # Sec. 1.2: "doubling the number of parameters yields a loss that is smaller by a factor
    # 2^-alpha_N = 0.95" (2^-0.076 = 0.9487). With D -> inf eq. (1.5) reduces to (N_c/N)^alpha_N.
    c = kap()
    n = np.array([1e6, 1e7, 1e8, 1e9])
    ratio = scaling.kaplan_loss(2 * n, 1e40, **c) / scaling.kaplan_loss(n, 1e40, **c)
    np.testing.assert_allclose(np.asarray(ratio), 0.95, atol=0.002)


def test_kaplan_overfitting_is_0p02_at_the_eq_4_4_data_requirement():
    # Eq. (4.3)-(4.4): dL = L(N,D)/L(N,inf) - 1 = [1 + (N/N_c)^(aN/aD) D_c/D]^aD - 1, and keeping
    # dL below 0.02 needs D >~ 5e3 N^0.74. By hand at N = 1e9: D = 5e3*1e9^0.74 = 2.29e10,
    # x = (1e9/6.4e13)^0.7379 * 1.8e13/2.29e10 = 2.845e-4*787 = 0.224, dL = 1.224^0.103 - 1 = 0.021.
    c = kap()
    n = np.array([1e6, 1e7, 1e8, 1e9])
    d = 5e3 * n ** 0.74
    overfit = scaling.kaplan_loss(n, d, **c) / scaling.kaplan_loss(n, 1e40, **c) - 1.0
    np.testing.assert_allclose(np.asarray(overfit), 0.02, atol=0.003)
    assert c["alpha_N"] / c["alpha_D"] == pytest.approx(0.74, abs=0.005)


# ---------------------------------------------------------------------------------------------
# Joint MoE (Ludziejewski et al. 2025, arXiv:2502.05172)
# ---------------------------------------------------------------------------------------------

# Table 4: (E, m, mu, n, nu), c = 1.3637 for every E.
TABLE4 = [
    (1, 30.3640, -0.1817, 53.9838, -0.1965),
    (2, 27.7982, -0.1780, 66.8401, -0.2065),
    (4, 24.8462, -0.1731, 87.7022, -0.2192),
    (8, 21.8330, -0.1676, 119.9126, -0.2338),
    (16, 19.0159, -0.1617, 167.5073, -0.2494),
    (32, 16.5424, -0.1557, 234.6726, -0.2652),
]

# Table 1: (budget FLOPs, E, N_act_opt, D_opt), printed to 2-3 significant figures.
TABLE1 = [
    (1e20, 1, 1.7e9, 9.7e9), (1e20, 2, 1.5e9, 11.4e9), (1e20, 4, 1.2e9, 13.9e9),
    (1e20, 8, 990e6, 17e9), (1e20, 16, 810e6, 20.7e9), (1e20, 32, 669e6, 24.9e9),
    (1e21, 1, 5.7e9, 29.3e9), (1e21, 2, 5e9, 33e9), (1e21, 4, 4.4e9, 38e9),
    (1e21, 8, 3.8e9, 44.3e9), (1e21, 16, 3.3e9, 51.2e9), (1e21, 32, 2.85e9, 58.4e9),
    (1e22, 1, 18.8e9, 88.6e9), (1e22, 2, 17.4e9, 96e9), (1e22, 4, 15.8e9, 105.4e9),
    (1e22, 8, 14.4e9, 115.8e9), (1e22, 16, 13.2e9, 126.5e9), (1e22, 32, 12.2e9, 136.9e9),
]


def test_joint_moe_expert_transform_maps_one_expert_to_E_start():
    # Eq. (4) at E = 1: 1/E_hat = (1/E_start - 1/E_max) + 1/E_max = 1/E_start.
    c = moe()
    e_hat = scaling.joint_moe_expert_transform(1.0, E_start=c["E_start"], E_max=c["E_max"])
    assert float(e_hat) == pytest.approx(2.0732, rel=1e-12)
    big = scaling.joint_moe_expert_transform(1e12, E_start=c["E_start"], E_max=c["E_max"])
    assert float(big) == pytest.approx(290.4521, rel=1e-6)


@pytest.mark.parametrize("experts, m, mu, n, nu", TABLE4)
def test_joint_moe_table3_constants_reproduce_table4_reduced_coefficients(experts, m, mu, n, nu):
    # By hand at E = 1: E_hat = 2.0732, ln E_hat = 0.7291, m = 35.91*2.0732^-0.2285 = 30.40,
    # mu = -0.1889 + 0.0098*0.7291 = -0.1818, n = 35.98*2.0732^0.5529 = 53.84,
    # nu = -0.1775 - 0.0259*0.7291 = -0.1964. Table 3 is rounded, hence rel 0.5% / abs 3e-4.
    got = scaling.joint_moe_reduced(float(experts), **moe())
    assert float(got[0]) == pytest.approx(m, rel=0.005)
    assert float(got[1]) == pytest.approx(mu, abs=3e-4)
    assert float(got[2]) == pytest.approx(n, rel=0.005)
    assert float(got[3]) == pytest.approx(nu, abs=3e-4)


@pytest.mark.parametrize("flops, experts, n_opt, d_opt", TABLE1)
def test_joint_moe_compute_optimum_matches_table1(flops, experts, n_opt, d_opt):
    # By hand at 1e20, E = 1 from Table 4: G = (0.1817*30.364/(0.1965*53.9838))^(1/0.3782)
    # = 0.52010^2.6441 = 0.17754, (1e20/6)^(0.1965/0.3782) = 9.706e9 -> N = 1.72e9 (1.7B),
    # D = 1.667e19/1.72e9 = 9.67e9 (9.7B). Table 1 is printed to 2-3 figures, hence rel 3%.
    n, d = scaling.joint_moe_compute_optimal(flops, float(experts), **moe())
    assert float(n) == pytest.approx(n_opt, rel=0.03)
    assert float(d) == pytest.approx(d_opt, rel=0.03)


def test_joint_moe_more_experts_lower_compute_optimal_loss():
    # Finding 2: "For a given compute budget, increasing the number of experts always improves
    # performance, provided the size of the model and the number of training tokens are adjusted".
    c = moe()
    experts = jnp.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    for flops in (1e20, 1e21, 1e22):
        n, d = scaling.joint_moe_compute_optimal(flops, experts, **c)
        loss = np.asarray(scaling.joint_moe_loss(n, d, experts, **c))
        assert np.all(np.diff(loss) < 0)


def test_joint_moe_more_experts_shift_the_optimum_to_more_tokens():
    # Finding 1: "when increasing the number of experts, it is optimal to decrease the number of
    # active parameters and increase the number of training tokens".
    experts = jnp.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    n, d = scaling.joint_moe_compute_optimal(1e21, experts, **moe())
    assert np.all(np.diff(np.asarray(n)) < 0)
    assert np.all(np.diff(np.asarray(d)) > 0)


# ---------------------------------------------------------------------------------------------
# Properties shared by every law
# ---------------------------------------------------------------------------------------------


def dense_laws():
    return {
        "chinchilla": lambda n, d: scaling.chinchilla_loss(n, d, **chin("chinchilla")),
        "besiroglu": lambda n, d: scaling.chinchilla_loss(n, d, **chin("besiroglu")),
        "kaplan": lambda n, d: scaling.kaplan_loss(n, d, **kap()),
        "joint_moe_E1": lambda n, d: scaling.joint_moe_loss(n, d, 1.0, **moe()),
        "joint_moe_E8": lambda n, d: scaling.joint_moe_loss(n, d, 8.0, **moe()),
    }


log_n = st.floats(min_value=6.0, max_value=13.0)
log_d = st.floats(min_value=8.0, max_value=14.0)
log_step = st.floats(min_value=0.01, max_value=2.0)


@settings(max_examples=60, deadline=None)
@given(log_n, log_d, log_step)
def test_loss_decreases_with_more_tokens(ln, ld, step):
    n, d = 10.0 ** ln, 10.0 ** ld
    for name, f in dense_laws().items():
        assert float(f(n, d * 10.0 ** step)) < float(f(n, d)), name


@settings(max_examples=60, deadline=None)
@given(log_n, log_d, log_step)
def test_loss_decreases_with_more_params(ln, ld, step):
    n, d = 10.0 ** ln, 10.0 ** ld
    for name, f in dense_laws().items():
        assert float(f(n * 10.0 ** step, d)) < float(f(n, d)), name


@settings(max_examples=30, deadline=None)
@given(log_n, log_d, st.sampled_from([1.0, 2.0, 4.0, 8.0, 16.0, 32.0]))
def test_joint_moe_loss_decreases_with_more_active_params_and_tokens(ln, ld, experts):
    c = moe()
    n, d = 10.0 ** ln, 10.0 ** ld
    base = float(scaling.joint_moe_loss(n, d, experts, **c))
    assert float(scaling.joint_moe_loss(2 * n, d, experts, **c)) < base
    assert float(scaling.joint_moe_loss(n, 2 * d, experts, **c)) < base


def test_float32_and_float64_agree_and_float32_stays_float32():
    n64 = np.logspace(7, 12, 11)
    d64 = np.logspace(9, 13, 11)
    for name, f in dense_laws().items():
        l64 = f(n64, d64)
        l32 = f(n64.astype(np.float32), d64.astype(np.float32))
        assert l32.dtype == jnp.float32, name
        assert l64.dtype == jnp.float64, name
        np.testing.assert_allclose(np.asarray(l32, np.float64), np.asarray(l64), rtol=1e-5,
                                   err_msg=name)


def test_laws_broadcast_over_a_params_by_tokens_grid():
    n = np.logspace(8, 11, 4)
    d = np.logspace(10, 13, 5)
    for name, f in dense_laws().items():
        grid = np.asarray(f(n[:, None], d[None, :]))
        assert grid.shape == (4, 5), name
        for i in range(4):
            for j in range(5):
                assert grid[i, j] == pytest.approx(float(f(n[i], d[j])), rel=1e-12), name


def test_joint_moe_broadcasts_over_experts_params_tokens():
    experts = jnp.array([1.0, 4.0, 32.0])[:, None, None]
    n = jnp.logspace(8, 9, 2)[None, :, None]
    d = jnp.logspace(10, 11, 5)[None, None, :]
    assert scaling.joint_moe_loss(n, d, experts, **moe()).shape == (3, 2, 5)


def test_laws_jit_compile_to_the_same_values():
    n = jnp.logspace(8, 11, 7)
    d = jnp.logspace(10, 13, 7)
    assert np.allclose(jax.jit(scaling.chinchilla_loss)(n, d, **chin("chinchilla")),
                       scaling.chinchilla_loss(n, d, **chin("chinchilla")), rtol=1e-12)
    assert np.allclose(jax.jit(scaling.kaplan_loss)(n, d, **kap()),
                       scaling.kaplan_loss(n, d, **kap()), rtol=1e-12)
    assert np.allclose(jax.jit(scaling.joint_moe_loss)(n, d, 8.0, **moe()),
                       scaling.joint_moe_loss(n, d, 8.0, **moe()), rtol=1e-12)
    consts = LAWS["besiroglu"]
    jitted = jax.jit(lambda a, b: scaling.predict_loss("besiroglu", consts, params=a, tokens=b))
    assert np.allclose(jitted(n, d), scaling.chinchilla_loss(n, d, **chin("besiroglu")), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Helpers: compute-optimal frontier and inverse in tokens
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("law_id", ["chinchilla", "besiroglu"])
@pytest.mark.parametrize("flops", [1e19, 1e21, 5.76e23, 1e25])
def test_compute_optimum_spends_the_budget_and_minimises_loss_on_the_isoflop(law_id, flops):
    c = chin(law_id)
    n_opt, d_opt = scaling.chinchilla_compute_optimal(flops, **c)
    assert float(6.0 * n_opt * d_opt) == pytest.approx(flops, rel=1e-12)
    # numpy scan along the iso-FLOP curve D = C/(6N), +-1 decade around the optimum
    n = float(n_opt) * np.logspace(-1.0, 1.0, 20001)
    e, a, b, al, be = c["E"], c["A"], c["B"], c["alpha"], c["beta"]
    loss = e + a / n ** al + b / (flops / (6.0 * n)) ** be
    best = n[np.argmin(loss)]
    assert best == pytest.approx(float(n_opt), rel=2e-4)
    assert float(scaling.chinchilla_loss(n_opt, d_opt, **c)) <= loss.min() + 1e-12


def test_compute_optimum_broadcasts_over_budgets():
    flops = np.logspace(18, 26, 9)
    n, d = scaling.chinchilla_compute_optimal(flops, **chin("chinchilla"))
    assert n.shape == d.shape == (9,)
    np.testing.assert_allclose(np.asarray(6 * n * d), flops, rtol=1e-12)


@pytest.mark.parametrize("law_id", ["chinchilla", "besiroglu"])
def test_tokens_for_loss_inverts_the_loss_in_tokens(law_id):
    c = chin(law_id)
    n = np.logspace(8, 12, 5)[:, None]
    d = np.logspace(9, 14, 6)[None, :]
    target = scaling.chinchilla_loss(n, d, **c)
    back = scaling.tokens_for_loss(target, n, **c)
    np.testing.assert_allclose(np.asarray(back), np.broadcast_to(d, back.shape), rtol=1e-9)


def test_tokens_for_loss_is_nan_when_the_target_is_unreachable():
    c = chin("chinchilla")
    n = 1e9
    floor = c["E"] + c["A"] / n ** c["alpha"]  # loss with infinite data
    got = np.asarray(scaling.tokens_for_loss(np.array([floor - 0.1, floor - 1e-9, floor + 0.1]), n,
                                             **c))
    assert np.isnan(got[0]) and np.isnan(got[1])
    assert np.isfinite(got[2]) and got[2] > 0


def test_tokens_for_loss_jit_compiles():
    c = chin("chinchilla")
    f = jax.jit(lambda t, n: scaling.tokens_for_loss(t, n, **c))
    assert np.isfinite(float(f(2.0, 7e10)))


# ---------------------------------------------------------------------------------------------
# Dispatcher and fitted ranges
# ---------------------------------------------------------------------------------------------


def test_predict_loss_selects_each_law_by_its_form():
    n, d = 7e10, 1.4e12
    assert float(scaling.predict_loss("chinchilla", LAWS["chinchilla"], params=n, tokens=d)) == \
        pytest.approx(float(scaling.chinchilla_loss(n, d, **chin("chinchilla"))), rel=1e-12)
    assert float(scaling.predict_loss("kaplan", LAWS["kaplan"], non_embedding_params=n,
                                      tokens=d)) == \
        pytest.approx(float(scaling.kaplan_loss(n, d, **kap())), rel=1e-12)
    assert float(scaling.predict_loss("joint_moe", LAWS["joint_moe"], active_params=1e9,
                                      tokens=d, experts=8)) == \
        pytest.approx(float(scaling.joint_moe_loss(1e9, d, 8.0, **moe())), rel=1e-12)


def test_predict_loss_applies_dense_laws_to_the_total_params_of_an_moe_design():
    # An MoE with 47B total / 13B active parameters: a dense law sees the 47B.
    got = scaling.predict_loss("chinchilla", LAWS["chinchilla"], params=47e9, active_params=13e9,
                               tokens=1e12, experts=8, top_k=2)
    want = scaling.chinchilla_loss(47e9, 1e12, **chin("chinchilla"))
    assert float(got) == pytest.approx(float(want), rel=1e-12)


def test_predict_loss_feeds_joint_moe_the_expansion_rate_experts_over_top_k():
    got = scaling.predict_loss("joint_moe", LAWS["joint_moe"], active_params=1e9, tokens=2e10,
                               experts=8, top_k=2)
    want = scaling.joint_moe_loss(1e9, 2e10, 4.0, **moe())
    assert float(got) == pytest.approx(float(want), rel=1e-12)


def test_predict_loss_rejects_an_unknown_form():
    with pytest.raises(ValueError):
        scaling.predict_loss("nope", {"form": "nope"}, params=1e9, tokens=1e10)


def test_predict_loss_broadcasts_over_a_design_grid():
    n = jnp.logspace(9, 11, 3)[:, None]
    d = jnp.logspace(11, 13, 4)[None, :]
    assert scaling.predict_loss("chinchilla", LAWS["chinchilla"], params=n, tokens=d).shape == (3, 4)


def test_in_fitted_range_flags_designs_outside_the_papers_ranges():
    chinchilla = LAWS["chinchilla"]
    params = np.array([1e9, 1e11, 1e9, 1e9])
    tokens = np.array([1e11, 1e11, 1e13, 1e9])
    got = np.asarray(scaling.in_fitted_range(chinchilla, params=params, active_params=params,
                                             tokens=tokens))
    assert got.dtype == bool
    assert got.tolist() == [True, False, False, False]


@pytest.mark.parametrize("law", ["chinchilla", "besiroglu", "kaplan"])
def test_a_dense_law_is_outside_its_fitted_range_for_an_moe_design(law):
    # the three papers fitted dense transformers only; a size and token budget inside their ranges
    kw = dict(params=1e9, active_params=1e9, non_embedding_params=1e9, tokens=1e10)
    assert bool(scaling.in_fitted_range(LAWS[law], experts=1, **kw))
    assert not bool(scaling.in_fitted_range(LAWS[law], experts=8, **kw))


def test_in_fitted_range_uses_active_params_and_experts_for_the_moe_law():
    joint = LAWS["joint_moe"]
    inside = scaling.in_fitted_range(joint, params=3e9, active_params=1e9, tokens=2e10, experts=8,
                                     top_k=1)
    too_many_experts = scaling.in_fitted_range(joint, params=3e9, active_params=1e9, tokens=2e10,
                                               experts=64, top_k=1)
    too_big_total = scaling.in_fitted_range(joint, params=4.7e10, active_params=1e9, tokens=2e10,
                                            experts=8, top_k=1)
    top2 = scaling.in_fitted_range(joint, params=3e9, active_params=1e9, tokens=2e10, experts=8,
                                   top_k=2)
    assert bool(inside) and not bool(too_many_experts)
    assert not bool(too_big_total) and not bool(top2)


@settings(max_examples=200, deadline=None)
@given(st.floats(1e-30, 1e30), st.floats(-3.0, 3.0).filter(lambda y: abs(y) > 1e-6))
def test_power_by_exp_log_agrees_with_pow_in_float64(x, y):
    got = float(scaling.power(jnp.float64(x), y))
    assert math.isclose(got, x ** y, rel_tol=1e-13)


def test_power_by_exp_log_keeps_the_special_values_of_pow():
    x = np.array([0.0, np.inf, np.nan, -1.0])
    for y in (0.34, -0.28):
        got = np.asarray(scaling.power(jnp.asarray(x), y))
        with np.errstate(divide="ignore", invalid="ignore"):
            want = np.power(x, y)
        np.testing.assert_array_equal(got, want)


def test_power_by_exp_log_in_float32_is_within_a_few_ulps():
    x = np.geomspace(1e6, 1e13, 10_000).astype(np.float32)
    got = np.asarray(scaling.power(jnp.asarray(x), np.float32(0.34)), np.float64)
    np.testing.assert_allclose(got, x.astype(np.float64) ** 0.34, rtol=2e-6)
    assert got.dtype == np.float64 and np.asarray(scaling.power(jnp.asarray(x), 0.34)).dtype == np.float32
