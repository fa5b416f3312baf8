"""The sweep engine: a study's grid evaluated in chunks by one jitted kernel call each.

Data flow: study spec → validated Study → per chunk: each dimension's values on its own axis
(hardware and region figures gathered by index) → the design terms on the design axes → when the
layout is optimised, the search over the candidate layouts, once per value of the axes it depends
on (design, devices, hardware; not site, lifespan or tokens: ``kernels.selection.best_layout_stage``)
→ the rest of ``kernels.footprint`` on every point → outputs → per-chunk Pareto fronts, top-k and statistics
(their candidates prefiltered inside the jitted call) written atomically to ``.chunks/`` (or kept
in memory when there is no output folder) → merged into the final files. The next chunk's call is
dispatched before the current one is reduced, so XLA and NumPy overlap.

Chunks are hyper-rectangles of the grid (a run of one axis times all later axes), so each is a
contiguous range of flat indices and, for large grids, exactly one block of the Zarr store.
A chunk counts as done only when its partial file has been renamed into place, so a run killed
at any moment and resumed computes every chunk exactly once in the merge.

Over 500 lines: the jitted grid path and the Evaluator that feeds it share invariants (the same bits
on every path, one compiled shape per call) best read in one file.
"""

from __future__ import annotations

import functools
import itertools
from concurrent.futures import ThreadPoolExecutor
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import hardware_db
from kernels.design import DERIVABLE, DESIGN_INPUTS, design_stage
from kernels.footprint import DEPLOYMENT_INPUTS, DESIGN_KEYS, LAYOUT_STEP_INPUTS, OUTPUTS, footprint
from kernels.selection import best_layout_stage
from kernels.reasons import CODE, REASONS
from kernels import uncertainty as ku

from . import reductions as red
from .compiled import deployment_stage, opaque_zeros
from .calibration import calibration_for
from .inputs import point_inputs, site_row
from . import dimensions, results
from .names import LAYOUT_OUTPUTS as LAYOUT_VARS
from .names import QUANTILE_SUFFIXES, elasticity_of, quantile_base, samples_base
from .uncertainty import kernel_spec, sampled_inputs
from .results import PARTIAL_DIR, SweepResult
from .spec import SpecError
from .study import SMALL_GRID, Study, load_study

DEFAULT_BUDGET = 1 << 20      # evaluations per chunk (points × layouts): bounds memory
SAMPLED_BUDGET = 1 << 22      # point-samples per chunk of a study with an [uncertainty] section
# inputs of the design stage: what the architecture and the token budget alone fix
# inputs of the layout stage (with the calibrated constants): the design's architecture, the
# device count and the hardware; not the tokens, the site, the lifespan or the power figures
LAYOUT_INPUTS = frozenset(DESIGN_KEYS) | frozenset(LAYOUT_STEP_INPUTS)


# ---------------------------------------------------------------------------------------------
# chunk plan


@dataclass(frozen=True)
class Plan:
    shape: tuple[int, ...]
    axis: int      # chunks split this axis; all later axes are whole
    step: int      # indices of `axis` per chunk
    inner: int     # points per index of `axis` (product of later axes)

    @classmethod
    def make(cls, shape, chunk_size):
        """The plan of at most ``chunk_size`` points per chunk: split the first axis whose later axes
        fit, in as few chunks along it as the budget allows, of equal steps. (The largest step that
        fits would leave the last chunk mostly padding when it does not divide the axis: 64 indices
        in steps of 42 are two chunks of 42 points' work, 31 % of it padding; in steps of 32, none.)"""
        chunk_size = max(1, int(chunk_size))
        for k in range(len(shape)):
            inner = int(np.prod(shape[k + 1:], dtype=np.int64))
            if inner <= chunk_size:
                widest = max(1, min(shape[k], chunk_size // inner))
                return cls(tuple(shape), k, math.ceil(shape[k] / math.ceil(shape[k] / widest)), inner)
        raise AssertionError("unreachable")

    @property
    def block(self) -> tuple[int, ...]:
        """Shape of every chunk (the last one along ``axis`` padded by repeating its last index)."""
        return (self.step,) + tuple(self.shape[self.axis + 1:])

    @property
    def per_outer(self) -> int:
        return math.ceil(self.shape[self.axis] / self.step)

    @property
    def n_chunks(self) -> int:
        return int(np.prod(self.shape[:self.axis], dtype=np.int64)) * self.per_outer

    @property
    def capacity(self) -> int:
        return self.step * self.inner

    def bounds(self, i: int) -> tuple[int, int]:
        """Flat index range [start, stop) of chunk i."""
        outer, j = divmod(i, self.per_outer)
        a = j * self.step
        b = min(a + self.step, self.shape[self.axis])
        base = outer * self.shape[self.axis]
        return (base + a) * self.inner, (base + b) * self.inner

    def region(self, i: int) -> tuple[slice, ...]:
        """The chunk as slices of the grid's axes (for Zarr region writes)."""
        outer, j = divmod(i, self.per_outer)
        lead = np.unravel_index(outer, self.shape[:self.axis]) if self.axis else ()
        a = j * self.step
        b = min(a + self.step, self.shape[self.axis])
        return tuple(slice(int(t), int(t) + 1) for t in lead) + (slice(a, b),) + tuple(
            slice(0, n) for n in self.shape[self.axis + 1:])


# ---------------------------------------------------------------------------------------------
# evaluation


class Evaluator:
    """Everything needed to evaluate any set of grid points; picklable (for dask workers)."""

    def __init__(self, study: Study, db):
        self.study = study
        v = study.base
        self.dims = list(study.dims)
        self.shape = study.shape
        self.dtype = np.float32 if study.options["dtype"] == "float32" else np.float64
        self.base = {k: float(val) for k, val in point_inputs(v, db).items()}
        if "mfu" in study.fixed or "mfu" in study.dims:
            self.mode = "mfu"
        else:
            self.mode = study.options["layout"]
        self.tables = dimensions.load_tables(study, db)  # the table dimensions' figures
        self.cal = {k: float(c) for k, c in calibration_for(db, v["hardware"]).items()}
        laws = db.docs.get("scaling_laws.toml", {})
        self.law_table = dict(laws.get(study.law, {}))
        given = set(study.fixed) | set(study.dims)
        self.derive = tuple(k for k in DERIVABLE if k not in given)
        self.layouts = self._candidate_layouts(db) if self.mode == "best" else None
        unc = study.uncertainty
        self.uncertainty = None if unc is None else kernel_spec(unc, mfu_given=self.mode == "mfu")
        self.outputs = self._output_names()
        # The kernel always prefilters the reductions' candidates. With no full grid kept it computes
        # just the outputs the reductions need; the few rows kept get every output at the end.
        self.reductions = red.for_study(study, tuple(self.outputs))
        self.fast = not study.options["keep_full_grid"]
        needed = set().union(*(r.reads for r in self.reductions))
        self.reduce_outputs = sorted(needed - {"reason"}) + ["reason"]

    # -- what is kept ----------------------------------------------------------------------
    def _output_names(self) -> list[str]:
        chosen = self.study.options["outputs"]
        names = list(chosen) if chosen else list(OUTPUTS)
        if not chosen:
            names += ["loss", "loss_in_range"]
            if self.mode == "best":
                names += list(LAYOUT_VARS)
        wanted = set(names).union(*(r.reads for r in red.for_study(self.study, ())))  # what they reduce
        names += [n for n in sorted(wanted) if n not in names]
        unc = self.study.uncertainty
        if unc is not None:  # the sampled outputs' quantiles and means, and the infeasible samples
            names += [f"{b}_{q}" for b in unc.outputs for q in QUANTILE_SUFFIXES if f"{b}_{q}" not in names]
            names += [] if "infeasible_samples" in names else ["infeasible_samples"]
        if "reason" not in names:
            names.append("reason")
        return names

    @property
    def grid_outputs(self) -> list[str]:
        """The outputs kept as variables of the grid and columns of its tables: all but those named
        like a dimension (``mfu``, ``params`` or ``active_params`` given in [grid]), whose values are
        that dimension's coordinate (a variable may not share a coordinate's name)."""
        return [k for k in self.outputs if k not in self.study.dims]

    @property
    def n_layouts(self) -> int:
        return 1 if self.layouts is None else len(self.layouts["tp"])

    def default_chunk_size(self) -> int:
        """Points per chunk within the memory budget: DEFAULT_BUDGET evaluations of the chain, and
        when optimising the layout, of the layout search, which runs on the chunk's layout axes only
        (not the site's, the lifespan's or the tokens': ``kernels.selection.best_layout_stage``)."""
        if self.uncertainty is not None:  # each point's samples count as evaluations
            budget = max(1, SAMPLED_BUDGET // self.uncertainty[-1])
            return budget if self.layouts is None else max(1, min(budget, DEFAULT_BUDGET // self.n_layouts))
        if self.layouts is None:
            return DEFAULT_BUDGET
        tables, _ = self.grid_tables()

        def searches(size):  # layout evaluations of the largest chunk of a plan
            plan = Plan.make(self.shape, size)
            return math.prod(searched_shape(plan.block, self.dims[plan.axis:], tables)) * self.n_layouts

        size = max(1, DEFAULT_BUDGET // self.n_layouts)
        while 2 * size <= DEFAULT_BUDGET and size < math.prod(self.shape) and \
                searches(2 * size) <= DEFAULT_BUDGET:
            size *= 2
        return size

    # -- layout candidates -----------------------------------------------------------------
    def _candidate_layouts(self, db) -> dict[str, np.ndarray]:
        """Union of the exact layout enumerations over the grid's distinct structural values."""
        s, b = self.study, self.base
        def values(key, xkey=None):
            if key in s.dims:
                return [float(t) for t in s.dims[key]]
            return [b[xkey or key]]
        dpn = (list(self.tables["hardware"]["devices_per_node"]) if "hardware" in self.tables
               else [b["devices_per_node"]])
        import itertools

        kv_given = "kv_heads" in s.fixed or "kv_heads" in s.dims
        combos = tuple((int(devices), int(layers), int(heads), int(heads if kv is None else kv), int(experts),
                        int(gb), int(n)) for devices, layers, heads, kv, experts, gb, n in itertools.product(
            values("devices"), values("layers"), values("heads"), values("kv_heads") if kv_given else [None],
            values("experts"), values("global_batch"), sorted(set(dpn))))
        arr = _layout_union(combos)
        if not len(arr):
            raise SpecError(self.study.file, "cluster", "devices", "no parallelism layout can be enumerated")
        return {k: arr[:, i] for i, k in enumerate(_LAYOUT_KEYS)}

    # -- the layout search ------------------------------------------------------------------
    @property
    def search_rows(self) -> int:
        """Points per call of the layout search: ~2^17 layout evaluations, the same for every call."""
        return max(1, (1 << 17) // self.n_layouts)

    @property
    def searched_dims(self) -> tuple[str, ...]:
        """The dimensions the layout search depends on (design, devices, hardware: LAYOUT_INPUTS)."""
        if getattr(self, "_searched_dims", None) is None:
            tables, _ = self.grid_tables()
            self._searched_dims = tuple(d for d in self.dims if _searched(tables[d]))
        return self._searched_dims

    @property
    def n_layout_searches(self) -> int:
        """Distinct layout searches of the grid (its design × devices × hardware values); 0 with no search."""
        return math.prod(len(self.study.dims[d]) for d in self.searched_dims) if self.mode == "best" else 0

    def search(self, values: dict[str, np.ndarray]) -> dict:
        """Each point's best layout (``kernels.selection.best_layout_stage``'s picks, as device arrays) at values of the
        dimensions ({dimension: 1-D array}, equal lengths; only those the search depends on are
        read). Points that share them are searched once. Calls one compiled search on batches of
        ``search_rows`` points, every input a full-length array, so the picks do not depend on how
        points are batched."""
        values = {d: np.asarray(v) for d, v in values.items() if d in self.searched_dims}
        n = max((len(v) for v in values.values()), default=1)
        if n > 1 and values:  # distinct combinations only
            codes = [np.unique(v, return_inverse=True) for v in values.values()]
            key = np.ravel_multi_index([c[1].ravel() for c in codes], [len(c[0]) for c in codes])
            _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
            if len(first) < n:
                picked = self.search({d: v[first] for d, v in values.items()})
                return {k: np.asarray(v)[inverse] for k, v in picked.items()}  # (a device gather: ~0.4 ms each)
        x, cal = self.inputs_from_values(values)
        rows = self.search_rows
        total = -(-n // rows) * rows
        take = np.minimum(np.arange(total), n - 1)  # pad by repeating the last point

        def batch(v):
            return np.ascontiguousarray(np.broadcast_to(np.asarray(v, self.dtype), (n,))[take])
        x = {k: batch(v) for k, v in x.items() if k in DESIGN_INPUTS or k in LAYOUT_INPUTS}
        cal = {k: batch(v) for k, v in cal.items()}
        if getattr(self, "_lay", None) is None:
            self._lay = jax.device_put({k: np.asarray(v, self.dtype) for k, v in self.layouts.items()})
        lay = self._lay
        fn = _search_jit(self.derive)
        outs = [fn({k: v[b:b + rows] for k, v in x.items()}, {k: v[b:b + rows] for k, v in cal.items()}, lay)
                for b in range(0, total, rows)]
        return {k: (jnp.concatenate([o[k] for o in outs]) if len(outs) > 1 else outs[0][k])[:n] for k in outs[0]}

    def chunk_search(self, plan: "Plan", i: int) -> dict:
        """The layout search of chunk i: one pick per value of the chunk's searched axes (C order
        over the block, 1 on the other axes: ``searched_shape``), the split axis clipped as the grid
        path pads it."""
        region = plan.region(i)
        idx = {}
        for pos, d in enumerate(self.dims):
            if d not in self.searched_dims:
                continue
            if pos < plan.axis:
                idx[d] = np.array([region[pos].start])
            elif pos == plan.axis:
                idx[d] = np.minimum(region[pos].start + np.arange(plan.step), self.shape[pos] - 1)
            else:
                idx[d] = np.arange(self.shape[pos])
        grids = np.meshgrid(*idx.values(), indexing="ij") if idx else []
        return self.search({d: np.asarray(self.study.dims[d])[g.ravel()] for d, g in zip(idx, grids)})

    # -- inputs ------------------------------------------------------------------------------
    def values_at(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Coordinate values of the grid points at flat indices: {dimension: 1-D array}."""
        idx = np.unravel_index(flat, self.shape)
        return {d: self.study.dims[d][ix] for d, ix in zip(self.dims, idx)}

    def inputs(self, flat: np.ndarray) -> tuple[dict, dict]:
        """Chain inputs and calibration for the grid points at flat indices."""
        return self.inputs_from_values(self.values_at(flat))

    def inputs_from_values(self, values: dict[str, np.ndarray]) -> tuple[dict, dict]:
        """Chain inputs and calibration for arbitrary values of the dimensions (on the grid or not).

        ``values`` maps each dimension to a 1-D array; categorical dimensions take labels that are
        among the grid's coordinates (their figures are gathered by index).
        """
        dt = self.dtype
        x = {k: np.asarray(val, dt) for k, val in self.base.items()}
        cal = {k: np.asarray(val, dt) for k, val in self.cal.items()}
        dimensions.inputs_at(self.study, self.tables, values, x, cal, dt)
        return x, cal

    # -- the jitted function ---------------------------------------------------------------
    def __getstate__(self):
        state = dict(self.__dict__)
        for k in ("_fn", "_grid_fn", "_tables_dev", "_chunk_args_dev", "_searched_dims", "_lay"):
            state.pop(k, None)
        return state

    @property
    def fn(self):
        if getattr(self, "_fn", None) is None:
            self._fn = _values_jit(tuple(self.core_kwargs().items()))
        return self._fn

    def evaluate(self, flat: np.ndarray, pad_to: int | None = None) -> dict[str, np.ndarray]:
        """Outputs at the given flat grid indices (numpy); pads to ``pad_to`` for a stable jit shape."""
        n = len(flat)
        if pad_to and pad_to > n:
            flat = np.concatenate([flat, np.full(pad_to - n, flat[0], flat.dtype)])
        return {k: v[:n] for k, v in self.evaluate_values(self.values_at(flat)).items()}

    # -- the grid path: the kernel unravels flat indices and gathers coordinates itself ---------
    def grid_tables(self) -> tuple[dict, tuple]:
        """Coordinate tables (arrays, by dimension) and the static (dim, size) plan."""
        tables = dimensions.columns(self.study, self.tables, self.dtype)
        return tables, tuple((d, int(size)) for d, size in zip(self.dims, self.shape))

    @property
    def grid_fn(self):
        if getattr(self, "_grid_fn", None) is None:
            self._tables_dev, plan = self.grid_tables()
            outputs = self.reduce_outputs if self.fast else self.outputs
            self._grid_fn = _grid_jit(plan, tuple(self.core_kwargs(outputs).items()), self.reductions, self.fast,
                                      DEPLOYMENT_STAGE_RATIO)
        return self._grid_fn

    def core_kwargs(self, outputs=None) -> dict:
        return dict(mode=self.mode, derive=self.derive, law=self.law_table.get("form"),
                    law_table=tuple(sorted((k, v) for k, v in self.law_table.items()
                                           if not isinstance(v, (list, dict)))),
                    outputs=tuple(outputs or self.outputs), uncertainty=self.uncertainty)

    def evaluate_chunk(self, plan: "Plan", i: int) -> dict[str, np.ndarray]:
        """Outputs of chunk i of a plan: one jitted call of the plan's fixed block shape."""
        return self.collect_chunk(self.dispatch_chunk(plan, i))

    def dispatch_chunk(self, plan: "Plan", i: int):
        """Start chunk i's jitted call and return at once (JAX runs it in the background): the
        loops start the next chunk before reducing this one, so NumPy and XLA overlap."""
        start, stop = plan.bounds(i)
        region = plan.region(i)
        lead = np.array([r.start for r in region[:plan.axis]], np.int64)
        a = np.int64(region[plan.axis].start)
        block = plan.block
        (xvec, cvec, mats), names = self._chunk_args()
        searched = self.chunk_search(plan, i) if self.mode == "best" else None
        out = self.grid_fn(lead, a, np.int64(stop - start), xvec, cvec, mats, searched, block=block,
                           axis=plan.axis, names=names)
        return out, stop - start, block

    def _chunk_args(self):
        """The grid function's fixed arguments, on the device once and packed into a few arrays (a
        call then passes ~5 buffers, not ~60), with their names (static)."""
        if getattr(self, "_chunk_args_dev", None) is None:
            _ = self.grid_fn  # builds the dimension tables
            xkeys, ckeys = tuple(self.base), tuple(self.cal)
            xvec = np.array([self.base[k] for k in xkeys], self.dtype)
            cvec = np.array([self.cal[k] for k in ckeys], self.dtype)
            tkeys = tuple((d, tuple(t)) for d, t in self._tables_dev.items())
            mats = {d: (np.stack([np.asarray(self._tables_dev[d][k]) for k in keys]) if keys
                        else np.zeros((0, len(self.study.dims[d])), self.dtype)) for d, keys in tkeys}
            self._chunk_args_dev = (jax.device_put((xvec, cvec, mats)), (xkeys, ckeys, tkeys))
        return self._chunk_args_dev

    @staticmethod
    def collect_chunk(handle) -> dict[str, np.ndarray]:
        """The outputs of a dispatched chunk as NumPy arrays (waits for the call to finish); one given
        once per design comes as a ``_PerDesign``, which the reductions read at their rows alike."""
        out, n, block = handle
        points = math.prod(block)

        def host(k, v):
            v = np.asarray(v)
            if k.startswith("__"):  # a reduction's prefilter arrays: masks per point, the rest as they are
                return v[:n] if k.endswith("mask") else v
            return v[:n] if v.shape == (points,) else _PerDesign(v, block)  # (given once per design)
        return {k: host(k, v) for k, v in out.items()}

    def complete_rows(self, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Add every kept output to rows known by flat index (fast mode keeps only the reduced ones)."""
        idx = cols["index"]
        if len(idx) == 0:
            return {**{k: np.zeros(0) for k in self.outputs}, **cols}
        size = 1 << int(np.ceil(np.log2(len(idx))))  # few compiled sizes
        flat = np.concatenate([idx, np.full(size - len(idx), idx[0])])
        out = {k: v[:len(idx)] for k, v in self.evaluate_values(self.values_at(flat)).items()}
        return {**out, **cols}

    def complete_many(self, parts: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """``complete_rows`` for several tables (fronts, top-k) in one evaluation."""
        if not parts:
            return []
        done = self.complete_rows({"index": np.concatenate([p["index"] for p in parts])})
        out, start = [], 0
        for p in parts:
            stop = start + len(p["index"])
            out.append({**{k: v[start:stop] for k, v in done.items() if k != "index"}, **p})
            start = stop
        return out

    def evaluate_values(self, values: dict[str, np.ndarray], outputs: tuple | None = None) -> dict[str, np.ndarray]:
        """Outputs at arbitrary values of the dimensions ({dimension: 1-D array}, equal lengths);
        ``outputs``: other outputs than the study's (e.g. the kept samples, ``<output>_samples``).

        One point is evaluated as two (the same twice): XLA compiles a one-point call differently,
        and its last bits would differ from the grid's."""
        n = len(next(iter(values.values()))) if values else 1
        if n == 1:
            values = {d: np.repeat(np.asarray(v), 2) for d, v in values.items()}
        x, cal = self.inputs_from_values(values)
        x["_points"] = np.zeros(max(n, 2), np.int8)  # carries the batch shape into the kernel
        picked = self.search(values) if self.mode == "best" else None
        fn = self.fn if outputs is None else _values_jit(tuple(self.core_kwargs(outputs).items()))
        out = fn(x, cal, layout_staged=picked)
        return {k: np.asarray(v)[:n] for k, v in out.items()}

    def kept_samples(self, dataset):
        """``dataset`` with every sample of the [uncertainty] outputs (``<output>_samples``, on the
        grid's dimensions and ``sample``; NaN where a sample is infeasible), evaluated in batches of
        about 2^20 values through the same chain as the quantile outputs."""
        unc = self.study.uncertainty
        names = tuple(f"{b}_samples" for b in unc.outputs)
        n, s = self.study.n_points, unc.samples
        batch = max(2, 1 << max(1, int(np.log2(max(2, (1 << 20) // s)))))
        kept = {k: np.empty((n, s), self.dtype) for k in names}
        for start in range(0, n, batch):
            flat = np.arange(start, min(n, start + batch))
            pad = np.concatenate([flat, np.full(batch - len(flat), flat[0])])  # one compiled shape
            out = self.evaluate_values(self.values_at(pad), names)
            for k in names:
                kept[k][flat] = out[k][:len(flat)]
        data = {k: ((*self.dims, "sample"), v.reshape(tuple(self.shape) + (s,)), results.var_attrs(k))
                for k, v in kept.items()}
        sample = ("sample", np.arange(s), {"long_name": "uncertainty sample (the same draws at every point)",
                                           "units": "1"})
        return dataset.assign(data).assign_coords(sample=sample)


class _PerDesign:
    """A chunk output given once per design (shaped to broadcast against the chunk's block), read at
    points by their flat positions in the chunk, as a per-point array would be."""

    def __init__(self, v: np.ndarray, block: tuple[int, ...]):
        self.values = np.broadcast_to(v, block)  # a view: nothing is copied

    def __getitem__(self, positions: np.ndarray) -> np.ndarray:
        return self.values[np.unravel_index(np.asarray(positions), self.values.shape)]


@functools.lru_cache(maxsize=32)
def _values_jit(core_items):
    """The chain on arbitrary points (search, completed rows), jitted once per configuration."""
    return jax.jit(functools.partial(evaluate_points, **dict(core_items)))


# a chunk's deployment terms are computed once per deployment (and kept as buffers) when the chunk
# holds at least this many points per deployment, else in the points' loops (the same bits either
# way). Measured on the deployment-heavy grid (6 points per deployment): 0.95-1.13 s in the loops,
# 0.79-0.80 s once per deployment.
DEPLOYMENT_STAGE_RATIO = 4


@functools.lru_cache(maxsize=32)
def _grid_jit(plan, core_items, reduce, compact, deploy_ratio):
    """One jitted grid function per static configuration, shared by every Evaluator (and run())."""
    return jax.jit(functools.partial(_evaluate_grid, plan=plan, core=dict(core_items), reduce=reduce,
                                     compact=compact, deploy_ratio=deploy_ratio),
                   static_argnames=("block", "axis", "names"))


def _evaluate_grid(lead, a, n_valid, xvec, cvec, mats, searched, *, block, axis, names, plan, core, reduce,
                   compact, deploy_ratio):
    """The grid path for one hyper-rectangular chunk, without per-point index division.

    ``lead`` holds the (traced) indices of the axes before the split ``axis``, ``a`` the first index
    along it; ``block`` = (step, sizes of the later axes) is static. Each dimension's index comes from
    a broadcast iota, and its values from one gather; the outputs are flat, in the grid's C order,
    i.e. the flat indices [start, start + prod(block)). Fixed inputs come packed in ``xvec`` and
    ``cvec``, each dimension's table in ``mats[dim]`` (rows in the order of ``names``). With
    ``compact``, outputs fixed by the design alone (the loss) come once per design, shaped to
    broadcast against the block (see ``_PerDesign``).
    """
    xkeys, ckeys, tkeys = names
    x = {k: xvec[i] for i, k in enumerate(xkeys)}
    cal = {k: cvec[i] for i, k in enumerate(ckeys)}
    tables = {d: {k: mats[d][i] for i, k in enumerate(keys)} for d, keys in tkeys}
    nblk = len(block)
    natural, on_axis = {}, {}
    for pos, (d, size) in enumerate(plan):
        if pos < axis:
            ix, j = lead[pos], None
        else:
            j = pos - axis
            n = block[j]
            ix = (a + jnp.arange(n)) if j == 0 else jnp.arange(n)
            ix = jnp.minimum(ix, size - 1).reshape((n,) + (1,) * (nblk - 1 - j))  # padding repeats the last
        for k, arr in tables[d].items():
            natural[k], on_axis[k] = arr[ix], j  # values on their own axis (a scalar for a lead axis)
    # Stages, each on materialised inputs, so every point takes the same arithmetic path whatever
    # the chunk shape (XLA would otherwise compute some terms at lower rank, and differently for
    # different shapes) and chunked and unchunked runs agree to the bit:
    # 1. the design stage on the design axes only (one evaluation per design, not per point);
    dshape = [1] * nblk
    for k, j in on_axis.items():
        if k in DESIGN_INPUTS and j is not None:
            dshape[j] = block[j]
    xd = {k: v for k, v in x.items() if k in DESIGN_INPUTS}
    xd.update({k: jnp.broadcast_to(v, dshape) for k, v in natural.items() if k in DESIGN_INPUTS})
    xd = jax.tree_util.tree_map(jax.lax.optimization_barrier, xd)
    staged = design_stage(xd, derive=core["derive"], law=core["law"], law_table=core["law_table"])
    full = functools.partial(spread, block=block)
    # 1b. the deployment stage likewise on the deployment axes only (each term per booked second:
    #     kernels.footprint.deployment_terms), so a point's footprint is a product or two;
    pshape = [1] * nblk
    for k, j in on_axis.items():
        if k in DEPLOYMENT_INPUTS and j is not None:
            pshape[j] = block[j]
    # computed once per deployment where a chunk holds far fewer deployments than points, else in
    # the points' loops (the same bits either way: sweep.compiled.deployment_stage); spread to the
    # points as arrays XLA cannot see through (opaque_zeros), as the per-point path's are
    once = math.prod(pshape) * deploy_ratio <= math.prod(block)
    deploy = deployment_stage({**x, **natural}, pshape, materialise=once)
    zeros = opaque_zeros((math.prod(block),), xvec.dtype)
    deploy = jax.tree_util.tree_map(lambda v: full(v) + zeros, deploy)
    # 2. when optimising the layout, the chunk's picks (``searched``: one per value of the axes the
    #    search depends on, in C order over the block: Evaluator.chunk_search) broadcast to the points;
    layout_staged = None
    if searched is not None:
        lshape = searched_shape(block, [d for d, _ in plan[axis:]], tables)
        layout_staged = {k: full(v.reshape(lshape)) for k, v in searched.items()}
    # 3. everything else on every point, the design (and layout) results broadcast to it.
    for k, v in natural.items():
        if k.startswith("cal__"):
            cal[k[5:]] = full(v)
        elif k not in DESIGN_INPUTS:
            x[k] = full(v)
    # each design term a buffer of its own (XLA would otherwise recompute it for every point it is broadcast to);
    # scalars stay scalars
    staged = jax.tree_util.tree_map(lambda v: v if jnp.ndim(v) == 0 else red.as_buffer(v), staged)
    per_design = {k: v for k, v in staged[2].items() if jnp.ndim(v)}  # the loss: one value per design
    staged = jax.tree_util.tree_map(lambda v: v if jnp.ndim(v) == 0 else full(v), staged)
    # one barrier per array, so XLA still drops the ones this chunk's outputs do not need
    x, cal, staged, deploy = jax.tree_util.tree_map(jax.lax.optimization_barrier, (x, cal, staged, deploy))
    if layout_staged is not None:
        layout_staged = jax.tree_util.tree_map(jax.lax.optimization_barrier, layout_staged)
    x["_points"] = jnp.zeros(math.prod(block), jnp.int8)
    out = evaluate_points(x, cal, staged=staged, layout_staged=layout_staged, deploy_staged=deploy, **core)
    reduced = set().union(*(r.reads for r in reduce))
    low = {k: v for k, v in per_design.items() if k in reduced}
    # the axes that usually decide feasibility: the design's, and categorical rows (hardware, region)
    cells = tuple(dshape[j] > 1 or len(tables[plan[axis + j][0]]) > 1 for j in range(nblk))
    pf = prefilter({k: out[k] for k in reduced if k not in low}, n_valid, reduce, low=low, expand=full,
                   cells=(cells, block))
    if compact:  # the loss once per design, not spread over the points: the host reads it at its few rows
        out = {**out, **{k: v for k, v in per_design.items() if k in out}}
    return {**out, **pf}


def prefilter(out, n_valid, reductions, bins=4096, stride=31, low=None, expand=None, cells=None):
    """In-kernel reductions of a chunk: each reduction's ``prefilter`` (sweep.reductions), e.g. exact
    candidate masks for its Pareto fronts and top-k, and its statistics (reason counts, min/max of
    the reduced outputs over feasible points), as ``__<reduction name>__<array>``.

    Most chunks have every point feasible with finite outputs: that is checked with plain
    reductions (a NaN or infinity shows in an output's min or max), and such a chunk takes a branch
    that needs no per-point masks of feasibility or finiteness (building them costs more than the
    chain on CPU). Both branches give the same results on such a chunk. The plain reductions also
    see the points past ``n_valid``: the grid path pads a chunk by repeating its real points, so
    they change no minimum or maximum.

    ``low``: outputs also given at a lower rank (the loss, one value per design), each equal to
    ``expand(low[name])`` point by point: their min/max, and a front's per-point work that depends
    on its first objective alone, are computed there. The masks are the same. ``out`` need not hold
    them per point: they are then spread inside the branches, where XLA fuses the spreading into
    the loops that read them instead of writing a per-point copy (branch operands are buffers).

    ``cells``: (for each axis of the chunk's block whether it may decide feasibility, the block's
    shape), with ``expand`` spreading arrays shaped on those axes to the points. A chunk whose
    reasons are constant over the other axes within each cell of the deciding ones (whole designs
    infeasible, top_k > experts; a device without a published figure) and whose feasible cells are
    finite takes a third branch: its masks are the cells' (spread into the loops that read them)
    and its statistics and reason counts come from plain reductions over the other axes, masked at
    the cells' rank. The check is plain reductions too (each cell's least and greatest reason). A
    wrong guess of the deciding axes costs speed, not exactness: the general branch then runs.
    Building per-point masks and masked copies costs more than the chain on CPU (XLA materialises a
    masked copy of each output before its reduction).
    """
    n = out["reason"].shape[0]
    valid = jnp.arange(n) < n_valid
    low = low or {}
    smallest = {**out, **low}  # each reduced output at its lowest rank, for its min/max
    floats = [k for k, v in smallest.items() if k != "reason" and jnp.issubdtype(v.dtype, jnp.floating)]
    lo_hi = {k: (jnp.min(smallest[k]), jnp.max(smallest[k])) for k in floats}
    clean = jnp.max(out["reason"]) == 0  # reasons are codes ≥ 0; padding repeats real points
    for lo, hi in lo_hi.values():
        clean = clean & jnp.isfinite(lo) & jnp.isfinite(hi)

    def per_point(args):  # inside a branch: an output given only per design spreads into the points' loop
        out, low = args
        return {**{k: expand(v) for k, v in low.items() if k not in out}, **out}

    def reduce_all(chunk):
        return {f"__{r.name}__{k}": v for r in reductions for k, v in r.prefilter(chunk).items()}

    def all_good(args):
        out = per_point(args)
        return reduce_all(red.KernelChunk(out, lambda names: valid, valid, n_valid, True, low, expand, lo_hi, floats,
                                          bins=bins, stride=stride))

    def general(args):
        out = per_point(args)
        ok = (out["reason"] == 0) & valid
        good = lambda names: functools.reduce(jnp.logical_and, [jnp.isfinite(out[k]) for k in names], ok)  # noqa: E731
        return reduce_all(red.KernelChunk(out, good, valid, n_valid, False, low, expand, lo_hi, floats, ok=ok,
                                          bins=bins, stride=stride))

    if cells is None:
        return jax.lax.cond(clean, all_good, general, (out, low))
    deciding, block = cells
    axes = tuple(j for j, (d, n) in enumerate(zip(deciding, block)) if not d or n == 1)  # the axes within a cell
    within = lambda v, op: op(jnp.reshape(v, block), axis=axes, keepdims=True)  # noqa: E731

    def by_cell(args):
        args, cell_reason, stats = args
        out = per_point(args)
        ok = valid & expand(cell_reason == 0)
        return reduce_all(red.KernelChunk(out, lambda names: ok, valid, n_valid, False, low, expand, lo_hi, floats,
                                          ok=ok, bins=bins, stride=stride, stats=stats,
                                          reasons=cell_counts(cell_reason, block, n_valid)))

    def finite_cells(args):  # every point of a feasible cell finite: the statistics at the cells' rank
        (out, low), cell_reason = args
        c_ok = cell_reason == 0
        finite, stats = True, {}
        for k in floats:
            lo, hi = (low[k], low[k]) if k in low else (within(out[k], jnp.min), within(out[k], jnp.max))
            finite = finite & jnp.all(c_ok <= (jnp.isfinite(lo) & jnp.isfinite(hi)))  # a NaN shows in both
            stats[k] = (jnp.min(jnp.where(c_ok, lo, jnp.inf)), jnp.max(jnp.where(c_ok, hi, -jnp.inf)))
        return jax.lax.cond(finite, by_cell, lambda a: general(a[0]), ((out, low), cell_reason, stats))

    def not_clean(args):
        hi = within(args[0]["reason"], jnp.max)
        constant = jnp.all(within(args[0]["reason"], jnp.min) == hi)
        return jax.lax.cond(constant, finite_cells, lambda a: general(a[0]), (args, hi))

    return jax.lax.cond(clean, all_good, not_clean, (out, low))


def cell_counts(cell_reason, block, n_valid):
    """The chunk's reason counts when its reasons are constant within cells (``cell_reason``, shaped
    on the deciding axes of ``block``, 1 on the others): each cell's code counted once per valid
    point of it. Valid points are the first ``n_valid`` in C order, i.e. those whose index on the
    block's first axis is below n_valid / (points per index on it): the padding repeats that axis's
    last index."""
    real = (n_valid // math.prod(block[1:])).astype(jnp.int32)
    rest = math.prod(n for j, (m, n) in enumerate(zip(cell_reason.shape, block)) if m == 1 and j > 0)
    if cell_reason.shape[0] == 1:  # the first axis runs within each cell: `real` of its indices are valid
        w = jnp.broadcast_to(rest * real, cell_reason.shape)
    else:
        first = jnp.arange(block[0], dtype=jnp.int32).reshape((-1,) + (1,) * (len(block) - 1))
        w = jnp.broadcast_to(rest * (first < real).astype(jnp.int32), cell_reason.shape)
    return jnp.zeros(len(REASONS), jnp.int32).at[cell_reason.reshape(-1)].add(w.reshape(-1))


def _searched(keys) -> bool:
    """Whether a dimension with these input keys (``cal__`` ones calibrated) is one the layout
    search depends on."""
    return any(k in LAYOUT_INPUTS or k.startswith("cal__") for k in keys)


def searched_shape(block, dims, tables) -> list[int]:
    """The block's shape on the axes the layout search depends on (1 on the others)."""
    return [n if _searched(tables[d]) else 1 for n, d in zip(block, dims)]


def spread(v, block):
    """``v`` broadcast to the block's shape and flattened (C order), with adjacent axes merged where
    ``v`` varies or is constant alike: the same values, but XLA's copy loop then computes a 2-3-axis
    index per element, not a 5-axis one (a design term spread over 10^6 points: 1.9 -> 0.4 ms)."""
    shape = (1,) * (len(block) - jnp.ndim(v)) + jnp.shape(v)
    vs, bs, spread = [], [], None
    for m, n in zip(shape, block):
        if n == 1:
            continue
        if (m == 1) == spread:
            vs[-1], bs[-1] = vs[-1] * m, bs[-1] * n
        else:
            vs.append(m), bs.append(n)
            spread = m == 1
    return jnp.broadcast_to(jnp.reshape(v, vs), bs).reshape(-1)


def evaluate_points(x, cal, *, mode, derive, law, law_table, outputs, staged=None, layout_staged=None,
                    deploy_staged=None, uncertainty=None):
    """One chunk: the design stage, the layout stage (when optimising the layout), then the
    footprint, loss, reasons.

    The design stage's results pass an optimisation barrier, so XLA evaluates both stages the same
    way whether the design terms were computed here, per point, or by the grid path on the design
    axes only (``staged``: its results, already broadcast to the points). When optimising the
    layout, ``layout_staged`` holds each point's pick (``Evaluator.search``, broadcast to the
    points). ``deploy_staged``: the deployment terms (``sweep.compiled.deployment_stage``), from the
    grid path's deployment axes, or computed here on the points. The study's ``objective`` is not
    an argument: it picks the same layout (``kernels.selection.best_layout_stage``), so studies that
    differ only in it share their compiled functions. ``uncertainty``
    (``sweep.uncertainty.kernel_spec``): the sampled quantile outputs too.
    """
    x = dict(x)
    points = jnp.shape(x.pop("_points"))
    bc = lambda v: jnp.broadcast_to(v, points)  # noqa: E731
    if staged is None:
        staged = jax.tree_util.tree_map(jax.lax.optimization_barrier,
                                        design_stage(x, derive=derive, law=law, law_table=law_table))
    xd, design, loss, reason = staged
    x.update(xd)
    dep = deploy_staged
    if dep is None:
        dep = deployment_stage(x, points)
    if mode == "best":
        picked = layout_staged  # Evaluator.search's picks, one per point
        out = footprint(x, design=design, step=picked, deploy=dep)
        for k in LAYOUT_VARS:
            out[k] = picked[k]
    elif mode == "fixed":
        out = footprint(x, cal, design=design, deploy=dep)
        for k in LAYOUT_VARS:
            out[k] = jnp.broadcast_to(x[k], jnp.shape(out["total_tco2e"]))
    else:
        out = footprint(x, None, design=design, deploy=dep)
    out.update(loss)
    pairs = [(n, *e) for n in outputs if (e := elasticity_of(n))]
    if pairs:  # <output>_elasticity_<input>: d ln output / d ln input, by forward-mode differentiation
        out.update(point_elasticities(x, cal if mode == "fixed" else None, layout_staged if mode == "best" else None,
                                      pairs, points))
    if uncertainty is not None:
        step = layout_staged if mode == "best" else None
        out.update(sampled_outputs(x, cal if mode == "fixed" else None, design, step, reason, out["reason"],
                                   uncertainty, outputs))
    out = {k: v if samples_base(k) else bc(v) for k, v in out.items()}  # (kept samples: points × samples)
    out["reason"] = bc(jnp.where(reason != 0, reason, out["reason"]).astype(jnp.int32))
    missing = ~jnp.isfinite(out["total_tco2e"]) & (out["reason"] == 0)
    out["reason"] = jnp.where(missing, CODE["missing_data"], out["reason"]).astype(jnp.int32)
    return {k: out[k] for k in outputs if k in out}


def point_elasticities(x, cal, step, pairs, points):
    """Each (name, output, input) of ``pairs``: d ln(output) / d ln(input) at every point, by
    jax.jvp through the chain with the input scaled by e^s at s = 0 (the estimate's elasticities,
    sweep.uncertainty.elasticities, point by point). The design terms are recomputed from the
    inputs (the input may be the tokens); a best layout's step is held, as in the sampled path."""
    res = {}
    for inp in dict.fromkeys(i for _, _, i in pairs):
        def chain(s, inp=inp):
            xs = {**x, inp: x.get(inp, 1.0) * jnp.exp(s)}
            return footprint(xs, cal, step=step)
        s0 = jnp.zeros(points, jnp.result_type(x["tokens"]))
        value, tangent = jax.jvp(chain, (s0,), (jnp.ones_like(s0),))
        for name, output, i in pairs:
            if i == inp:
                res[name] = tangent[output] / value[output]
    return res


def sampled_outputs(x, cal, design, step, design_reason, reason, unc, outputs):
    """Quantiles and means over the [uncertainty] samples of the outputs named ``<output>_p5`` ...
    in ``outputs``, and the infeasible samples, per point.

    Every point sees the same draws (the section's seed; common random numbers), on a trailing
    sample axis: the chain runs again with each sampled input replaced by nominal × factor (or the
    drawn value), its other inputs, the design terms and the layout's step held at the point's.
    A sample is feasible when its inputs are in range (sweep.uncertainty.UNCERTAIN_INPUTS) and the
    point is; quantiles by kernels.uncertainty.sample_quantiles over the feasible samples.
    """
    names, rel, codes, a, b, c, seed, samples = unc
    bases = sorted({qb for o in outputs if (qb := quantile_base(o) or samples_base(o))})
    if not bases and "infeasible_samples" not in outputs:
        return {}
    dtype = jnp.result_type(x["tokens"])
    # drawn in float64 (the engine enables it), then rounded: a float32 sweep sees the same samples
    draws = ku.draw(jax.random.key(seed), jnp.asarray(codes, jnp.int32), jnp.asarray(a, jnp.float64),
                    jnp.asarray(b, jnp.float64), jnp.asarray(c, jnp.float64), samples).astype(dtype)
    # a buffer of its own: XLA would otherwise fuse the draws (random bits, inverse CDFs, in float64)
    # into every per-point loop that reads them, recomputing each sample for every point (~10x the chain)
    draws = red.as_buffer(draws)
    col = lambda v: jnp.asarray(v)[..., None]  # noqa: E731
    xs, ok = sampled_inputs({k: col(v) for k, v in x.items()}, names, rel, draws, codes)
    # barriers as in the grid path: every chunk shape then takes the same arithmetic path
    xs, cal, design, step = jax.tree_util.tree_map(jax.lax.optimization_barrier, (
        xs, None if cal is None else {k: col(v) for k, v in cal.items()}, {k: col(v) for k, v in design.items()},
        None if step is None else {k: col(v) for k, v in step.items()}))
    # a sample whose total is not finite lacks a figure (missing_data, as the point estimate's): that
    # is checked where the samples are read (sample_summary), so the chain runs once per sample
    deploy = deployment_stage(xs)
    o = footprint(xs, cal, design=design, step=step, check_missing=False, deploy=deploy)
    ok = ok & (o["reason"] == 0) & (col(design_reason) == 0) & (col(reason) == 0)
    total = o["total_tco2e"]
    out, n_feasible = {}, None
    for base in bases:
        v = jnp.broadcast_to(o[base], ok.shape)
        other = None if base == "total_tco2e" else jnp.broadcast_to(total, ok.shape)
        # materialised first: XLA would otherwise recompute the chain inside every halving
        v, ok_b, other = jax.lax.optimization_barrier((v, ok, other))
        if f"{base}_samples" in outputs:  # [uncertainty] keep_samples: every sample, NaN where infeasible
            out[f"{base}_samples"] = jnp.where(ku.usable(v, ok_b, other), v, jnp.nan)
        q, mean, n = ku.sample_summary(v, ok_b, (0.05, 0.5, 0.95), finite=other)
        out.update({f"{base}_p5": q[0], f"{base}_p50": q[1], f"{base}_p95": q[2], f"{base}_mean": mean})
        if other is None:
            n_feasible = n.astype(jnp.int32)  # feasible samples: in range, and a finite total
    if n_feasible is None:
        n_feasible = jnp.sum(ok & jnp.isfinite(total), axis=-1)
    out["infeasible_samples"] = (samples - n_feasible).astype(jnp.int32)
    return out


@functools.lru_cache(maxsize=32)
def _search_jit(derive):
    """The best-layout search of a batch of points (each input a 1-D array of the batch's length):
    the design stage for the parameter counts, then ``kernels.selection.best_layout_stage``. Always
    called on batches
    of one length (``Evaluator.search``), so every point's layout comes from the same machine code
    whatever the chunk or the path: XLA fuses, and so rounds, differently for different shapes."""
    def search(x, cal, lay):
        xd, design, _, _ = design_stage(x, derive=derive)
        return best_layout_stage({**x, **xd}, cal, design, lay, inputs=LAYOUT_INPUTS)
    return jax.jit(search)


_LAYOUT_KEYS = tuple(sorted(LAYOUT_VARS))  # (the candidate rows sort by these columns in this order)


@functools.lru_cache(maxsize=32)
def _layout_union(combos: tuple) -> np.ndarray:
    """The distinct rows of ``_layout_rows`` over the combinations, in lexicographic order (float64),
    cached: a study run again (a notebook, the benchmark) builds its candidates at once."""
    rows = np.concatenate([_layout_rows(*c) for c in combos])
    rows = rows[np.lexsort(rows.T[::-1])]
    distinct = np.concatenate([[True], (rows[1:] != rows[:-1]).any(axis=1)])[:len(rows)]
    arr = rows[distinct].astype(np.float64)
    arr.flags.writeable = False
    return arr


@functools.lru_cache(maxsize=256)
def _layout_rows(devices, layers, heads, kv_heads, experts, global_batch, devices_per_node) -> np.ndarray:
    """``kernels.layout.enumerate_layouts`` as rows of ``_LAYOUT_KEYS`` (each point keeps its own device
    count), cached: the enumeration is a pure function of these integers, and slow in Python."""
    from kernels.layout import enumerate_layouts

    cand = enumerate_layouts(devices, layers, heads, kv_heads, experts, global_batch, devices_per_node)
    assert set(cand) - {"devices"} == set(_LAYOUT_KEYS), sorted(cand)
    rows = np.stack([np.asarray(cand[k], np.int64) for k in _LAYOUT_KEYS], axis=1).reshape(-1, len(_LAYOUT_KEYS))
    rows.flags.writeable = False
    return rows


# ---------------------------------------------------------------------------------------------
# one chunk: evaluate, reduce, save atomically


def chunk_partial(ev: Evaluator, plan: Plan, i: int, keep_full: bool, handle=None):
    """Outputs of chunk i and its partial results (reductions, plus the full outputs when kept);
    ``handle``: chunk i already dispatched (``Evaluator.dispatch_chunk``)."""
    start, _ = plan.bounds(i)
    out = ev.collect_chunk(handle if handle is not None else ev.dispatch_chunk(plan, i))
    cols = [k for k in out if not k.startswith("__")]
    res = {}
    for r in ev.reductions:  # each reduction's partial result, from its prefilter's arrays
        mine = f"__{r.name}__"
        kernel = {k[len(mine):]: v for k, v in out.items() if k.startswith(mine)}
        part = r.host_reduce(red.HostChunk(out, kernel, start, cols, tuple(ev.outputs), not ev.fast))
        res.update({f"{r.name}__{k}": v for k, v in part.items()})
    if keep_full:
        res.update({f"full__{k}": out[k] for k in ev.grid_outputs})
    return res, out


def run_chunk(ev: Evaluator, plan: Plan, i: int, out_dir: str, keep_full: bool, zarr_path: str | None,
              handle=None, give: bool = False):
    """Evaluate chunk i and write its partial file (and Zarr block); returns i (``give``: the
    partial results). Idempotent."""
    res, out = chunk_partial(ev, plan, i, keep_full and zarr_path is None, handle)
    if zarr_path is not None:
        results.write_zarr_block(ev.dims, plan.region(i), ev.grid_outputs, zarr_path, out)
    results.write_partial(out_dir, i, res)
    return res if give else i


# ---------------------------------------------------------------------------------------------
# Zarr for large grids


# ---------------------------------------------------------------------------------------------
# run


def _table(ev: Evaluator, cols: dict[str, np.ndarray]):
    """Partial columns (index + outputs) → DataFrame with coordinate labels first."""
    import pandas as pd

    idx = cols["index"].astype(np.int64)
    data = {}
    if len(idx):
        ix = np.unravel_index(idx, ev.shape)
    for d, k in zip(ev.dims, range(len(ev.dims))):
        data[d] = ev.study.dims[d][ix[k]] if len(idx) else np.array([])
    data["index"] = idx
    for k in ev.grid_outputs:
        if k in cols:
            data[k] = cols[k]
    return pd.DataFrame(data)


def run(spec, out=None, *, resume=False, chunk_size=None, scheduler=None, quiet=True, db=None,
        write=True) -> SweepResult:
    """Sweep a study. ``spec``: a path, a dict shaped like the TOML, or a Study.

    Returns a SweepResult with ``.dataset`` (the full grid, if kept), ``.pareto`` (name →
    DataFrame), ``.top`` and ``.summary``. With ``write=False`` nothing is written (in memory).

    Long (about 100 lines): the run's steps (plan, resume checks, scheduler, the chunk loop, merge,
    files) in the order they must happen, each guarded; split, the order would be hidden.
    """
    db = db or hardware_db.load()
    study = spec if isinstance(spec, Study) else load_study(spec, db)
    if study.base.get("calibration"):
        db = db.with_calibration(study.base["calibration"])
    if study.options["kind"] == "validation":
        from .validate import run_validation

        return run_validation(study, out, db=db, write=write)
    if not study.dims:
        raise SpecError(study.file, "grid", None,
                        "is empty: give at least one dimension (or use carbon-sweep estimate)")
    t0 = time.perf_counter()
    ev = Evaluator(study, db)
    size = chunk_size or study.options["chunk_size"] or ev.default_chunk_size()
    size = max(2, size)  # XLA compiles a one-point chunk differently, and its last bits would differ
    plan = Plan.make(study.shape, size)
    keep_full = study.options["keep_full_grid"]
    large = study.n_points > SMALL_GRID
    out_dir = Path(out) if out is not None else Path("results") / study.name
    # nothing to resume without an output folder: partial results then stay in memory, and a
    # scratch folder is made only for what needs files (dask workers, a Zarr grid)
    memory_only = not write and not scheduler and not (keep_full and large)
    if write:
        results.check_out_dir(out_dir, study.file)
    tmp = None
    if not write and not memory_only:
        import tempfile

        tmp = tempfile.TemporaryDirectory()
        out_dir = Path(tmp.name)
    if keep_full and not memory_only:
        _check_room(ev, study, out_dir)
    part_dir = out_dir / PARTIAL_DIR
    plan_file = part_dir / "plan.json"
    plan_doc = {"spec_hash": study.spec_hash(), "shape": list(plan.shape), "axis": plan.axis, "step": plan.step,
                "n_chunks": plan.n_chunks, "large": large, "keep_full": keep_full}
    prior_elapsed = 0.0
    resuming = False
    if not memory_only and resume:  # (a run kept in memory has no files at all)
        if results.finished_spec_hash(out_dir) == study.spec_hash():
            return results.load_result(out_dir)
        old = results.read_plan(plan_file)
        if old is not None:
            if old.get("spec_hash") != study.spec_hash():
                raise SpecError(study.file, None, None, f"--resume: {out_dir} holds a run of a different spec; "
                                "use another --out or run without --resume")
            plan = Plan(tuple(old["shape"]), old["axis"], old["step"],
                        int(np.prod(old["shape"][old["axis"] + 1:], dtype=np.int64)))
            prior_elapsed = old.get("elapsed_s", 0.0)
            resuming = True
    client = _connect(scheduler, study.file)  # before anything is written: an unreachable one leaves nothing
    if not memory_only and not resuming:
        results.clean(out_dir)
        part_dir.mkdir(parents=True, exist_ok=True)
        results.write_plan(plan_file, plan_doc)
    zarr_path = str(out_dir / "grid.zarr") if (keep_full and large) else None
    if zarr_path and not Path(zarr_path).exists():
        chunks = tuple(1 for _ in range(plan.axis)) + plan.block
        results.zarr_template(ev.dims, plan.shape, chunks, ev.evaluate(np.zeros(1, np.int64)), ev.grid_outputs,
                              study, zarr_path)

    done = set() if memory_only else results.finished_chunks(part_dir)
    todo = [i for i in range(plan.n_chunks) if i not in done]
    progress = progress_bar(plan.n_chunks, len(done), quiet)
    # each chunk is merged while the next ones' calls run (in chunk order, as an uninterrupted run);
    # a resumed or dask run merges the partial files at the end instead
    merger = _Merger(ev, keep_full and zarr_path is None) if memory_only or (client is None and not done) else None
    try:
        if client is not None:
            _run_dask(ev, plan, todo, str(out_dir), keep_full, zarr_path, client, progress)
        else:
            if memory_only:
                work = lambda i, handle: chunk_partial(ev, plan, i, keep_full, handle)[0]  # noqa: E731
            else:  # the partial file written for a resume, and the results kept for the merge
                work = lambda i, handle: run_chunk(ev, plan, i, str(out_dir), keep_full,  # noqa: E731
                                                   zarr_path, handle, give=merger is not None)
            for i, part in in_threads(ev, plan, todo, work):
                if merger is not None:
                    merger.add(part, plan.bounds(i))
                progress.update(1)
    finally:
        progress.close()
        if client is not None and client is not scheduler:
            client.close()
        elapsed_now = time.perf_counter() - t0
        doc = None if memory_only else results.read_plan(plan_file)
        if doc is not None:
            doc["elapsed_s"] = prior_elapsed + elapsed_now
            results.write_plan(plan_file, doc)
    result = (merger.result(plan, out_dir, zarr_path) if merger is not None
              else _merge(ev, plan, out_dir, keep_full, zarr_path))
    elapsed = prior_elapsed + (time.perf_counter() - t0)
    result.summary["elapsed_s"] = elapsed
    result.summary = results.study_doc(study, result.summary, layout=ev.mode, outputs=ev.outputs)
    if study.uncertainty is not None and study.uncertainty.keep_samples and result.dataset is not None:
        result.dataset = ev.kept_samples(result.dataset.load())
    if study.start is not None:  # [grid] start: the hours each design runs in (sweep.when)
        from .when import expand_grid

        result = expand_grid(result, study, db, lambda r: site_row(db, {**study.base, "region": r})[
            "carbon_intensity_kg_per_kwh"])
    if write:
        results.write_result(result, out_dir)
        shutil.rmtree(part_dir, ignore_errors=True)
    else:
        if result.dataset is not None:
            result.dataset = result.dataset.load()
        if tmp is not None:
            tmp.cleanup()
        result.out_dir = None
    return result


THREADS = 2  # chunks worked on side by side (each: its jitted call, then its host reductions)


def in_threads(ev: Evaluator, plan: Plan, todo: list[int], work, threads: int = THREADS):
    """(chunk, ``work(chunk, handle)``) in chunk order, the chunks worked on by ``threads`` threads.

    XLA on CPU runs a call's small loops (the quantiles' bisection) and the host its NumPy
    reductions on one core each; two calls from two threads run side by side (one thread's calls
    run one after another, however they are dispatched). The first chunk runs on this thread (it
    builds the compiled function and the tables once). At most 2 × ``threads`` chunks' results wait
    to be merged, so memory stays bounded; each chunk's results are the same whichever thread."""
    if not todo:
        return
    yield todo[0], work(todo[0], ev.dispatch_chunk(plan, todo[0]))
    rest = iter(todo[1:])
    pool = ThreadPoolExecutor(threads)
    try:
        pending = [(i, pool.submit(work, i, None)) for i in itertools.islice(rest, 2 * threads)]
        while pending:
            i, done = pending.pop(0)
            part = done.result()
            nxt = next(rest, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(work, nxt, None)))
            yield i, part
    finally:  # an error or an interruption: the chunks not started are dropped, the running ones end
        pool.shutdown(wait=True, cancel_futures=True)


def progress_bar(total, initial, quiet):
    """A tqdm progress bar on stderr (off when quiet or stderr is not a terminal)."""
    from tqdm.auto import tqdm

    disable = quiet or not sys.stderr.isatty()
    return tqdm(total=total, initial=initial, unit="chunk", desc="sweep", disable=disable, dynamic_ncols=True)


def _check_room(ev: Evaluator, study: Study, out_dir: Path) -> None:
    """With keep_full_grid left at its default (true), a grid whose every output cannot fit on the
    output's disk even before compression is a spec error before anything is written, not a run that
    fills the disk: the user chooses (false keeps the reductions only; true writes it anyway, and
    Zarr's compression often makes it several times smaller)."""
    if "keep_full_grid" in (study.doc.get("study") or {}):
        return
    folder = Path(out_dir).resolve()
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if study.n_points * 8 * len(ev.grid_outputs) <= free:  # (8 bytes a value at most)
        return
    sample = ev.evaluate(np.zeros(1, np.int64))
    need = study.n_points * sum(sample[k].dtype.itemsize for k in ev.grid_outputs)
    if need > free:
        raise SpecError(study.file, "study", "keep_full_grid", (
            f"is not given, so every output of every point is kept: {len(ev.grid_outputs)} outputs × "
            f"{study.n_points:,} points = {need / 1e9:,.1f} GB before compression, and {free / 1e9:,.1f} GB are "
            f"free at {folder}. Give keep_full_grid = false to keep the Pareto fronts, top-k and statistics "
            "only (bounded memory, any grid size), or keep_full_grid = true to write it anyway (Zarr "
            "compresses it, often several-fold)"))


def _connect(scheduler, file):
    """A dask.distributed Client for ``scheduler`` (an address or a Client), or None without one."""
    if not scheduler:
        return None
    from distributed import Client

    if isinstance(scheduler, Client):
        return scheduler
    try:
        return Client(scheduler)
    except (OSError, ValueError, TypeError) as exc:  # unreachable, or not an address
        raise SpecError(file, None, None, f"--scheduler {scheduler}: no dask scheduler answered ({exc}); "
                        "start one (dask scheduler) or run without --scheduler") from None


def _run_dask(ev, plan, todo, out_dir, keep_full, zarr_path, client, progress):
    from distributed import as_completed

    from .cluster import prepare_workers

    try:  # worker processes: glibc's malloc, and on one machine each its own cores (speed only)
        prepare_workers(client)
    except Exception as exc:  # noqa: BLE001  a worker that cannot be tuned still computes right
        import warnings

        warnings.warn(f"dask workers left as they are ({type(exc).__name__}: {exc}); the sweep runs, "
                      "perhaps slower (sweep.cluster)", RuntimeWarning, stacklevel=2)
    ev_f = client.scatter(ev, broadcast=True)
    futures = [client.submit(run_chunk, ev_f, plan, i, out_dir, keep_full, zarr_path, pure=False) for i in todo]
    for f in as_completed(futures):
        f.result()
        progress.update(1)


class _Merger:
    """Every chunk's partial results folded into the study's result as they come: Pareto fronts,
    top-k, reason counts, min/max and (if kept in memory) the full grid, in chunk order."""

    def __init__(self, ev: Evaluator, keep_arrays: bool):
        self.ev = ev
        self.states = [r.start() for r in ev.reductions]
        self.keep_arrays, self.full = keep_arrays, {}

    def add(self, parts: dict[str, np.ndarray], span: tuple[int, int]) -> None:
        """Fold in one chunk's partial results; ``span``: its flat index range [start, stop)."""
        for j, r in enumerate(self.ev.reductions):
            mine = f"{r.name}__"
            self.states[j] = r.merge(self.states[j], {k[len(mine):]: v for k, v in parts.items() if k.startswith(mine)})
        if self.keep_arrays:  # copied into the grid's arrays as they come: one copy, overlapped
            for k in self.ev.grid_outputs:
                v = parts[f"full__{k}"]
                if k not in self.full:
                    self.full[k] = np.empty(self.ev.study.n_points, v.dtype)
                self.full[k][span[0]:span[1]] = v

    def result(self, plan: Plan, out_dir: Path, zarr_path) -> SweepResult:
        import xarray as xr

        ev = self.ev
        dataset = None
        if self.keep_arrays:
            data = {k: (ev.dims, self.full[k].reshape(plan.shape), results.var_attrs(k)) for k in ev.grid_outputs}
            dataset = xr.Dataset(data, coords=results.coords(ev.study))
        elif zarr_path is not None:
            dataset = xr.open_zarr(zarr_path)
        n_points = ev.study.n_points
        rows = [r.finalize(s) for r, s in zip(ev.reductions, self.states)]
        if ev.fast:  # every kept row completed in one evaluation
            done = iter(ev.complete_many([cols for part in rows for cols in part]))
            rows = [[next(done) for _ in part] for part in rows]
        # the summary's keys in their order; the statistics fill in theirs
        summary = {"n_points": n_points, "n_feasible": None, "n_chunks": plan.n_chunks, "n_layouts": ev.n_layouts,
                   "n_layout_searches": ev.n_layout_searches, "infeasible": None, "min": None, "max": None}
        out = red.Published(table=functools.partial(_table, ev), summary=summary)
        for r, state, part in zip(ev.reductions, self.states, rows):
            r.publish(state, part, out)
        if dataset is not None:
            dataset.attrs.update({"title": f"carbon-sweep study {ev.study.name}", "n_points": n_points,
                                  "n_feasible": summary["n_feasible"], "layout": ev.mode,
                                  "law": ev.study.law or "", "law_name": ev.law_table.get("name", "")})
        return SweepResult(out_dir, dataset, out.pareto, out.top, out.summary, tables=out.tables)


def _merge(ev: Evaluator, plan: Plan, out_dir: Path, keep_full: bool, zarr_path) -> SweepResult:
    """Merge every chunk's partial file."""
    merger = _Merger(ev, keep_full and zarr_path is None)
    for i in range(plan.n_chunks):
        merger.add(results.read_partial(out_dir, i), plan.bounds(i))
    return merger.result(plan, out_dir, zarr_path)


