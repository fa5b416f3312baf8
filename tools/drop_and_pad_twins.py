"""Check the layout model's host-sync and per-expert terms on runs in neither runs file: Megatron-Bridge's
25.09 table ran three layouts with token dropping (drop-and-pad: the alltoall dispatcher then needs no
host synchronisation) that the 25.11 table runs dropless (hardware_db/throughput_runs_modern.toml).

Each 25.09 twin takes its 25.11 row's settings with ``moe_host_sync = false`` (and, for the H100 pair,
the 25.09 table's VP 24 and micro-batch 2). Published 25.09 tokens/s per GPU: NVIDIA-NeMo/Megatron-Bridge
docs/performance-summary.md @ 5776a6d90b4dd8692902ab2eb581369484e19283, "25.09 NeMo Container"
(Apache-2.0). Prints, per pair, both runs published / predicted with the packaged constants and the
drop/dropless ratios. Usage: python tools/drop_and_pad_twins.py [DB_FOLDER]
"""

from __future__ import annotations

import sys

from twin_table import report

# (25.11 row of the modern set, 25.09 drop-and-pad tokens/s per GPU, the 25.09 layout where it differs)
PAIRS = (("mb2511-qwen3-30b-b200-fp8-mx", 18066.0, {}),
         ("mb2511-qwen3-235b-b200-fp8-mx", 4104.0, {}),
         ("mb2511-qwen3-30b-h100-fp8-cs", 10494.0, {"vp": 24, "microbatch": 2}))
TWINS = tuple((run_id, run_id + "-2509-drop-and-pad", published, {**layout, "moe_host_sync": False})
              for run_id, published, layout in PAIRS)


if __name__ == "__main__":
    sys.exit(report(sys.argv[1:], TWINS, "drop_and_pad_twins", "25.11 dropless", "25.09 drop-and-pad",
                    "drop/dropless pub", twin_over_row=True))
