"""Reductions: Pareto fronts, top-k and statistics of a sweep's points, merged chunk by chunk in
bounded memory, each a class of the ``Reduction`` protocol (prefilter, host reduce, merge,
finalize), so a new one is one class (``register``) and the engine is not touched.

Objectives are output names, minimised unless written ``"max:name"``. A point j dominates i when it
is no worse in every objective and strictly better in one; equal points do not dominate each other,
so duplicates on the front are all kept (the brute-force definition, which the tests compare with).

Over 500 lines (just): the protocol with its three built-in reductions and their exact prefilters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kernels.reasons import REASONS
from kernels.uncertainty import sortable_bits

from .results import front_name


def parse_objective(name: str) -> tuple[str, float]:
    """'max:mfu' → ('mfu', -1.0); 'total_tco2e' → ('total_tco2e', 1.0) (signs turn max into min)."""
    if name.startswith("max:"):
        return name[4:], -1.0
    if name.startswith("min:"):
        return name[4:], 1.0
    return name, 1.0


def objective_matrix(columns: dict[str, np.ndarray], objectives: list[str]) -> np.ndarray:
    """(n, m) matrix of minimised objective values."""
    cols = []
    for o in objectives:
        name, sign = parse_objective(o)
        cols.append(sign * np.asarray(columns[name], dtype=np.float64))
    return np.stack(cols, axis=1)


def pareto_mask(f: np.ndarray) -> np.ndarray:
    """Boolean mask of the non-dominated rows of f (n, m), all minimised."""
    n, m = f.shape
    if n == 0:
        return np.zeros(0, bool)
    if m == 1:
        return f[:, 0] == f[:, 0].min()
    if m == 2:
        return _front_2d(f)
    order = np.lexsort(f.T[::-1])  # lexicographic by f0, then f1, ...
    mask = np.zeros(n, bool)
    mask[order[_front_nd_sorted(f[order])]] = True
    return mask


def _front_2d(f: np.ndarray) -> np.ndarray:
    """Non-dominated rows of f (n, 2), with one sort by f0 (a lexicographic sort costs ~4x more).

    Rows with equal f0 form a group. Row i is dominated exactly when an earlier group (smaller f0)
    holds an f1 ≤ its own, or its own group holds an f1 < its own.
    """
    n = len(f)
    # candidates come in grid order, where the first objective often runs in sorted stretches (e.g.
    # loss, one value per design): a merge sort uses them (3x faster then, 2x slower on random data)
    runs = np.count_nonzero(f[1:, 0] < f[:-1, 0])
    order = np.argsort(f[:, 0], kind="stable" if runs < n // 16 else None)
    g0, g1 = f[order, 0], f[order, 1]
    new = np.empty(n, bool)
    new[0] = True
    np.not_equal(g0[1:], g0[:-1], out=new[1:])
    group_min = np.minimum.reduceat(g1, np.flatnonzero(new))
    before = np.empty_like(group_min)  # least f1 of the groups with smaller f0
    before[0] = np.inf
    np.minimum.accumulate(group_min[:-1], out=before[1:])
    gid = np.cumsum(new) - 1
    dominated = (before[gid] <= g1) | (group_min[gid] < g1)
    mask = np.zeros(n, bool)
    mask[order[~dominated]] = True
    return mask


def _front_nd_sorted(g: np.ndarray, block: int = 2048) -> np.ndarray:
    """Non-dominated rows of lexicographically sorted g: only earlier rows can dominate later ones."""
    n = len(g)
    keep = np.ones(n, bool)
    front = np.empty((0, g.shape[1]))
    for s in range(0, n, block):
        blk = g[s:s + block]
        dom = np.zeros(len(blk), bool)
        if len(front):
            le = (front[None, :, :] <= blk[:, None, :]).all(-1)
            lt = (front[None, :, :] < blk[:, None, :]).any(-1)
            dom |= (le & lt).any(1)
        # within the block, pairwise (earlier rows only)
        le = (blk[None, :, :] <= blk[:, None, :]).all(-1)
        lt = (blk[None, :, :] < blk[:, None, :]).any(-1)
        d = le & lt
        dom |= np.tril(d, -1).any(1)
        keep[s:s + block] = ~dom
        front = np.concatenate([front, blk[~dom]])
    return keep


def merge_front(a: dict[str, np.ndarray] | None, b: dict[str, np.ndarray], objectives) -> dict[str, np.ndarray]:
    """Front of the union of two candidate sets (dicts of equal-length columns incl. 'index')."""
    if a is None:
        both = b
    else:
        both = {k: np.concatenate([a[k], b[k]]) for k in b}
    if len(both["index"]) == 0:
        return both
    mask = pareto_mask(objective_matrix(both, objectives))
    out = {k: v[mask] for k, v in both.items()}
    order = np.argsort(out["index"], kind="stable")
    return {k: v[order] for k, v in out.items()}


class StreamingFront:
    """The front of every candidate set added, merged in batches: merging each chunk's small set into
    the running front would sort the whole front again for every chunk."""

    def __init__(self, objectives, batch_rows: int = 50_000):
        self.objectives, self.batch_rows = objectives, batch_rows
        self.front, self.pending, self.n_pending = None, [], 0

    def add(self, cand: dict[str, np.ndarray]) -> None:
        self.pending.append(cand)
        self.n_pending += len(cand["index"])
        size = 0 if self.front is None else len(self.front["index"])
        if self.n_pending >= max(self.batch_rows, 2 * size):
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            both = {k: np.concatenate([p[k] for p in self.pending]) for k in self.pending[0]}
            self.front = merge_front(self.front, both, self.objectives)
            self.pending, self.n_pending = [], 0

    def result(self) -> dict[str, np.ndarray] | None:
        self._flush()
        return self.front


def top_k(columns: dict[str, np.ndarray], by: str, n: int) -> dict[str, np.ndarray]:
    """The n rows with the smallest ``by`` (or largest for 'max:name'); ties broken by index."""
    name, sign = parse_objective(by)
    key = sign * np.asarray(columns[name], dtype=np.float64)
    if len(key) > n:
        part = np.argpartition(key, n - 1)[:n]
        cut = key[part].max()
        cand = np.flatnonzero(key <= cut)  # keep ties at the cut so merging stays exact
        columns = {k: v[cand] for k, v in columns.items()}
        key = key[cand]
    order = np.lexsort((columns["index"], key))[:n]
    return {k: v[order] for k, v in columns.items()}


def merge_top(a, b, by: str, n: int):
    if a is None:
        return top_k(b, by, n)
    both = {k: np.concatenate([a[k], b[k]]) for k in b}
    return top_k(both, by, n)


def no_tradeoff(df, objectives) -> bool:
    """Whether every design on a front has the same value of every objective: one point, nothing to
    trade (as over MFU × lifespan, where the highest and longest win on time, GPUs and CO2e alike)."""
    names = [parse_objective(o)[0] for o in objectives]
    return len(df) > 0 and all(n in df and df[n].nunique(dropna=False) == 1 for n in names)


# ---------------------------------------------------------------------------------------------
# the protocol: how the engine reduces a sweep's points


class Reduction:
    """A reduction of a sweep's points: a Pareto front, a top-k, the statistics, or one of your own.

    The engine drives it in four steps, and knows nothing else of it:

    1. ``prefilter(chunk)`` inside the jitted chunk call (JAX): arrays that let the host see few
       points, exact (keeping every point the result could need). Names ending in ``mask`` are
       per point; the rest come back as they are.
    2. ``host_reduce(chunk)`` on the host (NumPy): the chunk's partial result, named arrays, which
       the engine keeps in memory or writes to the chunk's partial file (what ``--resume`` reads).
    3. ``merge(state, part)`` folds the partial results in chunk order (``start()`` the empty state).
    4. ``finalize(state)`` gives the rows to complete with every output (``{"index": flat indices,
       ...}`` dicts; none for a summary), then ``publish(state, rows, out)`` puts the result into
       ``out`` (a ``Published``: tables, the front and top tables, summary entries).

    Instances are frozen dataclasses (hashable: the compiled chunk function is cached by them,
    and picklable: dask workers get them). ``reads``: the outputs it needs of every point.
    """

    name: str = "reduction"

    @property
    def reads(self) -> frozenset:
        return frozenset()

    def prefilter(self, chunk: "KernelChunk") -> dict:
        return {}

    def host_reduce(self, chunk: "HostChunk") -> dict:
        return {}

    def start(self):
        return None

    def merge(self, state, part: dict):
        return state

    def finalize(self, state) -> list[dict]:
        return []

    def publish(self, state, rows: list[dict], out: "Published") -> None:
        pass


@dataclass
class KernelChunk:
    """What a prefilter sees of a chunk (inside the jitted call). ``out``: the reduced outputs per
    point; ``good_for(names)``: the valid points feasible and finite in the named outputs;
    ``valid``: the real points (a chunk is padded by repeating its points); ``clean``: True in
    the branch taken when every point is feasible and finite (then ``good_for`` is ``valid``);
    ``low``/``expand``: outputs also given once per design and the map spreading them to the
    points; ``lo_hi``: (min, max) of each float output over the whole chunk; ``floats``: their
    names; ``ok``: the feasible valid points (``clean`` False only); ``stats``: the statistics
    (min, max over the good points) when the chunk's reasons are constant within cells of the axes
    that decide them and were reduced at that rank (sweep.engine.prefilter), and ``reasons`` their
    counts."""
    out: dict
    good_for: Callable
    valid: object
    n_valid: object
    clean: bool
    low: dict
    expand: Callable
    lo_hi: dict
    floats: list
    ok: object = None
    bins: int = 4096
    stride: int = 31  # prime: a power-of-two stride samples only a few residues of the inner axes
    stats: dict | None = None  # {output: (min, max) over the good points}, when already reduced
    reasons: object = None  # the valid points' reason counts, when already counted


@dataclass
class HostChunk:
    """What ``host_reduce`` sees: ``out`` every output the chunk computed (per point, or once per
    design read at points alike), ``kernel`` the reduction's own prefilter arrays, ``start`` the
    chunk's first flat index, ``columns`` the outputs a kept row carries, ``outputs`` every output
    of the study, ``every_output`` whether ``out`` holds them all (the full grid is kept)."""
    out: dict
    kernel: dict
    start: int
    columns: list
    outputs: tuple
    every_output: bool


@dataclass
class Published:
    """What the reductions make of a sweep: tables by name (fronts among them, ``pareto_...``),
    the top-k table, and summary entries. ``table(rows)`` turns rows into a labelled table."""
    table: Callable
    pareto: dict = field(default_factory=dict)
    top: object = None
    tables: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


def as_buffer(v):
    """A small array made a buffer of its own (a scatter ends XLA's fusion; an optimisation barrier
    does not): XLA would otherwise fuse the ops that compute it into every per-point use of it, e.g.
    a running minimum into every lookup of a prefilter table (3-4x slower), or a design's FLOPs into
    every point of the design."""
    flat = v.reshape(-1)
    return jnp.zeros_like(flat).at[jnp.arange(flat.shape[0])].set(flat).reshape(v.shape)


def bin_key(v):
    """A float key in the order of v whose steps follow v's bits: the IEEE-754 bit pattern as an
    integer (negatives flipped), converted back to a float. Monotone non-decreasing in v (integer
    order is float order; the conversion rounds monotonically), and about logarithmic in |v|, so
    equal-width bins of the key split outputs spanning decades (CO2e, days) evenly, where bins
    of v itself put nearly every point in the lowest few."""
    return sortable_bits(v).astype(v.dtype)


def bin_scale(v, good, bins):
    """(lo, scale) mapping [min, max] of the good values' ``bin_key`` onto [0, bins)."""
    k = bin_key(v)
    lo = jnp.min(jnp.where(good, k, jnp.inf))
    hi = jnp.max(jnp.where(good, k, -jnp.inf))
    lo = jnp.where(jnp.isfinite(lo), lo, 0.0)
    return lo, jnp.where(hi > lo, bins / (hi - lo), 0.0)


def bin_index(v, good, lo, scale, bins):
    """Bin index of v's ``bin_key``: monotone non-decreasing in v (clipped at both ends), so lower
    bins hold smaller v."""
    return jnp.clip(jnp.floor((jnp.where(good, bin_key(v), lo) - lo) * scale), 0, bins - 1).astype(jnp.int32)


def kept_rows(out: dict, columns, keep: np.ndarray, start: int) -> dict:
    """The columns at chunk positions ``keep``, with their flat indices."""
    res = {k: out[k][keep] for k in columns}
    res["index"] = keep + np.int64(start)
    return res


@dataclass(frozen=True)
class Statistics(Reduction):
    """Points by reason, and min/max of every output over the feasible points with finite values
    (the summary's n_feasible, infeasible, min, max)."""
    outputs: tuple = ()
    name: str = "stats"

    @property
    def reads(self):
        return frozenset({"reason"})

    def prefilter(self, c):
        if c.clean:  # every valid point feasible and finite: the plain min/max are the statistics
            res = {"reasons": jnp.zeros(len(REASONS), jnp.int32).at[0].set(c.n_valid.astype(jnp.int32))}
            for k, (lo, hi) in c.lo_hi.items():
                res[f"min__{k}"], res[f"max__{k}"] = lo, hi
            return res
        # counted on the host (``host_reduce``), which holds the reasons anyway: a bincount is a
        # scatter, slow in XLA on CPU (~1/3 of a chunk's time), and NumPy's runs beside the next chunk
        res = {"reasons": jnp.full(len(REASONS), -1, jnp.int32) if c.reasons is None else c.reasons}
        if c.stats is not None:  # reduced at a lower rank already: whole cells infeasible
            for k, (lo, hi) in c.stats.items():
                res[f"min__{k}"], res[f"max__{k}"] = lo, hi
            return res
        for k in c.floats:
            good = c.ok & jnp.isfinite(c.out[k])
            res[f"min__{k}"] = jnp.min(jnp.where(good, c.out[k], jnp.inf))
            res[f"max__{k}"] = jnp.max(jnp.where(good, c.out[k], -jnp.inf))
        return res

    def host_reduce(self, c):
        res = {"reasons": c.kernel["reasons"].astype(np.int64)}
        if res["reasons"][0] < 0:  # the kernel left the count to the host: the chunk's real points
            res["reasons"] = np.bincount(c.out["reason"], minlength=len(REASONS)).astype(np.int64)
        for k in c.columns:
            if f"min__{k}" in c.kernel:
                lo, hi = float(c.kernel[f"min__{k}"]), float(c.kernel[f"max__{k}"])
                res[f"min__{k}"] = np.asarray(lo if math.isfinite(lo) else np.nan)
                res[f"max__{k}"] = np.asarray(hi if math.isfinite(hi) else np.nan)
        if c.every_output:  # min/max of the outputs the kernel did not reduce
            feasible = c.out["reason"] == 0
            every = int(res["reasons"][0]) == len(feasible)
            for k in self.outputs:
                if k == "reason" or f"min__{k}" in res:
                    continue
                v = c.out[k]
                lo, hi = v.min(), v.max()  # a NaN shows in both
                if not (every and np.isfinite(lo) and np.isfinite(hi)):  # (every output but the reason is a float)
                    ok = feasible & np.isfinite(v)
                    found = ok.any()
                    lo = np.min(v, where=ok, initial=np.inf) if found else np.nan  # where=: no copy of the column
                    hi = np.max(v, where=ok, initial=-np.inf) if found else np.nan
                res[f"min__{k}"], res[f"max__{k}"] = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        return res

    def start(self):
        return {"reasons": np.zeros(len(REASONS), np.int64), "min": {}, "max": {}}

    def merge(self, state, part):
        state["reasons"] += part["reasons"]
        for k in self.outputs:
            if f"min__{k}" in part:
                state["min"][k] = np.fmin(state["min"].get(k, np.nan), part[f"min__{k}"])
                state["max"][k] = np.fmax(state["max"].get(k, np.nan), part[f"max__{k}"])
        return state

    def publish(self, state, rows, out):
        reasons = state["reasons"]
        num = lambda v: float(v) if math.isfinite(float(v)) else None  # noqa: E731
        out.summary.update({
            "n_feasible": int(reasons[0]),
            "infeasible": {REASONS[c]: int(n) for c, n in enumerate(reasons) if c and n},
            "min": {k: num(v) for k, v in state["min"].items()},
            "max": {k: num(v) for k, v in state["max"].items()},
        })


@dataclass(frozen=True)
class ParetoFront(Reduction):
    """The exact Pareto front of the feasible points over ``objectives`` (output names, "max:" to
    maximise), duplicates kept: the table ``pareto_<objectives>``.

    Prefilter (two objectives): points are binned by the first objective (a monotone map, so a
    point in a lower bin has a strictly smaller first objective); a point is dominated when a
    lower bin holds a second objective ≤ its own, or when it is dominated by its own bin's point of
    least second objective. Only such points are dropped, so the mask keeps every member of the
    chunk's front (and more); NumPy then computes the exact front of the few candidates. Bin minima
    come from every ``stride``-th point: a sample's bound is weaker, so the mask only keeps more.
    """
    objectives: tuple = ()
    name: str = "pareto0"

    @property
    def signed(self):
        return tuple(parse_objective(o) for o in self.objectives)

    @property
    def reads(self):
        return frozenset(n for n, _ in self.signed)

    def prefilter(self, c):
        objectives, out, low, expand, bins = self.signed, c.out, c.low, c.expand, c.bins
        sub = slice(None, None, c.stride)  # bounds from a strided sample: weaker, still exact as a prefilter
        f = [sign * out[name] for name, sign in objectives]
        good = c.good_for([name for name, _ in objectives])
        if len(f) == 2:
            f0, f1 = f
            lo, scale = bin_scale(f0[sub], good[sub], bins)
            b = bin_index(f0, good, lo, scale, bins)
            s0, s1, sb = f0[sub], jnp.where(good[sub], f1[sub], jnp.inf), b[sub]
            bin_min = jax.ops.segment_min(s1, sb, num_segments=bins)
            below = jnp.concatenate([jnp.full((1,), jnp.inf, bin_min.dtype), jax.lax.cummin(bin_min)[:-1]])
            # within the bin: the sample point with the bin's least f1 (and, among those, least f0)
            at_min = jax.ops.segment_min(jnp.where(s1 == bin_min[sb], s0, jnp.inf), sb, num_segments=bins)
            below, bin_min, at_min = as_buffer(below), as_buffer(bin_min), as_buffer(at_min)
            name0, sign0 = objectives[0]
            if name0 in low:  # what depends on f0 alone, once per design (a bad point's bin does not matter)
                g0 = sign0 * low[name0]
                bl = bin_index(g0, True, lo, scale, bins)
                m1, bound, a0 = expand(bin_min[bl]), expand(below[bl]), at_min[bl]
                ge, gt = expand(g0 >= a0), expand(g0 > a0)
            else:
                m1, bound, a0 = bin_min[b], below[b], at_min[b]
                ge, gt = f0 >= a0, f0 > a0
            in_bin = (ge & (f1 > m1)) | (gt & (f1 >= m1))
            good = good & (f1 < bound) & ~in_bin
        return {"mask": good}

    def host_reduce(self, c):
        cand = np.flatnonzero(c.kernel["mask"])
        names = {parse_objective(o)[0] for o in self.objectives}
        keep = cand[pareto_mask(objective_matrix({n: c.out[n][cand] for n in names}, self.objectives))]
        return kept_rows(c.out, c.columns, keep, c.start)

    def start(self):
        return StreamingFront(list(self.objectives))

    def merge(self, state, part):
        state.add(part)
        return state

    def finalize(self, state):
        front = state.result()
        return [] if front is None else [front]

    def publish(self, state, rows, out):
        if rows:
            out.pareto[front_name(self.objectives)] = out.table(rows[0])


@dataclass(frozen=True)
class TopK(Reduction):
    """The ``n`` feasible points of least ``by`` ("max:name": greatest), ties broken by index: the
    table ``top``. Prefilter: every feasible point whose key is at most the largest of a strided
    sample's points in the key's bins up to the one where the sample's count reaches n (at least n
    points at or below it: the n smallest, ties and more)."""
    by: str = "total_tco2e"
    n: int = 100
    name: str = "top"

    @property
    def reads(self):
        return frozenset({parse_objective(self.by)[0]})

    def prefilter(self, c):
        name, sign = parse_objective(self.by)
        bins, sub = c.bins, slice(None, None, c.stride)
        key = sign * c.out[name]
        good = c.good_for([name])
        k, g = key[sub], good[sub]
        lo, scale = bin_scale(k, g, bins)
        b = bin_index(k, g, lo, scale, bins)
        counts = jnp.bincount(b, weights=g.astype(jnp.int32), length=bins)
        enough = jnp.sum(counts) >= self.n
        last = jnp.argmax(jnp.cumsum(counts) >= self.n)
        # the sample's points in those bins are ≥ n good points with keys ≤ cut: the n least keys of
        # the chunk (and their ties) are ≤ cut too; one comparison per point
        cut = jnp.where(enough, jnp.max(jnp.where(g & (b <= last), k, -jnp.inf)), jnp.inf)
        return {"mask": good & (key <= cut)}

    def host_reduce(self, c):
        cand = np.flatnonzero(c.kernel["mask"])
        name = parse_objective(self.by)[0]
        best = top_k({name: c.out[name][cand], "index": cand + np.int64(c.start)}, self.by, self.n)
        return kept_rows(c.out, c.columns, best["index"] - np.int64(c.start), c.start)

    def merge(self, state, part):
        return merge_top(state, part, self.by, self.n)

    def finalize(self, state):
        return [] if state is None else [state]

    def publish(self, state, rows, out):
        if rows:
            out.top = out.table(rows[0])


# Reductions beyond a study's [study] pareto and top: each class's ``for_study(study, outputs)``
# gives its instances for a study (none: it does not apply). ``register`` adds one.
EXTRA: list = []


def register(cls):
    """Add a reduction class to every sweep it applies to (``cls.for_study``); returns the class."""
    if cls not in EXTRA:
        EXTRA.append(cls)
    return cls


def unregister(cls) -> None:
    if cls in EXTRA:
        EXTRA.remove(cls)


def for_study(study, outputs) -> tuple:
    """A study's reductions: its statistics, fronts and top-k, then the registered ones."""
    options = study.options
    found = [Statistics(tuple(outputs))]
    found += [ParetoFront(tuple(p), f"pareto{j}") for j, p in enumerate(options["pareto"])]
    if options["top"]:
        found.append(TopK(options["top"]["by"], options["top"]["n"]))
    for cls in EXTRA:
        found += list(cls.for_study(study, outputs))
    return tuple(found)
