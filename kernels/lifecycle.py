"""Life-cycle phases after training (LLMCarbon §1: inference, experimentation, storage).

Inference. A served token costs what the serving model (kernels.serving, fitted on ML.ENERGY's
measured rows) says one device's steady-state decode step costs, at full load: ``serve_batch``
sequences decoded together at a mean context of half the training sequence (prompts not counted:
``[serving]`` models a request mix with its prefill, its latency targets and its idle capacity):
    step = serving.decode_step(batch = serve_batch, input 0, output seq_len, devices 1)
    device_s_per_token = step_time_s / serve_batch
    power_w = serving.device_power_w(step) + host_power_w·power_util / devices_per_node
    inference_kwh = device_s · power_w · pue / 3.6e6
(a replica of n devices holds 1/n of the weights and does 1/n of the FLOPs, so its device-seconds
per token are the same but for the per-step latencies). A model known only by its size has no layers,
attention or embedding: its step streams the weights and does 2·active FLOPs per token.
Embodied carbon of serving is charged like training's: per device-hour, over the lifespan.
    breakeven_served_tokens = training total_tco2e / inference tCO2e per served token
Experimentation: earlier runs (ablations, tuning) as a multiple of the training run's footprint.
Storage: the embodied carbon of SSD holding ``storage_tb`` for the serving period, amortised over
the lifespan (its operational power has no published per-TB figure in the database: not counted).
"""

import jax.numpy as jnp

from . import embodied, serving

KV_BYTES = 2.0  # the KV cache of the life-cycle's served tokens is kept in 16 bits (vLLM's default)


def inference_per_token(m, hw, serve_batch, seq_len, weight_bytes, cal):
    """(device-seconds, busy device power in W) of one served token: kernels.serving's decode step
    of ``serve_batch`` sequences on one device at a mean context of seq_len/2 (module docstring).
    ``m``: the serving architecture mapping; ``hw``: peak_flops, hbm_bw_bytes_s, tdp_w; ``cal``: the
    serving constants (hardware_db/serving.toml)."""
    step = serving.decode_step(m, hw, serve_batch, 0.0, seq_len, 1.0, weight_bytes, KV_BYTES, cal)
    t = step["step_time_s"]
    power = serving.device_power_w(step["step_flops"], step["step_bytes"], t, hw["peak_flops"], hw["hbm_bw_bytes_s"],
                                   hw["tdp_w"], cal)
    return t / serve_batch, power


def inference_tco2e_per_token(device_s, power_w, pue, carbon_intensity_kg_per_kwh, embodied_kg_per_device,
                              lifespan_years):
    """Operational + embodied tCO2e of one served token (power_w per device, host share included)."""
    kwh = device_s * power_w * pue / 3.6e6
    return kwh * carbon_intensity_kg_per_kwh / 1000.0 + embodied.amortised_tco2e(
        embodied_kg_per_device, device_s / 3600.0, lifespan_years)


def storage_tco2e(storage_tb, ssd_kgco2e_per_gb, serving_days, lifespan_years):
    """Embodied carbon of the SSDs holding the model and data over the serving period."""
    return embodied.amortised_tco2e(storage_tb * 1000.0 * ssd_kgco2e_per_gb, serving_days * 24.0, lifespan_years)
