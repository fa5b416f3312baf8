"""Life-cycle phases after training (LLMCarbon §1: inference, experimentation, storage).

Inference. A served token costs the forward FLOPs of decoding at an average context of half the
sequence (kernels.flops.decode_flops_per_token). Decoding streams every weight once per batched step,
so its utilisation is bounded by the memory roofline (Williams et al. 2009; Pope et al. 2022 §2):
    serve_mfu = min(1, (2·serve_batch / bytes_per_value) · hbm_bw / peak)
    device_s_per_token = decode_flops_per_token / (peak · serve_mfu)
    inference_kwh = device_s · (device_power_w + host_power_w·power_util / devices_per_node) · pue / 3.6e6
Embodied carbon of serving is charged like training's: per device-hour, over the lifespan.
    breakeven_served_tokens = training total_tco2e / inference tCO2e per served token
Experimentation: earlier runs (ablations, tuning) as a multiple of the training run's footprint.
Storage: the embodied carbon of SSD holding ``storage_tb`` for the serving period, amortised over
the lifespan (its operational power has no published per-TB figure in the database: not counted).
"""

import jax.numpy as jnp

from . import embodied, flops


def serve_mfu(serve_batch, bytes_per_value, hbm_bw_bytes_s, peak_flops):
    """Decode utilisation bound by the memory roofline: min(1, 2·B/bytes · bw/peak)."""
    return jnp.minimum(1.0, 2.0 * serve_batch / bytes_per_value * hbm_bw_bytes_s / peak_flops)


def inference_device_s_per_token(active_params, vocab, d_model, tied_embeddings, layers, seq_len, d_attn,
                                 peak_flops, mfu):
    """Device-seconds per served token: decode FLOPs at context seq_len/2 over peak × utilisation."""
    f = flops.decode_flops_per_token(active_params, vocab, d_model, tied_embeddings, layers, seq_len / 2.0, d_attn)
    return f / (peak_flops * mfu)


def inference_tco2e_per_token(device_s, power_w, pue, carbon_intensity_kg_per_kwh, embodied_kg_per_device,
                              lifespan_years):
    """Operational + embodied tCO2e of one served token (power_w per device, host share included)."""
    kwh = device_s * power_w * pue / 3.6e6
    return kwh * carbon_intensity_kg_per_kwh / 1000.0 + embodied.amortised_tco2e(
        embodied_kg_per_device, device_s / 3600.0, lifespan_years)


def storage_tco2e(storage_tb, ssd_kgco2e_per_gb, serving_days, lifespan_years):
    """Embodied carbon of the SSDs holding the model and data over the serving period."""
    return embodied.amortised_tco2e(storage_tb * 1000.0 * ssd_kgco2e_per_gb, serving_days * 24.0, lifespan_years)
