"""Tests of the layout-aware throughput model (kernels/layout.py) and its validation rows."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels  # noqa: F401  (enables float64)
from kernels.architecture import moe_layer_count, param_counts
from kernels.layout import enumerate_layouts, step
from kernels.selection import best_layout
from kernels.reasons import CODE
from sweep.validate_layout import A100_80GB_FALLBACK, calibration, gpt_design, hardware, layout_validation_rows

STEP = jax.jit(step)


@pytest.fixture(scope="module")
def db():
    try:
        import hardware_db

        return hardware_db.load()
    except Exception:  # noqa: BLE001  the database is being written concurrently
        return None


@pytest.fixture(scope="module")
def a100(db):
    return hardware(db, "a100-sxm4-80gb", "fp16")


@pytest.fixture(scope="module")
def cal(db):
    return calibration(db, "a100-sxm4-80gb")


@pytest.fixture(scope="module")
def rows(db):
    return layout_validation_rows(db)


def _layout(**kw):
    base = dict(devices=1, tp=1, pp=1, ep=1, microbatch=1, recompute=0, interleave=1, shard_optimizer=0,
                sequence_parallel=0)
    base.update(kw)
    return {k: float(v) for k, v in base.items()}


def _moe_design(experts, top_k=1, layers=24, d_model=2048, heads=16, d_ff=8192, batch=512, every=2):
    n_moe = float(moe_layer_count(layers, experts, every, 0))
    params, active = param_counts(layers, d_model, heads, heads, d_model // heads, d_ff, 2, 51200, 1, experts, top_k,
                                  every, 0, 0, d_ff)
    return dict(
        layers=layers, d_model=d_model, heads=heads, kv_heads=heads, head_dim=d_model / heads, d_ff=d_ff,
        ffn_matrices=2, vocab=51200, seq_len=2048, tied_embeddings=1, experts=experts, top_k=top_k,
        moe_layers=n_moe, expert_d_ff=d_ff, shared_experts=0, params=float(params), active_params=float(active),
        global_batch=batch, bytes_per_value=2,
    )


# Simple hardware and constants for the hand-worked examples (round numbers; no tail-wave term).
HAND_HW = dict(peak_flops=100e12, hbm_bytes=80e9, hbm_bw_bytes_s=1e12, intra_bw_bytes_s=100e9, inter_bw_bytes_s=10e9,
               devices_per_node=8.0)
HAND_CAL = dict(gemm_eff_max=0.5, hbm_eff=1.0, link_eff=1.0, collective_latency_s=0.0, grad_bytes=4.0, dp_overlap=0.0,
                moe_imbalance=1.0, memory_reserve_bytes=0.0, gemm_wave_elements=0.0)


def _gemm(m, n, k, batch=1):
    """Hand roofline: 2mnk/(peak·0.5) + 2 bytes·(mk + kn + mn)/1e12 (HAND_HW, HAND_CAL)."""
    return batch * 2 * m * n * k / 50e12 + batch * 2 * (m * k + k * n + m * n) / 1e12


def test_hand_worked_dense_step_time():
    # 2 layers, h 1024, 8 heads of 128, d_ff 4096 (gelu), vocab 32000 tied, s 1024; one device,
    # global batch 2 = one micro-batch of 2: T = 2048 tokens, no recompute, no parallelism.
    T, s, h, V = 2048, 1024, 1024, 32000
    params = 2 * (4 * h * h + 2 * h * 4096 + 2 * h) + V * h + h  # 57 938 944
    design = dict(layers=2, d_model=h, heads=8, kv_heads=8, head_dim=128, d_ff=4096, ffn_matrices=2, vocab=V, seq_len=s,
                  tied_embeddings=1, experts=1, top_k=1, moe_layers=0, expert_d_ff=0, shared_experts=0,
                  params=params, active_params=params, global_batch=2, bytes_per_value=2)
    # forward GEMMs of one layer: QKV (2048×1024 → 3072), output (1024 → 1024), scores and P·V
    # (16 = 2·8 batched 1024×1024×128 and 1024×128×1024), FFN up (→ 4096) and down (4096 → 1024)
    g = (_gemm(T, 3072, h) + _gemm(T, h, h) + _gemm(s, s, 128, 16) + _gemm(s, 128, s, 16) + _gemm(T, 4096, h)
         + _gemm(T, h, 4096))
    # elementwise traffic, 2 bytes per element at 1e12 B/s: norms+dropout-add 11·h, gelu 2·4096,
    # softmax+dropout 4.5·heads·s per token
    mem = (11 * h + 2 * 4096 + 4.5 * 8 * s) * T * 2 / 1e12
    layer = 3 * (g + mem)  # forward + backward (2×)
    head = 3 * _gemm(T, V, h) + 6 * T * V * 4 / 1e12  # logits fwd+bwd, fp32 cross-entropy traffic
    optimizer = (params - h) * 58 / 1e12  # 58 bytes of traffic per parameter
    expected = 2 * layer + head + optimizer
    assert expected == pytest.approx(0.0232454, rel=1e-5)  # the sum, evaluated: ≈ 23.2 ms
    out = step(design, HAND_HW, _layout(microbatch=2), HAND_CAL)
    assert int(out["reason"]) == 0
    assert float(out["step_time_s"]) == pytest.approx(expected, rel=1e-9)
    assert float(out["bubble_s"]) == 0.0 and float(out["comm_exposed_s"]) == 0.0
    model_flops = 2 * s * (6 * params - 6 * 0 + 12 * 2 * s * 1024)  # tied table multiplies: N_mm = params
    assert float(out["mfu"]) == pytest.approx(model_flops / (expected * 100e12), rel=1e-9)
    # memory: 2 + 4 + 12 bytes per parameter; activations 34·s·b·h + 5·a·s²·b per layer, fp32 logits
    act = 2 * (34 * s * 2 * h + 5 * 8 * s * s * 2) + 4 * s * 2 * V
    assert float(out["memory_bytes"]) == pytest.approx(18 * (params - h) + act, rel=1e-9)


def test_hand_worked_moe_step_time():
    # As the dense example but layer 2 is an MoE layer: 4 experts (d_ff 4096), top-1, router;
    # 2 devices, ep 2 (dp 2), global batch 2 = one micro-batch of 1 per replica: T = 1024.
    T, s, h, V = 1024, 1024, 1024, 32000
    dense_layer = 4 * h * h + 2 * h * 4096 + 2 * h
    expert = 2 * h * 4096
    moe_common = 4 * h * h + 2 * h + h * 4
    params = dense_layer + moe_common + 4 * expert + V * h + h
    active = dense_layer + moe_common + 1 * expert + V * h + h
    design = dict(layers=2, d_model=h, heads=8, kv_heads=8, head_dim=128, d_ff=4096, ffn_matrices=2, vocab=V, seq_len=s,
                  tied_embeddings=1, experts=4, top_k=1, moe_layers=1, expert_d_ff=4096, shared_experts=0,
                  params=params, active_params=active, global_batch=2, bytes_per_value=2)
    attn = _gemm(T, 3072, h) + _gemm(T, h, h) + _gemm(s, s, 128, 8) + _gemm(s, 128, s, 8)
    attn_mem = (11 * h + 4.5 * 8 * s) * T * 2 / 1e12
    dense = 3 * (attn + _gemm(T, 4096, h) + _gemm(T, h, 4096) + attn_mem + 2 * 4096 * T * 2 / 1e12)
    # MoE FFN on the device: 2 local experts, T·top_k/2 = 512 tokens each; router 1024×1024 → 4;
    # traffic: expert activations 2·4096 per routed token, token permutation and unpermutation 4·h,
    # the alltoall dispatcher's sort by local expert and back (2 local experts) 4·h more, router 4·E
    experts = _gemm(512, 4096, h, 2) + _gemm(512, h, 4096, 2) + _gemm(T, 4, h)
    moe_mem = (2 * 4096 * T + (4 + 4) * h * T + 4 * 4 * T) * 2 / 1e12
    moe = 3 * (attn + experts + attn_mem + moe_mem)
    head = 3 * _gemm(T, V, h) + 6 * T * V * 4 / 1e12
    # all-to-all: T·h·2 bytes per dispatch, half stays on the device, half crosses NVLink (100 GB/s);
    # dispatch + combine, forward + backward
    a2a = 4 * (T * h * 2 * 0.5 / 100e9)
    # gradients of the non-expert parameters (4 bytes) ring-all-reduced over dp 2 within the node;
    # the experts' data-parallel group is 1 (ep = dp)
    expert_params = 4 * expert / 2
    nonexpert_params = params - h - 4 * expert
    dp = 2 * (1 / 2) * nonexpert_params * 4 / 100e9
    optimizer = (nonexpert_params + expert_params) * 58 / 1e12
    expected = dense + moe + head + optimizer + a2a + dp
    assert expected == pytest.approx(0.0160951, rel=1e-5)  # the sum, evaluated: ≈ 16.1 ms
    out = step(design, HAND_HW, _layout(devices=2, ep=2), HAND_CAL)
    assert int(out["reason"]) == 0
    assert float(out["step_time_s"]) == pytest.approx(expected, rel=1e-9)
    assert float(out["comm_exposed_s"]) == pytest.approx(a2a + dp, rel=1e-9)


def test_korthikanti_iteration_times_within_targets(rows):
    errs = [abs(r["error_pct"]) for r in rows if r["quantity"] == "iteration_time_s"]
    assert len(errs) == 8
    assert np.mean(errs) <= 4.0
    assert max(errs) <= 10.0


def test_narayanan_tflops_within_target(rows):
    errs = [abs(r["error_pct"]) for r in rows if r["quantity"] == "tflops_per_device"]
    assert len(errs) == 16
    assert np.mean(errs) <= 10.0


def test_validation_rows_have_the_contract_keys(rows):
    for r in rows:
        assert {"case", "quantity", "unit", "predicted", "published", "error_pct", "source"} <= set(r)
        assert r["error_pct"] == pytest.approx(100 * (r["predicted"] - r["published"]) / r["published"])
        assert (r["quantity"], r["unit"]) in {("iteration_time_s", "s"), ("tflops_per_device", "TFLOP/s")}


def _best(design, devices, hw, cal):
    lays = enumerate_layouts(devices, design["layers"], design["heads"], design["kv_heads"], design["experts"],
                             design["global_batch"], hw["devices_per_node"])
    out = STEP(design, hw, {k: jnp.asarray(v, float) for k, v in lays.items()}, cal)
    i = best_layout(out)
    return i, lays, out


def test_moe_mfu_below_dense_of_equal_active_size(a100, cal):
    dense = _moe_design(1)
    moe = _moe_design(8)
    assert moe["active_params"] == pytest.approx(dense["active_params"], rel=1e-3)
    i, _, d_out = _best(dense, 64, a100, cal)
    j, _, m_out = _best(moe, 64, a100, cal)
    assert float(m_out["mfu"][j]) < float(d_out["mfu"][i])
    # and the reasons are the modelled ones: expert all-to-all, and more compute time per model FLOP
    assert float(m_out["ep_comm_s"][j]) > 0 or float(m_out["dp_comm_s"][j]) > float(d_out["dp_comm_s"][i])


def test_moe_small_experts_lower_mfu_same_layout(a100, cal):
    # same layout, more and smaller experts (same active size): lower MFU (smaller expert matrices)
    few = _moe_design(8, d_ff=8192)
    many = _moe_design(32, d_ff=2048, top_k=4)
    lay = _layout(devices=64, ep=8, microbatch=1)
    a = step(few, a100, lay, cal)
    b = step(many, a100, lay, cal)
    assert int(a["reason"]) == 0 and int(b["reason"]) == 0
    assert float(b["mfu"]) < float(a["mfu"])


_sizes = st.sampled_from([(24, 2048, 16, 8192), (32, 4096, 32, 16384), (48, 6144, 48, 24576)])


@settings(max_examples=15, deadline=None)
@given(
    size=_sizes,
    tp=st.sampled_from([1, 2, 4, 8, 16]),
    pp=st.sampled_from([1, 2, 4, 8]),
    recompute=st.sampled_from([0, 1, 2]),
    sp=st.sampled_from([0, 1]),
    factor=st.floats(1.0, 8.0),
    which=st.sampled_from(["hbm_bw_bytes_s", "intra_bw_bytes_s", "inter_bw_bytes_s"]),
)
def test_more_bandwidth_never_slows_a_step(size, tp, pp, recompute, sp, factor, which):
    L, h, a, f = size
    design = gpt_design(L, h, a, f, 51200, 2048, 512)
    lay = _layout(devices=256, tp=tp, pp=pp, microbatch=1, recompute=recompute, sequence_parallel=sp)
    hw = dict(A100_80GB_FALLBACK)
    cal = calibration(None, "a100-sxm4-80gb")
    slow = STEP(design, hw, lay, cal)
    hw[which] = hw[which] * factor
    fast = STEP(design, hw, lay, cal)
    assert float(fast["step_time_s"]) <= float(slow["step_time_s"]) * (1 + 1e-12)


@settings(max_examples=15, deadline=None)
@given(
    size=_sizes,
    tp=st.sampled_from([1, 2, 4, 8]),
    pp=st.sampled_from([2, 4, 8]),
    v=st.sampled_from([1, 2]),
    recompute=st.sampled_from([0, 1, 2]),
    mb=st.sampled_from([2, 4, 8]),
)
def test_more_microbatches_never_enlarge_bubble_fraction(size, tp, pp, v, recompute, mb):
    L, h, a, f = size
    design = gpt_design(L, h, a, f, 51200, 2048, 512)
    cal = calibration(None, "a100-sxm4-80gb")
    big = STEP(design, A100_80GB_FALLBACK, _layout(devices=256, tp=tp, pp=pp, microbatch=mb, interleave=v,
                                                   recompute=recompute), cal)
    small = STEP(design, A100_80GB_FALLBACK, _layout(devices=256, tp=tp, pp=pp, microbatch=mb // 2, interleave=v,
                                                     recompute=recompute), cal)
    frac = lambda o: float(o["bubble_s"]) / float(o["step_time_s"])  # noqa: E731
    assert frac(small) <= frac(big) + 1e-12


def _reason(design, hw, cal, **kw):
    return int(step(design, hw, _layout(**kw), cal)["reason"])


def test_infeasible_layouts_get_the_right_reason(a100, cal):
    gpt3 = gpt_design(96, 12288, 96, 49152, 51200, 2048, 1536)
    assert _reason(gpt3, a100, cal, devices=64, tp=5, pp=1) == CODE["tp_not_dividing_heads"]
    assert _reason(gpt3, a100, cal, devices=1024, tp=8, pp=128) == CODE["pp_not_dividing_layers"]  # > 96 layers
    assert _reason(gpt3, a100, cal, devices=100, tp=8, pp=8) == CODE["devices_not_divisible_by_tp_pp"]
    assert _reason(gpt3, a100, cal, devices=8, tp=8, pp=1, recompute=2) == CODE["out_of_memory"]
    assert _reason(gpt3, a100, cal, devices=64, tp=8, pp=1, microbatch=5) == CODE["microbatch_not_dividing_batch"]
    assert _reason(gpt3, a100, cal, devices=64, tp=8, pp=1, interleave=2) == CODE["interleave_invalid"]
    small_batch = dict(gpt3, global_batch=4)
    assert _reason(small_batch, a100, cal, devices=512, tp=8, pp=8) == CODE["batch_too_small_for_dp"]
    gqa = dict(gpt3, kv_heads=12)  # 8 ∤ 12 and 12 ∤ 8: neither split nor replicated
    assert _reason(gqa, a100, cal, devices=64, tp=8, pp=1) == CODE["tp_not_dividing_kv_heads"]
    moe = _moe_design(8)
    assert _reason(moe, a100, cal, devices=64, ep=3) == CODE["ep_not_dividing_experts"]
    assert _reason(moe, a100, cal, devices=12, ep=8) == CODE["ep_not_dividing_dp"]
    assert _reason(dict(moe, top_k=9), a100, cal, devices=64, ep=8) == CODE["top_k_exceeds_experts"]


def test_175b_fits_on_8_gpus_only_with_pipeline_and_sharding_or_not_at_all(a100, cal):
    gpt3 = gpt_design(96, 12288, 96, 49152, 51200, 2048, 1536)
    out = step(gpt3, a100, _layout(devices=8, tp=8, pp=1, recompute=2, shard_optimizer=0), cal)
    assert float(out["memory_bytes"]) > 80e9  # weights + gradients + Adam states alone: 18 B × 175e9 / 8


def test_vectorised_pick_equals_brute_force_loop(a100, cal):
    design = gpt_design(24, 2048, 16, 8192, 51200, 2048, 64)
    lays = enumerate_layouts(16, 24, 16, 16, 1, 64, 8, microbatches=(1, 2, 4), interleaves=(1, 2))
    vec = STEP(design, a100, {k: jnp.asarray(v, float) for k, v in lays.items()}, cal)
    i = best_layout(vec)
    best_t, best_j = math.inf, -1
    for j in range(len(lays["tp"])):  # plain Python loop, one scalar layout at a time
        one = {k: float(lays[k][j]) for k in lays}
        out = STEP(design, a100, one, cal)
        if int(out["reason"]) == 0 and float(out["step_time_s"]) < best_t:
            best_t, best_j = float(out["step_time_s"]), j
    assert i == best_j
    assert float(vec["step_time_s"][i]) == pytest.approx(best_t, rel=1e-12)


def test_float32_and_float64_agree(a100, cal):
    design = gpt_design(96, 12288, 96, 49152, 51200, 2048, 1536)
    lays = enumerate_layouts(1024, 96, 96, 96, 1, 1536, 8, microbatches=(1, 2), interleaves=(1, 2))
    d64 = {k: np.float64(v) for k, v in design.items()}
    d32 = {k: np.float32(v) for k, v in design.items()}
    h32 = {k: np.float32(v) for k, v in a100.items()}
    l64 = {k: np.asarray(v, np.float64) for k, v in lays.items()}
    l32 = {k: np.asarray(v, np.float32) for k, v in lays.items()}
    c32 = {k: np.float32(v) for k, v in cal.items()}
    o64 = STEP(d64, a100, l64, cal)
    o32 = STEP(d32, h32, l32, c32)
    assert o32["step_time_s"].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(o32["reason"]), np.asarray(o64["reason"]))
    np.testing.assert_allclose(np.asarray(o32["step_time_s"]), np.asarray(o64["step_time_s"]), rtol=1e-5)


def test_gpt3_175b_on_1024_a100_full_layout_space_evaluates(a100, cal):
    design = gpt_design(96, 12288, 96, 49152, 51200, 2048, 1536)
    lays = enumerate_layouts(1024, 96, 96, 96, 1, 1536, 8)
    assert len(lays["tp"]) > 1000
    out = STEP(design, a100, {k: jnp.asarray(v, float) for k, v in lays.items()}, cal)
    ok = np.asarray(out["reason"]) == 0
    assert ok.sum() > 0 and (~ok).sum() > 0
    for key in ("step_time_s", "mfu", "hfu", "memory_bytes", "tokens_per_s"):
        assert np.all(np.isfinite(np.asarray(out[key])[ok]))
    i = best_layout(out)
    assert 0.3 < float(out["mfu"][i]) < 0.7
    assert float(out["hfu"][i]) >= float(out["mfu"][i])


def test_step_breakdown_adds_up(a100, cal):
    design = gpt_design(96, 12288, 96, 49152, 51200, 2048, 1536)
    out = step(design, a100, _layout(devices=1024, tp=8, pp=8, microbatch=1, recompute=1, interleave=3,
                                     sequence_parallel=1, shard_optimizer=1), cal)
    total = float(out["compute_s"]) + float(out["comm_exposed_s"]) + float(out["bubble_s"])
    assert float(out["step_time_s"]) == pytest.approx(total, rel=1e-12)
    assert float(out["tokens_per_s"]) == pytest.approx(1536 * 2048 / float(out["step_time_s"]))


def test_sliding_window_score_fraction_by_hand():
    from kernels.layout import CAUSAL_FRACTION, score_fraction

    # no window, or a window as long as the sequence: the causal half
    assert float(score_fraction(4096.0, 0.0, 0.0)) == CAUSAL_FRACTION
    assert float(score_fraction(4096.0, 4096.0, 1.0)) == CAUSAL_FRACTION
    # GPT-OSS: window 128 on every second layer of a 4,096-token sequence:
    # windowed layer 128/4096 − 128²/(2·4096²) = 0.03125 − 0.00048828125 = 0.03076171875
    assert float(score_fraction(4096.0, 128.0, 1.0)) == pytest.approx(0.03076171875, rel=1e-12)
    assert float(score_fraction(4096.0, 128.0, 0.5)) == pytest.approx(0.5 * 0.5 + 0.5 * 0.03076171875, rel=1e-12)


def test_a_sliding_window_shortens_only_the_attention_core(a100, cal):
    flash_cal = {**cal, "attention_eff": 0.6}
    d = gpt_design(24, 2048, 16, 8192, 51200, 8192, 64)
    lay = _layout(devices=8, tp=8, flash_attention=1)
    full = STEP(d, a100, lay, flash_cal)
    win = STEP({**d, "sliding_window": 1024.0, "window_layers": 1.0}, a100, lay, flash_cal)
    assert float(win["step_time_s"]) < float(full["step_time_s"])
    assert float(win["tp_comm_s"]) == pytest.approx(float(full["tp_comm_s"]), rel=1e-12)
    assert float(win["memory_bytes"]) == pytest.approx(float(full["memory_bytes"]), rel=1e-12)


def test_tp_comm_overlap_hides_forward_collectives_only_inside_an_nvlink_domain(a100, cal):
    # userbuffers' GEMM/collective overlap is peer-to-peer over NVLink: overlap_eff matters for a
    # tensor-parallel group of 8 on an 8-GPU node, not for one of 16 that spans two nodes
    d = gpt_design(24, 8192, 64, 32768, 51200, 2048, 64)
    for tp, hides in ((8, True), (16, False)):
        lay = _layout(devices=tp, tp=tp, sequence_parallel=1, overlap=1)
        lo = STEP(d, a100, lay, {**cal, "overlap_eff": 0.1})
        hi = STEP(d, a100, lay, {**cal, "overlap_eff": 0.9})
        changed = float(hi["tp_comm_s"]) < float(lo["tp_comm_s"])
        assert changed == hides, tp


def test_interleaved_pipelines_hide_their_sends_under_compute_only_with_overlap(a100, cal):
    # Megatron-core overlaps p2p with the other chunk's compute in interleaved schedules only
    d = gpt_design(32, 4096, 32, 16384, 51200, 2048, 64)
    for v, hides in ((1, False), (4, True)):
        lay = _layout(devices=32, tp=4, pp=8, interleave=v, sequence_parallel=1)
        plain = STEP(d, a100, {**lay, "overlap": 0.0}, {**cal, "overlap_eff": 0.9})
        over = STEP(d, a100, {**lay, "overlap": 1.0}, {**cal, "overlap_eff": 0.9})
        assert float(plain["pp_comm_s"]) > 0
        assert (float(over["pp_comm_s"]) < float(plain["pp_comm_s"])) == hides, v
