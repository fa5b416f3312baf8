"""GPUs consumed (Falk et al. 2025) against the paper's printed counts, in float64 and float32."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernels.materials import SECONDS_PER_YEAR, gpus_consumed, material_kg

A100_PEAK = 312e12
GPT4_FLOPS = 6 * (2 * 111e9) * 13e12  # 1.7316e25

CASES = [  # (flops, mfu, lifespan years, published GPUs) from flops-to-footprints.md
    (GPT4_FLOPS, 0.20, 1, 8800),
    (GPT4_FLOPS, 0.50, 3, 1174),
    (GPT4_FLOPS, 0.35, 2, 2515),
    (GPT4_FLOPS, 0.50, 2, 1760),
    (4.8e24, 0.35, 2, 697),
    (8.4e23, 0.35, 2, 122),
    (3.14e23, 0.35, 2, 46),
]


def test_gpt4_flops_is_1_7316e25():
    assert GPT4_FLOPS == pytest.approx(1.7316e25, rel=1e-12)


@pytest.mark.parametrize("flops,mfu,years,published", CASES)
def test_gpus_consumed_matches_paper_exactly(flops, mfu, years, published):
    # e.g. 1.7316e25 / (312e12 · 0.20 · 1 · 31,536,000) = 8799.45… → 8800
    assert int(gpus_consumed(flops, A100_PEAK, mfu, years)) == published


@pytest.mark.parametrize("flops,mfu,years,published", CASES)
def test_gpus_consumed_is_the_same_from_float32_inputs(flops, mfu, years, published):
    got = gpus_consumed(jnp.float32(flops), jnp.float32(A100_PEAK), jnp.float32(mfu), jnp.float32(years))
    assert got.dtype == jnp.float64
    assert int(got) == published


def test_year_is_365_days():
    assert SECONDS_PER_YEAR == 365 * 24 * 3600


def test_journal_baseline_material_is_about_3750_kg():
    # 2,515 GPUs ≈ 3,750 kg → ≈ 1.491 kg per GPU (derived in flops-to-footprints.md)
    assert float(material_kg(2515, 3750 / 2515)) == pytest.approx(3750)


@given(st.floats(0.05, 0.9), st.floats(0.05, 0.9), st.floats(1e20, 1e26), st.floats(0.5, 10))
def test_higher_mfu_never_raises_gpus_consumed(m1, m2, flops, years):
    lo, hi = sorted((m1, m2))
    assert gpus_consumed(flops, A100_PEAK, hi, years) <= gpus_consumed(flops, A100_PEAK, lo, years)


def test_counts_broadcast_over_mfu_and_lifespan():
    mfu = np.linspace(0.2, 0.6, 5)[:, None]
    years = np.arange(1, 7)[None, :]
    got = gpus_consumed(GPT4_FLOPS, A100_PEAK, mfu, years)
    assert got.shape == (5, 6)
    assert int(got[0, 0]) == 8800
