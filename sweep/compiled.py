"""The compiled kernels of the one-run paths (`estimate`, `layout`), shared: one jit each.

The grid engine has its own, specialised per study (``sweep.engine``).
"""

from __future__ import annotations

import functools

import jax

from kernels.footprint import design_terms, footprint


@functools.cache
def footprint_fn():
    """``jax.jit(kernels.footprint.footprint)``."""
    return jax.jit(footprint)


@functools.cache
def design_terms_fn():
    """``jax.jit(kernels.footprint.design_terms)``."""
    return jax.jit(design_terms)
