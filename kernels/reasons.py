"""Integer reason codes for infeasible configurations.

Every kernel that can find a configuration infeasible returns an int32 ``reason`` array: 0 means
feasible, any other value names the *first* rule the configuration breaks (lower codes are checked
first). The names are the contract used in outputs (``infeasible`` counts, masks, reports).
"""

REASONS: dict[int, str] = {
    0: "ok",
    1: "top_k_exceeds_experts",
    2: "tp_not_dividing_heads",
    3: "tp_not_dividing_kv_heads",
    4: "pp_not_dividing_layers",  # since uneven stages: more pipeline stages than layers (name kept)
    5: "devices_not_divisible_by_tp_pp",
    6: "ep_not_dividing_experts",
    7: "ep_not_dividing_dp",
    8: "microbatch_not_dividing_batch",
    9: "interleave_invalid",
    10: "out_of_memory",
    11: "batch_too_small_for_dp",
    12: "heads_not_dividing_d_model",
    13: "kv_heads_not_dividing_heads",
    14: "missing_data",
    15: "cp_not_dividing_seq_len",
    16: "sample_out_of_range",
}
CODE: dict[str, int] = {name: code for code, name in REASONS.items()}
