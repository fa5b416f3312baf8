"""Parameter counts against published model sizes, with the arithmetic written out."""

import numpy as np
import pytest

from kernels.architecture import llmcarbon_dense_params, moe_layer_count, param_counts
from kernels.design import default_d_ff


def count(layers, d_model, heads, vocab, *, kv_heads=None, head_dim=None, d_ff=None, ffn_matrices=2,
          tied=False, experts=1, top_k=1, moe_every=1, first_dense=0, shared=0, expert_d_ff=None, bias=False):
    kv_heads = kv_heads or heads
    head_dim = head_dim or d_model // heads
    d_ff = d_ff or default_d_ff(d_model)
    expert_d_ff = expert_d_ff or d_ff
    p, a = param_counts(layers, d_model, heads, kv_heads, head_dim, d_ff, ffn_matrices, vocab, tied,
                        experts, top_k, moe_every, first_dense, shared, expert_d_ff, bias)
    return float(p), float(a)


def test_gpt3_175b_is_about_175_billion():
    # Brown et al. 2020 Table 2.1: 96 layers, d_model 12288, 96 heads, vocab 50257, tied embeddings, biases.
    # per layer 12·h² + 13·h = 1,811,939,328 + 159,744; ×96 = 173,961,510,912; + 50257·12288 + h.
    p, a = count(96, 12288, 96, 50257, tied=True, bias=True)
    expected = 96 * (12 * 12288**2 + 13 * 12288) + 50257 * 12288 + 12288
    assert p == expected
    assert p == pytest.approx(175e9, rel=0.01)
    assert a == p


def test_llama2_70b_is_69_0_billion():
    # Touvron et al. 2023: l 80, h 8192, 64 heads, 8 KV heads, d_ff 28672, SwiGLU, vocab 32000, untied.
    # attention 2·8192·8192 + 2·8192·1024 = 150,994,944; MLP 3·8192·28672 = 704,643,072; norms 16,384
    # per layer 855,654,400; ×80 = 68,452,352,000; embeddings 2·32000·8192 = 524,288,000; final norm 8192
    p, _ = count(80, 8192, 64, 32000, kv_heads=8, d_ff=28672, ffn_matrices=3)
    assert p == 68_452_352_000 + 524_288_000 + 8192
    assert p / 1e9 == pytest.approx(69.0, abs=0.05)


def test_mixtral_8x7b_total_and_active():
    # Jiang et al. 2024: l 32, h 4096, 32 heads, 8 KV heads, expert d_ff 14336, 8 experts, top-2, vocab 32000.
    # attention 41,943,040; one expert 3·4096·14336 = 176,160,768; router 32,768; norms 8,192
    # total layer 41,943,040 + 8·176,160,768 + 32,768 + 8,192 = 1,451,270,144; ×32 + 262,144,000 + 4096
    # active layer 41,943,040 + 2·176,160,768 + 32,768 + 8,192 = 394,305,536; ×32 + 262,144,000 + 4096
    p, a = count(32, 4096, 32, 32000, kv_heads=8, d_ff=14336, ffn_matrices=3, experts=8, top_k=2)
    assert p == 1_451_270_144 * 32 + 262_144_000 + 4096
    assert a == 394_305_536 * 32 + 262_144_000 + 4096
    assert p / 1e9 == pytest.approx(46.7, abs=0.05)
    assert a / 1e9 == pytest.approx(12.9, abs=0.05)


def test_gshard_matches_llmcarbon_moe_formula():
    # LLMCarbon §2: P = (1−ρ)·l·12h² + ρ·l·(4h² + N_e·2·h·d_ff), l 36, h 1024, d_ff 8192, N_e 2048, ρ 0.5
    # = 18·12·1024² + 18·(4·1024² + 2048·2·1024·8192) = 618,777,280,512 ≈ 618.9 B (published 600B/619B)
    formula = 18 * 12 * 1024**2 + 18 * (4 * 1024**2 + 2048 * 2 * 1024 * 8192)
    assert formula == 618_777_280_512
    p, a = count(36, 1024, 16, 32000, d_ff=4096, experts=2048, top_k=2, moe_every=2, expert_d_ff=8192)
    assert p / 1e9 == pytest.approx(618.9, rel=2e-3)
    assert p == pytest.approx(formula, rel=2e-3)
    assert a < 3e9


def test_llmcarbon_dense_formula_checks():
    # llmcarbon.md §2: V 51200, s 2048: GPT-3 → 174.6 B, MT-NLG → 529.6 B, BLOOM → 173.4 B
    assert float(llmcarbon_dense_params(96, 12288, 51200, 2048)) / 1e9 == pytest.approx(174.6, abs=0.05)
    assert float(llmcarbon_dense_params(105, 20480, 51200, 2048)) / 1e9 == pytest.approx(529.6, abs=0.05)
    assert float(llmcarbon_dense_params(70, 14336, 51200, 2048)) / 1e9 == pytest.approx(173.4, abs=0.05)


def test_moe_every_and_first_dense_layers_count_moe_layers():
    # every 2nd of 36 layers → 18; DeepSeek-style 1 dense layer then all MoE of 60 → 59; dense → 0
    assert float(moe_layer_count(36, 2048, 2, 0)) == 18
    assert float(moe_layer_count(60, 64, 1, 1)) == 59
    assert float(moe_layer_count(32, 1, 1, 0)) == 0


def test_dense_model_active_equals_total():
    p, a = count(24, 2048, 16, 50000)
    assert p == a


def test_param_counts_broadcast_over_a_grid():
    layers = np.array([12, 24, 48])[:, None]
    d_model = np.array([1024.0, 2048.0])[None, :]
    p, a = param_counts(layers, d_model, 16, 16, d_model / 16, 4 * d_model, 2, 50000, False, 1, 1, 1, 0, 0,
                        4 * d_model)
    assert p.shape == (3, 2)
    assert float(p[1, 0]) == count(24, 1024, 16, 50000)[0]
