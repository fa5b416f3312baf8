"""Issue 17: throughput and memory for today's runs (H100/H200/B200/GB200, FP8, MoE with expert
parallelism, ZeRO/FSDP, context parallelism, uneven pipelines), calibrated on a modern public set
and on a user's own runs, and the goodput that turns ideal step time into booked device-hours."""

import copy
import json
import math
import re
from dataclasses import replace
import tomllib
from pathlib import Path

import numpy as np
import pytest

import hardware_db
from kernels.reasons import CODE
from sweep.calibration import calibration_for
from sweep.calibrate import (FITTABLE, batch, calibration_toml, fit, load_runs, packaged_constants,
                             packaged_predictions, predict)
from sweep.cli import main
from sweep.estimate import evaluate
from sweep.layouts import best_layouts
from sweep.spec import load_estimate, resolve
from sweep.validate_layout import layout_validation_rows

HERE = Path(hardware_db.__file__).parent
LLAMA_405B = {
    "layers": 126, "d_model": 16384, "heads": 128, "kv_heads": 8, "d_ff": 53248, "ffn": "swiglu", "vocab": 128256,
    "seq_len": 8192, "dropout": False, "tokens": 15.6e12, "global_batch": 2048, "hardware": "h100-sxm5-80gb",
    "region": "us",
}
DEEPSEEK_V3_LIKE = {  # 61 layers (3 dense), 256 routed experts top-8 + 1 shared, MLA read as 128 heads × 128
    "layers": 61, "d_model": 7168, "heads": 128, "kv_heads": 128, "head_dim": 128, "d_ff": 18432, "ffn": "swiglu",
    "vocab": 129280, "seq_len": 4096, "dropout": False, "experts": 256, "top_k": 8, "shared_experts": 1,
    "expert_d_ff": 2048, "first_dense_layers": 3, "tokens": 14.8e12, "global_batch": 15360,
    "hardware": "h800-sxm5-80gb", "devices": 2048, "region": "cn", "precision": "fp8",
}


@pytest.fixture(scope="module")
def db():
    return hardware_db.load()


@pytest.fixture(scope="module")
def modern(db):
    doc = tomllib.loads((HERE / "throughput_runs_modern.toml").read_text())
    return doc, *load_runs(doc, db, "throughput_runs_modern.toml")


def test_modern_set_has_25_or_more_cited_runs_dense_and_moe_bf16_and_fp8_on_three_gpu_generations(modern):
    doc, runs, _ = modern
    rows = doc["run"]
    assert len(runs) >= 25
    assert all(r.get("source") and r.get("licence") for r in rows)
    assert all(r["peak_ref"] in ("bf16_dense", "fp8_dense", "none") for r in rows)
    assert {r.kind for r in runs} == {"dense", "moe"} and {r.precision for r in runs} == {"bf16", "fp8"}
    hardware = {r.hardware for r in runs}
    assert {"h100-sxm5-80gb", "b200-sxm-180gb", "gb200-nvl72"} <= hardware


def test_every_modern_run_is_feasible_with_its_published_layout(db, modern):
    _, runs, _ = modern
    rows = packaged_predictions(db, runs)
    assert [r["id"] for r in rows if not r["feasible"]] == []


def test_every_a100_run_stays_feasible_and_accurate(db):
    rows = layout_validation_rows(db)
    assert all(r["feasible"] for r in rows)
    for quantity in ("iteration_time_s", "tflops_per_device"):
        err = [abs(r["error_pct"]) for r in rows if r["quantity"] == quantity]
        assert np.mean(err) <= 4.0 and max(err) <= 10.0


def test_modern_set_error_with_packaged_constants_is_bounded(db, modern):
    # The targets are mean <= 10 %, max <= 25 % per kind: measured dense 5.5 % (max 14.5 %),
    # MoE 8.0 % (max 24.9 %, Qwen3-30B on 16 H100 in 25.11: close to the bound; README: Accuracy)
    _, runs, _ = modern
    rows = packaged_predictions(db, runs)
    for kind, mean_bound, max_bound in (("dense", 10.0, 25.0), ("moe", 10.0, 25.0)):
        err = [abs(r["error_pct"]) for r in rows if r["kind"] == kind]
        assert np.mean(err) <= mean_bound and max(err) <= max_bound, (kind, np.mean(err), max(err))


def test_fit_moves_a_class_constant_only_where_runs_measure_it(db, modern):
    # gemm_eff_max (16-bit GEMMs) is measured by dense 16-bit runs: the H100 class has Meta's three,
    # B200 and GB200 none (their 16-bit runs are MoE), so the fit does not move theirs
    _, runs, _ = modern
    res = fit(db, runs, constants=("gemm_eff_max",), shared=(), leave_one_out=False)
    assert "gemm_eff_max" in res["constants"]["h100"]
    assert "gemm_eff_max" not in res["constants"]["b200"] and "gemm_eff_max" not in res["constants"]["gb200"]


def test_a_class_no_runs_measure_takes_its_benchmark_times_the_measured_classes_ratio(db, modern):
    # calibration.toml gives each class's MAMF figure as gemm_eff_max's benchmark: H100 0.803,
    # B200 0.776, GB200 0.729 (S. Bekman's MAMF table). With H100's fitted value f, B200 gets
    # 0.776 · f / 0.803 and GB200 0.729 · f / 0.803; the A100 class, without a benchmark, keeps its own
    _, runs, _ = modern
    res = fit(db, runs, constants=("gemm_eff_max",), shared=(), leave_one_out=False)
    f = res["constants"]["h100"]["gemm_eff_max"]
    assert res["derived"]["b200"]["gemm_eff_max"] == pytest.approx(0.776 * f / 0.803, rel=1e-9)
    assert res["derived"]["gb200"]["gemm_eff_max"] == pytest.approx(0.729 * f / 0.803, rel=1e-9)
    assert "h100" not in res["derived"]
    # and the calibration file says which values are derived
    text = calibration_toml(res, db, "runs.toml")
    b200 = tomllib.loads(text)["class"]["b200"]["gemm_eff_max"]
    assert b200["value"] == pytest.approx(0.776 * f / 0.803, rel=1e-9) and b200["source"].startswith("derived")


def test_packaged_blackwell_gemm_efficiency_is_its_benchmark_times_h100s_fitted_ratio(db):
    from sweep.calibration import calibration_for
    h100, b200, gb200 = (calibration_for(db, h)["gemm_eff_max"] for h in ("h100-sxm5-80gb", "b200-sxm-180gb",
                                                                          "gb200-nvl72"))
    assert b200 == pytest.approx(0.776 * h100 / 0.803, rel=1e-5)
    assert gb200 == pytest.approx(0.729 * h100 / 0.803, rel=1e-5)


def _synthetic_runs(db, modern, truth):
    """The modern runs with their published value replaced by the model's own prediction under known
    constants: a fit must recover them."""
    _, runs, _ = modern
    runs = [r for r in runs if r.cls == "h100"][:12]
    b = batch(runs)
    cal = {k: np.asarray(v) for k, v in packaged_constants(db, runs).items()}
    for k, v in truth.items():
        cal[k] = np.full_like(cal[k], v)
    pred = np.asarray(predict(b, cal)[0])
    return [replace(r, published=float(p)) for r, p in zip(runs, pred)]


def test_calibrate_recovers_constants_the_runs_were_made_with(db, modern):
    truth = {"gemm_eff_fp8": 0.55, "overlap_eff": 0.7}
    runs = _synthetic_runs(db, modern, truth)
    res = fit(db, runs, constants=tuple(truth), shared=("overlap_eff",), leave_one_out=True)
    got = res["constants"]["h100"]
    assert got["gemm_eff_fp8"] == pytest.approx(0.55, abs=0.01)
    assert res["summary"]["all"]["error"]["mean"] < 0.5
    assert res["summary"]["all"]["loo_error"]["mean"] < 1.0  # held-out runs predicted as well


def test_fittable_constants_are_fractions_or_seconds():
    assert set(FITTABLE.values()) == {"fraction", "seconds"}


@pytest.mark.parametrize("devices, published_mfu, tolerance", [(8192, 0.43, 0.10), (16384, 0.41, 0.10)])
def test_layouts_best_405b_layout_is_near_metas_mfu(db, devices, published_mfu, tolerance):
    # Llama 3 paper Table 4: BF16 MFU 43 % on 8,192 H100 and 41 % on 16,384 (TP 8, PP 16); the
    # issue asks for 10 % (README: Accuracy)
    v = load_estimate_dict({**LLAMA_405B, "devices": devices}, db)
    res = best_layouts(v, db, top=3)
    assert res["feasible"] > 0 and res["layouts"], devices
    assert abs(res["layouts"][0]["mfu"] - published_mfu) / published_mfu <= tolerance


def test_layouts_best_deepseek_v3_like_layout_is_within_10_percent_of_the_reports_mfu(db, modern):
    # the published MFU, in the layout model's FLOP convention: DeepSeek-V3's tokens/s per H800
    # (report: 2.664 M GPU-hours for 14.8 T tokens) × model FLOPs per token / FP8 peak
    doc, runs, _ = modern
    run = next(r for r in runs if r.id == "deepseekv3-report-pretrain-h800")
    published_mfu = run.published * float(batch([run]).flops_per_token[0]) / run.hw["peak_flops"]
    v = load_estimate_dict(DEEPSEEK_V3_LIKE, db)
    res = best_layouts(v, db, top=3)
    assert res["feasible"] > 0 and res["layouts"]
    assert abs(res["layouts"][0]["mfu"] - published_mfu) / published_mfu <= 0.10


def test_metas_405b_layout_is_feasible_tp8_pp16_with_kv_heads_replicated_uneven_stages(db):
    # 126 layers on 16 stages (7 on the end stages, 8 between) and 8 KV heads at TP 8: Meta's layout
    out = evaluate({**LLAMA_405B, "devices": 16384, "tp": 8, "pp": 16}, db)
    assert out["reason"] == 0 and out["tp"] == 8 and out["pp"] == 16
    assert out["memory_gb"] < 80.0


BLOOM = {  # Le Scao et al. 2022: 70 layers, d_model 14336, 112 heads, vocab 250880; TP 4 x PP 12 x DP 8 on 384 A100
    "layers": 70, "d_model": 14336, "heads": 112, "d_ff": 57344, "ffn": "gelu", "vocab": 250880, "seq_len": 2048,
    "tokens": 366e9, "global_batch": 2048, "hardware": "a100-sxm4-80gb", "devices": 384, "region": "fr",
}


def test_a_pipeline_degree_that_does_not_divide_the_layers_splits_them_unevenly(db):
    # BLOOM's 70 layers on 12 stages: ten stages of 6 layers and two of 5 (stage_layers), not infeasible
    out = evaluate({**BLOOM, "tp": 4, "pp": 12}, db)
    assert out["reason"] == 0 and (out["tp"], out["pp"], out["dp"]) == (4, 12, 8)
    assert out["mfu"] > 0 and out["memory_gb"] < 80.0


def test_given_layout_keys_no_layout_can_have_are_reported_with_their_reason(db):
    # 80 stages for 70 layers: one stage would hold no layer. Before, no candidate remained and the
    # estimate printed no MFU and no reason
    out = evaluate({**BLOOM, "tp": 4, "pp": 80}, db)
    assert out["reason"] == CODE["pp_not_dividing_layers"] and out["mfu"] is None


def test_a_given_layout_outside_the_enumeration_is_evaluated_as_given(db):
    # tp = 28 (it divides the 112 heads) spans 3.5 nodes of 8 GPUs, beyond the enumeration's two nodes:
    # evaluated as given (feasible or with its reason), not dropped
    out = evaluate({**BLOOM, "devices": 336, "tp": 28, "pp": 12}, db)
    assert (out["tp"], out["pp"], out["dp"]) == (28, 12, 1)
    assert out["reason"] in (0, CODE["out_of_memory"]) and (out["mfu"] is not None) == (out["reason"] == 0)


def test_partial_layout_fixes_the_given_keys_and_optimises_the_rest(db):
    fixed_rest = evaluate({**LLAMA_405B, "devices": 16384, "tp": 8, "pp": 16, "microbatch": 1, "recompute": "full",
                           "interleave": 1, "shard_optimizer": True, "sequence_parallel": True, "ep": 1}, db)
    partial = evaluate({**LLAMA_405B, "devices": 16384, "tp": 8, "pp": 16}, db)
    assert (partial["tp"], partial["pp"]) == (8, 16)
    assert partial["step_time_s"] <= fixed_rest["step_time_s"]  # the optimiser's pick is never worse


def test_goodput_turns_ideal_time_into_booked_time_by_hand(db):
    base = {"params": 7e9, "tokens": 1e12, "hardware": "h100-sxm5-80gb", "devices": 1024, "mfu": 0.4,
            "carbon_intensity": 0.4, "pue": 1.2}
    ideal = evaluate(base, db)
    booked = evaluate({**base, "goodput": 0.8}, db)
    # hand: 6 × 7e9 × 1e12 FLOP / (1024 × 989.5e12 FLOP/s × 0.4) = 103,621 s ideal; / 0.8 booked
    seconds = 6 * 7e9 * 1e12 / (1024 * 989.5e12 * 0.4)
    assert ideal["train_days"] == pytest.approx(seconds / 86400, rel=1e-9)
    assert booked["train_days"] == pytest.approx(seconds / 0.8 / 86400, rel=1e-9)
    assert booked["energy_mwh"] == pytest.approx(ideal["energy_mwh"] / 0.8, rel=1e-9)
    assert booked["tokens_per_s"] == pytest.approx(ideal["tokens_per_s"], rel=1e-12)  # productive throughput


def test_goodput_default_applies_when_the_layout_model_sets_the_time(db):
    spec = {**LLAMA_405B, "devices": 16384, "tp": 8, "pp": 16, "microbatch": 1, "recompute": "selective",
            "interleave": 4, "shard_optimizer": True, "sequence_parallel": True, "ep": 1}
    default = evaluate(spec, db)
    one = evaluate({**spec, "goodput": 1.0}, db)
    assert default["goodput"] == pytest.approx(db.default("goodput"))
    assert default["train_days"] == pytest.approx(one["train_days"] / db.default("goodput"), rel=1e-9)


SMALL_MOE = {"layers": 4, "d_model": 1024, "heads": 8, "d_ff": 2048, "ffn": "swiglu", "vocab": 32000,
             "seq_len": 2048, "dropout": False, "experts": 8, "top_k": 2, "tokens": 1e9, "global_batch": 8,
             "hardware": "h100-sxm5-80gb", "devices": 1, "tp": 1, "pp": 1, "ep": 1, "microbatch": 1,
             "recompute": "none", "region": "us"}


def test_a_host_syncing_dispatcher_costs_its_latency_per_moe_layer_and_micro_batch_by_hand(db):
    # one device, no communication: the step grows by exactly micro-batches × MoE layers × the
    # calibrated sync latency (hand: 8 sequences / 1 per micro-batch = 8 micro-batches × 4 layers)
    sync_s = calibration_for(db, "h100-sxm5-80gb")["moe_sync_latency_s"]
    free = evaluate(SMALL_MOE, db)
    synced = evaluate({**SMALL_MOE, "moe_host_sync": True}, db)
    assert sync_s > 0 and free["reason"] == synced["reason"] == 0
    assert synced["step_time_s"] - free["step_time_s"] == pytest.approx(8 * 4 * sync_s, rel=1e-9)


def test_one_gemm_per_local_expert_costs_its_latency_per_expert_layer_and_micro_batch_by_hand(db):
    # one device holds all 8 experts: 8 micro-batches × 4 MoE layers × 8 local experts × the
    # calibrated per-expert latency, and nothing else changes
    latency_s = calibration_for(db, "h100-sxm5-80gb")["moe_expert_latency_s"]
    grouped = evaluate(SMALL_MOE, db)
    per_expert = evaluate({**SMALL_MOE, "gemm_per_expert": True}, db)
    assert latency_s > 0 and grouped["reason"] == per_expert["reason"] == 0
    assert per_expert["step_time_s"] - grouped["step_time_s"] == pytest.approx(8 * 4 * 8 * latency_s, rel=1e-9)


def test_an_fp8_run_adds_the_per_expert_quantisation_latency_by_hand(db):
    # FP8: Transformer Engine's GroupedLinear quantises each expert's slice apart, so each local
    # expert costs the BF16 latency + moe_expert_fp8_latency_s: 8 micro-batches × 4 MoE layers × 8
    # local experts × (both latencies)
    cal = calibration_for(db, "h100-sxm5-80gb")
    latency_s = cal["moe_expert_latency_s"] + cal["moe_expert_fp8_latency_s"]
    fp8 = {**SMALL_MOE, "precision": "fp8"}
    grouped = evaluate(fp8, db)
    per_expert = evaluate({**fp8, "gemm_per_expert": True}, db)
    assert cal["moe_expert_fp8_latency_s"] > 0 and grouped["reason"] == per_expert["reason"] == 0
    assert per_expert["step_time_s"] - grouped["step_time_s"] == pytest.approx(8 * 4 * 8 * latency_s, rel=1e-9)


def test_the_alltoall_dispatcher_sorts_tokens_by_local_expert_and_back_by_hand(db):
    # one device holds all 8 experts, so Megatron-core's alltoall dispatcher copies every routed
    # token once more each way (sort_chunks_by_idxs): 4 elements of d_model per token copy forward,
    # 3x with the backward, in bf16 at H100's 3,350 GB/s x hbm_eff, which a flex dispatcher
    # (ep_dedup) does not: 8 micro-batches x 4 layers x 3 x 4 x top-2 x 1,024 x 2,048 tokens x the
    # busiest expert's load (moe_imbalance) x 2 bytes
    cal = calibration_for(db, "h100-sxm5-80gb")
    hbm_eff, imb = cal["hbm_eff"], cal["moe_imbalance"]
    alltoall = evaluate(SMALL_MOE, db)
    flex = evaluate({**SMALL_MOE, "ep_dedup": True}, db)
    assert alltoall["reason"] == flex["reason"] == 0
    extra_s = 8 * 4 * 3 * (4 * 2 * 1024 * 2048 * imb) * 2 / (3350e9 * hbm_eff)
    assert alltoall["step_time_s"] - flex["step_time_s"] == pytest.approx(extra_s, rel=1e-9)
    # with one expert per device there is nothing to sort (and inside one node no all-to-all to dedup)
    one = {**SMALL_MOE, "devices": 8, "ep": 8, "global_batch": 64}
    assert evaluate(one, db)["step_time_s"] == pytest.approx(evaluate({**one, "ep_dedup": True}, db)["step_time_s"],
                                                          rel=1e-12)


def test_megatron_runs_launch_one_gemm_per_local_expert_and_deepseeks_own_stack_does_not(modern):
    # Megatron-core's TEGroupedMLP (NeMo, Megatron-Bridge) against DeepSeek's HAI-LLM (DeepGEMM)
    _, runs, _ = modern
    flag = {r.id: float(r.layouts["gemm_per_expert"][0]) for r in runs if r.kind == "moe"}
    assert flag.pop("deepseekv3-report-pretrain-h800") == 0.0
    assert set(flag.values()) == {1.0}


def test_per_node_dedup_shortens_an_expert_all_to_all_across_nodes(db):
    spec = {**DEEPSEEK_V3_LIKE, "tp": 1, "pp": 16, "ep": 64, "microbatch": 1, "recompute": "full", "interleave": 1}
    copies = evaluate(spec, db)
    dedup = evaluate({**spec, "ep_dedup": True}, db)
    assert copies["reason"] == dedup["reason"] == 0
    assert dedup["step_time_s"] < copies["step_time_s"]


def test_a_modern_moe_run_written_as_a_spec_predicts_what_validate_predicts(db, modern):
    # Qwen3-235B-A22B on 256 H100, FP8, Megatron-Bridge 26.04 (alltoall dispatcher, a2a overlap,
    # Transformer Engine's GEMM per local expert, force-balanced routing): the spec's keys express the
    # row's layout, dispatcher and grouped GEMM
    _, runs, _ = modern
    row = next(p for p in packaged_predictions(db, runs) if p["id"] == "mb260401-qwen3-235b-h100-fp8")
    spec = {"layers": 94, "d_model": 4096, "heads": 64, "kv_heads": 4, "head_dim": 128, "d_ff": 1536,
            "ffn": "swiglu", "vocab": 151936, "seq_len": 4096, "experts": 128, "top_k": 8, "expert_d_ff": 1536,
            "dropout": False, "tokens": 1e12, "global_batch": 8192, "precision": "fp8",
            "hardware": "h100-sxm5-80gb", "devices": 256, "tp": 2, "pp": 8, "interleave": 4, "ep": 32, "etp": 1,
            "microbatch": 1, "recompute": "none", "ep_overlap": True, "moe_imbalance": 1.0,
            "moe_host_sync": True, "gemm_per_expert": True, "region": "us"}
    out = evaluate(spec, db)
    per_device = out["tokens_per_s"] / 256
    assert per_device == pytest.approx(row["predicted"], rel=0.01)
    # without the host sync the spec would be the faster flex-like dispatcher
    assert evaluate({**spec, "moe_host_sync": False}, db)["tokens_per_s"] > out["tokens_per_s"]


def load_estimate_dict(values, db):
    return resolve("<spec>", values, db)


SPEC = """
[model]
layers = 32
d_model = 4096
heads = 32
kv_heads = 8
d_ff = 14336
ffn = "swiglu"
vocab = 128256
seq_len = 8192
[training]
tokens = 1e12
global_batch = 512
precision = "{precision}"
[cluster]
hardware = "{hardware}"
devices = 64
{extra}
[site]
region = "us"
"""


def _spec(tmp_path, precision="bf16", hardware="h100-sxm5-80gb", extra=""):
    path = tmp_path / "run.toml"
    path.write_text(SPEC.format(precision=precision, hardware=hardware, extra=extra))
    return path


@pytest.mark.parametrize("extra,key", [("goodput = -0.5", "goodput"), ("goodput = 1.5", "goodput"),
                                      ("cp = 3", "cp"), ("zero_stage = 4", "zero_stage"),
                                      ("zero_stage = 0\nshard_optimizer = true", "zero_stage"),
                                      ("moe_host_sync = 3", "moe_host_sync"), ('ep_dedup = "yes"', "ep_dedup"),
                                      ("gemm_per_expert = 2", "gemm_per_expert")])
def test_bad_new_keys_are_spec_errors_naming_the_key(tmp_path, capsys, extra, key):
    code = main(["estimate", str(_spec(tmp_path, extra=extra))])
    err = capsys.readouterr().err
    assert code == 2 and f"[cluster] {key}" in err and "Traceback" not in err


def test_fp8_on_hardware_without_an_fp8_peak_is_a_spec_error(tmp_path, capsys):
    code = main(["estimate", str(_spec(tmp_path, precision="fp8", hardware="a100-sxm4-80gb"))])
    err = capsys.readouterr().err
    assert code == 2 and "precision" in err and "fp8" in err


def _run(run_id, tokens, model, layout):
    """One [[run]] of a runs file (H100, FP8, NeMo), its tokens/s a format field."""
    return (f'[[run]]\nid = "{run_id}"\nsource = "test"\nhardware = "h100-sxm5-80gb"\nprecision = "fp8"\n'
            f'framework = "NeMo"\npublished_tokens_per_s_per_device = {tokens}\nmodel = {{{{ {model} }}}}\n'
            f'layout = {{{{ {layout}, microbatch = 1, global_batch = 128, recompute = "none", '
            f'distributed_optimizer = true, fsdp = false }}}}\n')


RUNS = "\n" + _run("a", "{a}", "layers = 32, d_model = 4096, heads = 32, kv_heads = 8, head_dim = 128, d_ff = 14336, "
                    'ffn = "swiglu", vocab = 128256, seq_len = 8192',
                    "devices = 8, tp = 1, pp = 1, cp = 1, vp = 1, ep = 1") + "\n" + \
    _run("b", "{b}", "layers = 80, d_model = 8192, heads = 64, kv_heads = 8, head_dim = 128, d_ff = 28672, "
         'ffn = "swiglu", vocab = 128256, seq_len = 8192', "devices = 64, tp = 4, pp = 4, cp = 1, vp = 5, ep = 1")


def test_calibrate_command_writes_a_file_that_spec_and_db_folder_both_use(tmp_path, capsys, db):
    runs = tmp_path / "runs.toml"
    runs.write_text(RUNS.format(a=9000.0, b=1100.0))
    out = tmp_path / "cal" / "calibration.toml"
    out.parent.mkdir()
    code = main(["calibrate", str(runs), "--fit", "gemm_eff_fp8", "--no-loo", "--out", str(out), "--json", "--quiet"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0 and out.exists() and res["written"] == str(out)
    fitted = res["constants"]["h100"]["gemm_eff_fp8"]
    assert tomllib.loads(out.read_text())["class"]["h100"]["gemm_eff_fp8"]["value"] == pytest.approx(fitted)
    spec = _spec(tmp_path, precision="fp8", extra=f'calibration = "{out}"')
    with_spec = evaluate(load_estimate(spec, db), db, file=spec)
    with_db = evaluate(load_estimate(_spec(tmp_path, precision="fp8"), db), hardware_db.load(out.parent))
    packaged = evaluate(load_estimate(_spec(tmp_path, precision="fp8"), db), db)
    assert with_spec["mfu"] == pytest.approx(with_db["mfu"], rel=1e-12)
    assert with_spec["mfu"] != pytest.approx(packaged["mfu"], rel=1e-3)


def test_calibrate_refuses_to_overwrite_and_names_bad_runs(tmp_path, capsys):
    runs = tmp_path / "runs.toml"
    runs.write_text(RUNS.format(a=9000.0, b=-3.0))
    out = tmp_path / "c.toml"
    assert main(["calibrate", str(runs), "--out", str(out), "--no-loo"]) == 2
    err = capsys.readouterr().err
    assert "run 2 (b)" in err and "published_tokens_per_s_per_device" in err and not out.exists()
    out.write_text("x = 1\n")
    runs.write_text(RUNS.format(a=9000.0, b=1100.0))
    assert main(["calibrate", str(runs), "--out", str(out), "--no-loo"]) == 2
    assert "--force" in capsys.readouterr().err


def test_calibrate_out_naming_a_folder_is_an_error_before_the_fit_even_with_force(tmp_path, capsys):
    runs = tmp_path / "runs.toml"
    runs.write_text(RUNS.format(a=9000.0, b=1100.0))
    folder = tmp_path / "cal"
    folder.mkdir()
    assert main(["calibrate", str(runs), "--out", str(folder), "--force", "--no-loo"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "is a folder" in err and "Traceback" not in err
    assert sorted(tmp_path.iterdir()) == sorted([runs, folder])  # no .tmp file left beside it
    assert not any(folder.iterdir())


@pytest.mark.parametrize("section, entry, key, says", [
    ("layout", "micro_batch = 2", "layout.micro_batch", "did you mean 'microbatch'"),
    ("model", "n_layers = 32", "model.n_layers", "did you mean 'layers'"),
    ("run", 'hw = "h100"', "hw", "is not a runs-file key"),
    ("layout", 'fsdp = "true"', "layout.fsdp", "must be true or false"),
    ("layout", 'moe_a2a_overlap = "false"', "layout.moe_a2a_overlap", "must be true or false"),
    ("layout", "overlap = 1", "layout.overlap", "must be true or false"),
    ("model", 'tied_embeddings = "no"', "model.tied_embeddings", "must be true or false"),
    ("layout", 'cp_comm_type = "ring"', "layout.cp_comm_type", "p2p, all_gather"),
    ("layout", 'moe_dispatcher = "deep_ep"', "layout.moe_dispatcher", "alltoall, flex, deepep, hybridep"),
    ("layout", 'cuda_graphs = "full-iteration"', "layout.cuda_graphs", "full_iteration"),
    ("layout", 'moe_imbalance = "high"', "layout.moe_imbalance", "number >= 1"),
    ("layout", "dp = 4", "layout.dp", "devices / (tp · pp · cp) = 8"),
    ("layout", 'distributed_optimizer = "yes"', "layout.distributed_optimizer", "'unknown'"),
    ("layout", "ep_overlap = true, moe_a2a_overlap = false", "layout.ep_overlap", "give one"),
    ("run", 'kind = "MoE"', "kind", "allowed: dense, moe"),
    ("model", "mla = true", "model.mla", "must be a table"),
    ("model", 'mla = { v_head_dim = "128" }', "model.mla.v_head_dim", "positive number"),
])
def test_a_runs_file_key_the_loader_would_ignore_or_misread_is_an_error_naming_it(tmp_path, capsys, section, entry,
                                                                                  key, says):
    # before: a misspelt key was ignored (the run fitted with a default in its place), the string
    # "false" read as true, fsdp = "true" as false, and "yes" for a number raised a traceback
    text = RUNS.format(a=9000.0, b=1100.0)
    name = entry.split(" = ")[0]
    if f" {name} = " in text:  # the template has the key: replace its value in run 1
        text = re.sub(rf" {name} = [^,}}]+", " " + entry, text, count=1)
    else:
        where = {"layout": "devices = 8, tp = 1", "model": "layers = 32,", "run": 'source = "test"'}[section]
        text = text.replace(where, f"{entry}, {where}" if section != "run" else f"{entry}\n{where}", 1)
    runs, out = tmp_path / "runs.toml", tmp_path / "c.toml"
    runs.write_text(text)
    assert main(["calibrate", str(runs), "--out", str(out), "--no-loo"]) == 2
    err = capsys.readouterr().err
    assert f"run 1 (a)] {key}:" in err and says in err and "Traceback" not in err
    assert not out.exists()


def test_a_runs_file_may_use_the_specs_names_for_the_overlap_and_cuda_graph_switches(db, modern):
    doc, _, _ = modern
    row = next(r for r in doc["run"] if r["layout"].get("moe_a2a_overlap") is True)
    spec_names = copy.deepcopy(row)
    del spec_names["layout"]["moe_a2a_overlap"]
    spec_names["layout"].update(ep_overlap=True, cuda_graphs=True)
    megatron_names = copy.deepcopy(row)
    megatron_names["layout"]["cuda_graphs"] = "on (per-layer)"
    (a,), _ = load_runs({"run": [spec_names]}, db)
    (b,), _ = load_runs({"run": [megatron_names]}, db)
    assert a.layouts["ep_overlap"][0] == 1.0 and a.layouts["cuda_graphs"][0] == 1.0
    assert {k: list(v) for k, v in a.layouts.items()} == {k: list(v) for k, v in b.layouts.items()}


def _strict(text):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_validate_and_calibrate_json_stay_json_with_an_infeasible_run_and_no_leave_one_out(db, tmp_path, capsys,
                                                                                          monkeypatch):
    # a run infeasible with its published layout has no prediction, and --no-loo leaves the
    # leave-one-out errors undefined: both come out as null, not NaN
    import sweep.cli
    from sweep.validate_layout import HELDOUT_FSDP, modern_validation_rows

    rows = modern_validation_rows(db, HELDOUT_FSDP, "heldout_fsdp")[:2]
    rows[0] = {**rows[0], "predicted": math.nan, "error_pct": math.nan}
    monkeypatch.setattr(sweep.cli, "validation_rows", lambda db: rows)
    assert main(["validate", "--json"]) == 0
    printed = _strict(capsys.readouterr().out)
    assert printed[0]["predicted"] is None and printed[0]["error_pct"] is None and printed[1]["predicted"] > 0
    runs = tmp_path / "runs.toml"
    runs.write_text(RUNS.format(a=9000.0, b=1100.0))
    assert main(["calibrate", str(runs), "--fit", "gemm_eff_fp8", "--no-loo", "--out", str(tmp_path / "c.toml"),
                 "--json", "--quiet"]) == 0
    res = _strict(capsys.readouterr().out)
    assert res["summary"]["all"]["loo_error"]["mean"] is None


def test_validate_shows_the_modern_rows(db):
    from sweep.validate import validation_rows

    rows = validation_rows(db)
    modern = [r for r in rows if r.get("set") == "modern"]
    assert len(modern) >= 25 and all(math.isfinite(r["error_pct"]) for r in modern)
    assert {r.get("set") for r in rows if r["case"].endswith(("(dense)", "(moe)"))} == {"modern", "heldout",
                                                                                      "heldout_fsdp"}


def test_a_sliding_window_in_the_spec_shortens_a_long_sequence_run(db):
    # Mistral-style: every layer attends to the last 4,096 of 32,768 tokens; attention dominates
    # less, so the step is shorter, with the same model FLOPs counted for MFU (full causal)
    spec = {**LLAMA_405B, "layers": 32, "d_model": 4096, "heads": 32, "d_ff": 14336, "seq_len": 32768,
            "global_batch": 128, "devices": 64, "tp": 8, "pp": 1, "cp": 1, "microbatch": 1, "recompute": "selective"}
    full = evaluate(spec, db)
    win = evaluate({**spec, "sliding_window": 4096}, db)
    half = evaluate({**spec, "sliding_window": 4096, "window_layers": 0.5}, db)
    assert win["train_days"] < half["train_days"] < full["train_days"]
    assert win["reason"] == full["reason"] == 0


@pytest.mark.parametrize("extra,key", [("sliding_window = -1", "sliding_window"),
                                      ("window_layers = 1.5", "window_layers")])
def test_bad_sliding_window_keys_are_spec_errors_naming_the_key(tmp_path, capsys, extra, key):
    path = tmp_path / "run.toml"
    path.write_text(SPEC.format(precision="bf16", hardware="h100-sxm5-80gb", extra="").replace(
        "seq_len = 8192", "seq_len = 8192\n" + extra))
    code = main(["estimate", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and f"[model] {key}" in err and "Traceback" not in err


def test_validate_reports_the_modern_set_by_kind_with_the_fits_leave_one_out_error(capsys, monkeypatch):
    import sweep.cli
    from sweep.validate_layout import modern_validation_rows

    monkeypatch.setattr(sweep.cli, "validation_rows", modern_validation_rows)  # the other sets are slow
    assert main(["validate"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("modern set"))
    assert "dense 37 runs: mean" in line and "MoE 28 runs: mean" in line
    assert "leave-one-out mean abs. error dense" in line  # as the packaged fit recorded it


def test_a_one_run_file_fits_the_general_constants_but_not_one_that_needs_two_measuring_runs(db, modern):
    _, runs, _ = modern
    one = [r for r in runs if r.id == "llama3-paper-405b-16384gpu-cp1"]
    res = fit(db, one, constants=("attention_eff", "gemm_eff_max"), shared=(), leave_one_out=False)
    assert set(res["constants"]["h100"]) == {"attention_eff"}  # one dense BF16 run: gemm_eff_max stays


@pytest.mark.parametrize("key", ["moe_host_sync", "gemm_per_expert"])
def test_a_grid_over_the_dispatcher_or_expert_gemm_gives_what_estimate_gives_for_each_value(db, key):
    from sweep.engine import run

    model = {k: SMALL_MOE[k] for k in ("layers", "d_model", "heads", "d_ff", "ffn", "vocab", "seq_len", "dropout",
                                       "experts", "top_k")}
    cluster = {k: SMALL_MOE[k] for k in ("hardware", "devices", "tp", "pp", "ep", "microbatch", "recompute")}
    doc = {"model": model, "training": {"tokens": 1e9, "global_batch": 8}, "cluster": cluster,
           "site": {"region": "us"}, "grid": {key: [False, True]}, "study": {"name": "dispatcher"}}
    ds = run(doc, write=False).dataset
    for flag in (False, True):
        one = evaluate({**SMALL_MOE, key: flag}, db)
        assert float(ds.step_time_s.sel({key: flag})) == pytest.approx(one["step_time_s"], rel=1e-6)


def test_whole_layer_cuda_graphs_remove_the_per_layer_latencies_by_hand(db):
    # one device: the graphed step is the synced one less 8 micro-batches × 4 MoE layers × (the MoE
    # layer latency + the host sync + 8 local experts × the per-expert GEMM latency); the H100 class
    # has no dense layer latency
    cal = calibration_for(db, "h100-sxm5-80gb")
    per_layer_s = cal["moe_layer_latency_s"] + cal["moe_sync_latency_s"] + 8 * cal["moe_expert_latency_s"]
    assert cal.get("layer_latency_s", 0.0) == 0.0 and cal["moe_expert_latency_s"] > 0
    launched = {**SMALL_MOE, "moe_host_sync": True, "gemm_per_expert": True}
    synced = evaluate(launched, db)
    graphed = evaluate({**launched, "cuda_graphs": True}, db)
    assert synced["step_time_s"] - graphed["step_time_s"] == pytest.approx(8 * 4 * per_layer_s, rel=1e-9)


@pytest.mark.parametrize("cuda_graphs,whole", [("full_iteration (preset)", 1.0), ("on (CSV)", 1.0),
                                               ("local scope full_iteration", 1.0),
                                               ("transformer_engine scope ['attn', 'moe_router']", 0.0),
                                               ("none set by preset", 0.0)])
def test_a_runs_cuda_graphs_field_counts_as_whole_layers_only_for_full_or_per_layer_capture(db, modern, cuda_graphs,
                                                                                             whole):
    doc, _, _ = modern
    row = copy.deepcopy(next(r for r in doc["run"] if r["id"] == "mb260401-qwen3-235b-b200-mxfp8"))  # alltoall
    row["layout"]["cuda_graphs"] = cuda_graphs
    (run,), _ = load_runs({"run": [row]}, db, "runs.toml")
    assert run.layouts["cuda_graphs"][0] == whole
    assert run.layouts["moe_host_sync"][0] == 1.0 - whole  # graphed MoE layers do not synchronise


def test_the_held_out_release_is_feasible_and_reported_by_validate(db, capsys, monkeypatch):
    import sweep.cli
    from sweep.validate_layout import HELDOUT, modern_validation_rows

    rows = modern_validation_rows(db, HELDOUT, "heldout")
    errors = [abs(r["error_pct"]) for r in rows]
    assert len(rows) >= 10 and all(np.isfinite(errors))  # every run feasible with its published layout
    release = [abs(r["error_pct"]) for r in rows if r["case"].startswith("mb2606-")]
    assert len(release) == 8 and np.mean(release) <= 10.0  # measured 6.9 % (README: Accuracy); none fitted
    monkeypatch.setattr(sweep.cli, "validation_rows", lambda db: rows)
    assert main(["validate"]) == 0
    assert any(x.startswith("held-out runs") for x in capsys.readouterr().out.splitlines())


def test_the_fsdp_held_out_table_is_predicted_within_10_percent_up_to_4096_tokens_and_reported(db, capsys,
                                                                                                monkeypatch):
    # MosaicML llm-foundry's H100 BF16 table (52 MPT runs under PyTorch FSDP), never fitted: the dense
    # 16-bit efficiency, fitted on Meta's Megatron-style runs, carries over to another framework
    import sweep.cli
    from sweep.validate_layout import HELDOUT_FSDP, modern_validation_rows

    rows = modern_validation_rows(db, HELDOUT_FSDP, "heldout_fsdp")
    assert len(rows) == 52 and all(r["kind"] == "dense" for r in rows)
    feasible = [r for r in rows if np.isfinite(r["error_pct"])]
    assert len(feasible) == 52  # the 30B run at 8,192 tokens on 8 GPUs fits only in NVML's 81,559 MiB
    doc = tomllib.loads((HERE / HELDOUT_FSDP).read_text())
    seq_len = {run["id"]: run["model"]["seq_len"] for run in doc["run"]}
    short = [abs(r["error_pct"]) for r in feasible if seq_len[r["case"].split(" ")[0]] <= 4096]
    assert len(short) == 35 and np.mean(short) <= 10.0  # measured 7.6 % (README: Accuracy)
    monkeypatch.setattr(sweep.cli, "validation_rows", lambda db: rows)
    assert main(["validate"]) == 0
    assert any(x.startswith("held-out FSDP runs") for x in capsys.readouterr().out.splitlines())


def test_each_fsdp_held_out_row_reproduces_its_published_parameter_count(db):
    # MPT: L x (12 d^2 weights + 9 d linear biases + 4 d LayerNorm weights and biases) + vocab x d (tied)
    # + seq x d (learned positions) + 2 d (final LayerNorm) = the table's NumParams column
    import re

    doc = tomllib.loads((Path(hardware_db.__file__).parent / "throughput_runs_heldout_fsdp.toml").read_text())
    for run in doc["run"]:
        m = run["model"]
        L, d = m["layers"], m["d_model"]
        params = L * (12 * d * d + 9 * d + 4 * d) + m["vocab"] * d + m["seq_len"] * d + 2 * d
        assert params == int(re.search(r"NumParams (\d+)", run["source"]).group(1)), run["id"]
        assert m["heads"] * m["head_dim"] == d and m["d_ff"] == 4 * d


def test_the_overlapped_schedule_exposes_the_all_to_all_of_its_unpaired_passes_by_hand(db):
    # 8 devices, ep 8, one stage: the overlapped 1F1B pairs the forward of one micro-batch with the
    # backward of the one before, so of m micro-batches the first forward and the last backward run
    # alone and the overlap hides m - 1 micro-batches' all-to-all, not m. Hand: with h the hidden time
    # of one micro-batch, the saving is (m - 1)·h: 1·h at m = 2, 3·h at m = 4, a ratio of 3 (m·h: 2)
    def saving(m):
        spec = {**SMALL_MOE, "devices": 8, "ep": 8, "global_batch": 8 * m}
        off, on = evaluate(spec, db), evaluate({**spec, "ep_overlap": True}, db)
        assert off["reason"] == on["reason"] == 0
        return off["step_time_s"] - on["step_time_s"]

    assert saving(2) > 0
    assert saving(4) / saving(2) == pytest.approx(3.0, rel=1e-9)


def test_the_published_expert_overlap_a_b_is_predicted_as_a_gain_within_a_quarter_of_it(db):
    # Megatron-Bridge's HybridEP A/B (held out): 16 H100, only the all-to-all overlap changed,
    # step 24.7138 s without it, 20.9920 s with it: a published gain of 24.7138 / 20.9920 = 1.177
    from sweep.validate_layout import HELDOUT, modern_validation_rows

    rows = {r["case"].split(" ")[0]: r for r in modern_validation_rows(db, HELDOUT, "heldout")}
    off, on = (rows[f"mbskill2607-qwen3-30b-h100-bf16-hybridep-ep-overlap-{x}"] for x in ("off", "on"))
    assert off["published"] / on["published"] == pytest.approx(20.9920 / 24.7138, rel=1e-9)  # tokens/s
    gain = on["predicted"] / off["predicted"]
    assert gain > 1.0 and abs(math.log(gain / (24.7138 / 20.9920))) < math.log(1.25)  # measured 1.35


def test_an_all_gather_context_parallelism_is_exposed_where_the_ring_hides_it(db):
    spec = {**LLAMA_405B, "layers": 32, "d_model": 4096, "heads": 32, "d_ff": 14336, "seq_len": 131072,
            "global_batch": 16, "devices": 256, "tp": 8, "pp": 1, "cp": 16, "microbatch": 1, "recompute": "full"}
    ring = evaluate(spec, db)
    gathered = evaluate({**spec, "cp_comm_type": "all_gather"}, db)
    assert ring["reason"] == gathered["reason"] == 0
    assert gathered["step_time_s"] > ring["step_time_s"]


def test_a_grid_over_cp_comm_type_gives_what_estimate_gives_for_each_value(db):
    from sweep.engine import run

    spec = {**LLAMA_405B, "layers": 32, "d_model": 4096, "heads": 32, "d_ff": 14336, "seq_len": 131072,
            "global_batch": 16, "devices": 256, "tp": 8, "pp": 1, "cp": 16, "microbatch": 1, "recompute": "full"}
    model = {k: spec[k] for k in ("layers", "d_model", "heads", "kv_heads", "d_ff", "ffn", "vocab", "seq_len",
                                  "dropout")}
    cluster = {k: spec[k] for k in ("hardware", "devices", "tp", "pp", "cp", "microbatch", "recompute")}
    doc = {"model": model, "training": {"tokens": spec["tokens"], "global_batch": 16}, "cluster": cluster,
           "site": {"region": "us"}, "grid": {"cp_comm_type": ["p2p", "all_gather"]}, "study": {"name": "cp"}}
    ds = run(doc, write=False).dataset
    for kind in ("p2p", "all_gather"):
        one = evaluate({**spec, "cp_comm_type": kind}, db)
        assert float(ds.step_time_s.sel(cp_comm_type=kind)) == pytest.approx(one["step_time_s"], rel=1e-6)
    assert float(ds.step_time_s.sel(cp_comm_type="all_gather")) > float(ds.step_time_s.sel(cp_comm_type="p2p"))


def test_a_grid_value_of_cp_comm_type_outside_its_choices_is_a_spec_error(tmp_path, capsys):
    path = _spec(tmp_path)
    path.write_text(path.read_text() + '\n[grid]\ncp_comm_type = ["p2p", "ring"]\n\n[study]\nname = "cp"\n')
    code = main(["run", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "[grid] cp_comm_type" in err and "all_gather" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_bad_cp_comm_type_is_a_spec_error_naming_the_key(tmp_path, capsys):
    code = main(["estimate", str(_spec(tmp_path, extra='cp_comm_type = "ring"'))])
    err = capsys.readouterr().err
    assert code == 2 and "[cluster] cp_comm_type" in err and "all_gather" in err and "Traceback" not in err
