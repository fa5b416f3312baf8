"""GPUs consumed by a training run and the material they contain (Falk et al. 2025, "From FLOPs to
Footprints", arXiv 2512.04142, §2):
    gpus_consumed = ceil( F / (peak_flops · mfu · lifespan_years · 31 536 000 s) )
the run's GPU-seconds, F / (peak · MFU), counted in whole device lifetimes; the cluster size and the
duration cancel. material_kg = gpus_consumed · mass per device.

The count is an integer: it is computed in float64 whatever the input dtype, so that float32 sweeps
give the same counts as float64 ones (a float32 quotient can land one GPU off near an integer).
"""

import jax.numpy as jnp

SECONDS_PER_YEAR = 31_536_000.0  # 365 days


def gpus_consumed(train_flops, peak_flops, mfu, lifespan_years):
    """Whole device lifetimes used: ceil(F / (peak · MFU · lifespan_years · 31 536 000)), float64."""
    f64 = jnp.float64
    gpu_seconds = jnp.asarray(train_flops, f64) / (jnp.asarray(peak_flops, f64) * jnp.asarray(mfu, f64))
    return jnp.ceil(gpu_seconds / (jnp.asarray(lifespan_years, f64) * SECONDS_PER_YEAR))


def material_kg(gpus, mass_per_device_kg):
    """Material in the devices consumed: gpus · mass per device (kg)."""
    return gpus * mass_per_device_kg
