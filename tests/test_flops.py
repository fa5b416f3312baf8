"""FLOPs per token and in total, against hand calculations."""

import pytest

from kernels import flops


def test_gpt3_training_flops_per_token_by_hand():
    # N_mm = 174.6e9-ish active params (tied: the table multiplies once as output projection)
    # 6·N + 12·l·s·d_attn with l 96, s 2048, d_attn 12288: 12·96·2048·12288 = 28,991,029,248
    n = 175e9
    got = float(flops.train_flops_per_token(n, 50257, 12288, True, 96, 2048, 12288))
    assert got == 6 * 175e9 + 28_991_029_248


def test_untied_input_table_does_no_matmul():
    # untied: subtract vocab·d_model = 32000·8192 = 262,144,000 before the 6·N
    got = float(flops.train_flops_per_token(69e9, 32000, 8192, False, 80, 4096, 8192))
    assert got == 6 * (69e9 - 262_144_000) + 12 * 80 * 4096 * 8192


def test_recompute_extra_flops_by_mode():
    n, l, s, d = 1e9, 24, 2048, 2048
    attn = 4 * l * s * d
    assert float(flops.recompute_flops_per_token(0, n, 0, d, True, l, s, d)) == 0
    assert float(flops.recompute_flops_per_token(1, n, 0, d, True, l, s, d)) == attn
    assert float(flops.recompute_flops_per_token(2, n, 0, d, True, l, s, d)) == 2 * n + attn


def test_full_recompute_is_about_eight_n_per_token():
    # llmcarbon.md §3: full recomputation gives ≈ 8·P·D instead of 6·P·D (attention term aside)
    n = 1e9
    base = float(flops.train_flops_per_token(n, 0, 1, True, 1, 1, 1))
    extra = float(flops.recompute_flops_per_token(2, n, 0, 1, True, 1, 1, 1))
    assert (base + extra) / n == pytest.approx(8.0, rel=1e-6)


def test_inference_prefill_and_decode_by_hand():
    n, l, s, d = 7e9, 32, 4096, 4096
    assert float(flops.prefill_flops_per_token(n, 0, d, True, l, s, d)) == 2 * n + 2 * l * s * d
    assert float(flops.decode_flops_per_token(n, 0, d, True, l, 1000, d)) == 2 * n + 4 * l * 1000 * d


def test_total_flops_is_per_token_times_tokens():
    assert float(flops.total_flops(6 * 70e9, 2e12)) == 8.4e23
