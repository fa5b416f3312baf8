"""Check the layout model's dispatcher terms (host sync, network copies) on runs in neither runs file:
Megatron-Bridge's 26.04 table ran GPT-OSS 120B on 64 GB200 and 64 B200 with the flex dispatcher and
HybridEP (the presets GPT_OSS_120B_PRETRAIN_CONFIG_GB200_BF16_V2 and ..._B200_BF16_V2 set
moe_flex_dispatcher_backend = "hybridep" @ 74695a06d); the 26.04.01 presets (@ 17a381f95, the same at
21d102f5e) drop that one line and so run Megatron-core's alltoall dispatcher, with every other setting and
the published layout unchanged. The 26.04.01 rows are in hardware_db/throughput_runs_modern.toml.

Each 26.04 twin takes its 26.04.01 row with ``moe_dispatcher = "flex (hybridep)"``, which the loader reads
as ``ep_dedup = true`` and ``moe_host_sync = false``. The H100 row, whose preset did not change, is the
control: it measures what the container patch alone moved. Published 26.04 tokens/s per GPU:
NVIDIA-NeMo/Megatron-Bridge docs/performance-summary.md @ 74695a06d, "26.04 NeMo Container" (Apache-2.0).

A second table, on H100: the overlap A/B's "off" run in hardware_db/throughput_runs_heldout.toml
(Qwen3-30B-A3B, 16 H100, BF16, EP 16, HybridEP, 24.7138 s per step) and the same recipe with the alltoall
dispatcher, eager: 41.36 s per step over iterations 5-8 on 2026-05-18 (Megatron-Bridge
skills/nemo-mbridge-perf-cuda-graphs/SKILL.md @ 067f987df, pitfall 13; a five-step run of 2026-05-17 with
permutation fusion off took 45.65 s, skills/nemo-mbridge-perf-moe-dispatcher-selection/SKILL.md), that is
1024 x 4096 / 41.36 / 16 = 6,338 tokens/s per GPU. A four-iteration measurement, so it stays out of the
runs files.
Prints, per pair, both runs published / predicted with the packaged constants and the alltoall/HybridEP
ratios. Usage: python tools/dispatcher_twins.py [DB_FOLDER]
"""

from __future__ import annotations

import sys

from twin_table import predict_pairs, print_pairs

# (26.04.01 row of the modern set, 26.04 tokens/s per GPU, the 26.04 preset's dispatcher or None: unchanged)
PAIRS = (("mb260401-gptoss-120b-gb200-bf16", 15938.0, "flex (hybridep): 26.04 preset @ 74695a06d"),
         ("mb260401-gptoss-120b-b200-bf16", 13045.0, "flex (hybridep): 26.04 preset @ 74695a06d"),
         ("mb260401-gptoss-120b-h100-bf16", 5810.0, None))
TWINS = tuple((run_id, run_id.replace("mb260401", "mb2604"), published,
               {} if dispatcher is None else {"moe_dispatcher": dispatcher})
              for run_id, published, dispatcher in PAIRS)
# the H100 pair, as twin_rows takes it: the held-out HybridEP row, its alltoall twin, that run's tokens/s per
# GPU and the twin's settings
H100_TWINS = (("mbskill2607-qwen3-30b-h100-bf16-hybridep-ep-overlap-off", "skills-2605-qwen3-30b-h100-bf16-alltoall",
               1024 * 4096 / 41.36 / 16, {"moe_dispatcher": "alltoall (eager, 2026-05-18)", "cuda_graphs": "none"}),)


if __name__ == "__main__":
    pairs = predict_pairs(sys.argv[1:], TWINS + H100_TWINS, "dispatcher_twins")  # one load, one prediction
    print_pairs(pairs[:len(TWINS)], "26.04.01 alltoall", "26.04 twin", "26.04.01/26.04 pub", twin_over_row=False)
    print()
    print_pairs(pairs[len(TWINS):], "HybridEP (A/B off)", "alltoall", "HybridEP/alltoall pub", twin_over_row=False)
