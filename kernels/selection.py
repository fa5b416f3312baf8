"""The one best-layout rule: among candidate layouts, the feasible one of least score, and when none
is feasible, the reason that says most.

- A candidate is feasible when its reason is 0 and its score is finite; a structurally valid
  layout whose step time is unknown lacks a published figure (``missing_data``).
- The best is the argmin of the score over the feasible candidates (the first on ties; a listing
  breaks ties by a second key, then by order).
- With none feasible, the run's reason is ``missing_data`` when any valid layout lacks a figure
  (the key fact: with the figure it might run), else the highest code met (the deepest rule broken).

The sweep (``best_layout_stage``, once per design, device count and hardware), `estimate` and
`layout` (over one design's candidates, by their objective) and the layout model's validation (over
a published run's candidate micro-batches) all choose by these functions.
"""

from typing import Mapping

import jax.numpy as jnp
import numpy as np

from .footprint import layout_step
from .reasons import CODE

# the fields of a layout, as spec keys and grid outputs name them
LAYOUT_FIELDS = ("tp", "pp", "ep", "microbatch", "recompute", "interleave", "sequence_parallel", "shard_optimizer")


def candidate_reason(reason, step_time_s):
    """A candidate's reason with ``missing_data`` where a valid layout's step time is unknown."""
    return jnp.where((reason == 0) & ~jnp.isfinite(step_time_s), CODE["missing_data"], reason)


def feasible_score(reason, score):
    """The score where a candidate is feasible (reason 0, score finite), else +inf."""
    return jnp.where((reason == 0) & jnp.isfinite(score), score, jnp.inf)


def no_layout_reason(reason, axis=None):
    """The reason of a run none of whose candidates works (``reason`` over the candidates, along
    ``axis``): missing_data if any lacks a figure, else the highest code."""
    any_missing = (reason == CODE["missing_data"]).any(axis=axis)
    return jnp.where(any_missing, CODE["missing_data"], jnp.max(reason, axis=axis)).astype(jnp.int32)


def choose(reason, score, axis=-1):
    """(index of the best candidate along ``axis``, whether one is feasible, the run's reason: 0, or
    ``no_layout_reason`` when none is)."""
    ok = (reason == 0) & jnp.isfinite(score)
    index = jnp.argmin(jnp.where(ok, score, jnp.inf), axis=axis)
    found = ok.any(axis=axis)
    why = jnp.where(found, 0, no_layout_reason(reason, axis=axis)).astype(jnp.int32)
    return index, found, why


def ranking(reason, score, tiebreak=None) -> np.ndarray:
    """Indices of the feasible candidates (1-D), best first: by score, ties by ``tiebreak``, then by
    order; what `layout` lists, whose first is ``choose``'s pick when no two tie."""
    s = np.asarray(feasible_score(reason, score))
    keys = (s,) if tiebreak is None else (np.asarray(tiebreak), s)
    order = np.lexsort(keys)
    return order[np.isfinite(s[order])]


def best_layout(result: Mapping, objective: str = "step_time_s") -> int:
    """Index of the feasible layout with the least ``objective`` in ``result`` (the layout model's
    outputs over candidates, 1-D), −1 when none is feasible."""
    index, found, _ = choose(np.asarray(result["reason"]), np.asarray(result[objective], dtype=np.float64))
    return int(index) if bool(found) else -1


def best_layout_stage(x, cal, design, lay, inputs=None):
    """The best layout of each point: the layout model (``footprint.layout_step``) on every
    candidate in ``lay`` (points × layouts), the feasible one of least step time picked (``choose``).

    At a fixed point every objective grows with the step time: hours = FLOPs/(devices·peak·MFU)
    with MFU = tokens/s·FLOPs per token/(devices·peak) and tokens/s = batch·seq_len/step, and
    energy, operational and embodied carbon are hours times factors no layout changes (the device
    count is the point's own). Each step of that chain is monotone in floating point too, so the
    fastest layout has the least total_tco2e, train_days and energy_mwh alike, bit for bit, and
    among layouts of equal objective the fastest is taken. So the search needs neither the site,
    the lifespan nor the token budget, and a sweep runs it once for all their values.

    ``x``: the points' inputs (1-D per point; only ``inputs``, the layout model's, are read),
    ``design``: their ``design_terms``. Returns the picked layout's step outputs (as
    ``layout_step``), its LAYOUT_FIELDS (NaN when no layout works: index 0 would read as a choice)
    and its reason (``choose``).
    """
    col = lambda a: a[:, None] if jnp.ndim(a) == 1 else a  # noqa: E731
    xx = {k: col(v) for k, v in x.items() if inputs is None or k in inputs}
    xx.update({k: v[None, :] for k, v in lay.items()})
    step = layout_step(xx, col(design["params"]), col(design["active_params"]), {k: col(v) for k, v in cal.items()})
    reason = candidate_reason(step["reason"], step["step_time_s"])
    j, found, why = choose(reason, step["step_time_s"], axis=-1)
    shape = jnp.broadcast_shapes(jnp.shape(reason), jnp.shape(step["step_time_s"]))
    pick = lambda a: jnp.take_along_axis(jnp.broadcast_to(a, shape), j[..., None], axis=-1)[..., 0]  # noqa: E731
    out = {k: pick(v) for k, v in step.items()}
    out["reason"] = why
    for k in LAYOUT_FIELDS:
        out[k] = jnp.where(found, pick(lay[k][None, :]), jnp.nan)
    return out

