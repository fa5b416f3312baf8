"""Streaming reductions: Pareto fronts and top-k, merged chunk by chunk in bounded memory.

Objectives are output names, minimised unless written ``"max:name"``. A point j dominates i when it
is no worse in every objective and strictly better in one; equal points do not dominate each other,
so duplicates on the front are all kept (the brute-force definition, which the tests compare with).
"""

from __future__ import annotations

import numpy as np


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
