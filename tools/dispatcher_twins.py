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
Prints, per pair, both runs published / predicted with the packaged constants and the alltoall/HybridEP
ratios. Usage: python tools/dispatcher_twins.py [DB_FOLDER]
"""

from __future__ import annotations

import sys

from twin_table import report

# (26.04.01 row of the modern set, 26.04 tokens/s per GPU, the 26.04 preset's dispatcher or None: unchanged)
PAIRS = (("mb260401-gptoss-120b-gb200-bf16", 15938.0, "flex (hybridep): 26.04 preset @ 74695a06d"),
         ("mb260401-gptoss-120b-b200-bf16", 13045.0, "flex (hybridep): 26.04 preset @ 74695a06d"),
         ("mb260401-gptoss-120b-h100-bf16", 5810.0, None))
TWINS = tuple((run_id, run_id.replace("mb260401", "mb2604"), published,
               {} if dispatcher is None else {"moe_dispatcher": dispatcher})
              for run_id, published, dispatcher in PAIRS)


if __name__ == "__main__":
    sys.exit(report(sys.argv[1:], TWINS, "dispatcher_twins", "26.04.01 alltoall", "26.04 twin", "26.04.01/26.04 pub",
                    twin_over_row=False))
