"""The compiled kernels of the one-run paths (`estimate`, `layout`), shared: one jit each.

The grid engine has its own, specialised per study (``sweep.engine``).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from kernels.footprint import DEPLOYMENT_INPUTS, deployment_terms, design_terms, footprint

from .reductions import as_buffer


@functools.cache
def footprint_fn():
    """``jax.jit(kernels.footprint.footprint)``, its deployment terms from ``deployment_stage``."""
    def fn(x, cal):  # the terms at the points' shape, as in the sampled estimate
        return footprint(x, cal, deploy=deployment_stage(x, jnp.broadcast_shapes(*map(jnp.shape, x.values()))))
    return jax.jit(fn)


@functools.cache
def design_terms_fn():
    """``jax.jit(kernels.footprint.design_terms)``."""
    return jax.jit(design_terms)


def opaque_zeros(shape, dtype):
    """Zeros that XLA cannot prove zero, as an array of ``shape`` (not a broadcast): a term plus
    these is the same number, but XLA no longer sees a broadcast or a product in it, so it neither
    rewrites its users by the operand's rank (a division by a broadcast becomes a product by its
    reciprocal; products of broadcasts are regrouped) nor contracts it into a fused multiply-add
    in one fusion and not another. One add per element, fused; nothing is materialised."""
    n = math.prod(shape)
    return (jax.lax.iota(jnp.int32, n).astype(dtype) * 0.0).reshape(shape)


def deployment_stage(x, shape=None, materialise=False):
    """``kernels.footprint.deployment_terms`` on inputs of ``shape`` (the deployment axes of a
    chunk, or the points; by default the deployment inputs' broadcast shape), every input and
    every term it sums or shares guarded by ``opaque_zeros``: each term then rounds alike whatever
    the path, the chunk, and whether it is computed once (``materialise``: each result a buffer of
    its own, for a chunk with far fewer deployments than points) or in every point's loop."""
    if shape is None:
        shape = jnp.broadcast_shapes(*(jnp.shape(v) for k, v in x.items() if k in DEPLOYMENT_INPUTS))
    one = math.prod(shape) == 1  # XLA treats a one-element array as a scalar: the stage runs on two
    at = (2,) + tuple(shape) if one else tuple(shape)
    dtype = jnp.result_type(*(x[k] for k in DEPLOYMENT_INPUTS if k in x), float)
    zeros = opaque_zeros(at, dtype)
    guard = lambda v: v + zeros  # noqa: E731
    xp = {k: guard(jnp.broadcast_to(v, at)) for k, v in x.items() if k in DEPLOYMENT_INPUTS}
    terms = {k: guard(v) for k, v in deployment_terms(xp, materialise=guard).items()}
    if materialise:
        terms = jax.tree_util.tree_map(as_buffer, terms)
    return jax.tree_util.tree_map(lambda v: v[0], terms) if one else terms
