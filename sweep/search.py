"""`carbon-sweep optimize`: an optuna search over a study's ``[grid]``, evaluated in jitted batches.

[search]
objectives  = ["total_tco2e"]                    outputs; several = multi-objective; "max:name" maximises
constraints = ["loss <= 2.3", "train_days <= 90"]  "output <=|>=|<|> number"
sampler     = "tpe"                              tpe, nsga2, gp (needs PyTorch), random
trials      = 300                                the target TOTAL of completed trials in the storage
batch       = 8                                  trials asked, evaluated in one jitted call, told
seed        = 0                                  sampler seed (whole number)
storage     = "journal:///results/x-search/optuna.log"  the default: optuna's journal file in the output
                                                 folder; or any SQLAlchemy URL (sqlite:///…, postgresql://…)

Design (the choices a user can rely on):

* Search space = exactly the grid's points, so a search and an exhaustive sweep of the same study
  answer the same question (and structural values such as ``devices`` or ``layers`` stay among
  those the layout candidates were enumerated for). Per dimension:
    - strings and true/false                     → CategoricalDistribution
    - numbers in arithmetic progression          → IntDistribution / FloatDistribution with ``step``
      (every {start, stop, step} range, linear {start, stop, num} ranges, lists like [1, 2, 3])
    - a {start, stop, num, scale = "log"} range, or a list in geometric progression such as
      experts = [1, 2, 4, 8]                      → Int/FloatDistribution(log=True); the sampled
      value is snapped to the nearest grid value in log space (so the order is kept)
    - another numeric list                       → CategoricalDistribution of its values
    - a range that rounding made uneven (int keys) → Int/FloatDistribution, snapped to the nearest
      grid value
  The optuna parameters are the sampled values; the evaluated design (and every table written) is
  the snapped grid point, whose flat grid index is given too.
* Constraints are optuna constraints (``Trial.set_constraint``, optuna ≥ 5's replacement for
  ``constraints_func``), so every sampler and ``study.best_trial(s)`` know infeasible trials as
  such. Each constraint's value is its relative violation, ``(v − t)/|t|`` for ``v <= t`` and
  ``(t − v)/|t|`` for ``v >= t`` (≤ 0 feasible; strict operators make equality a tiny violation;
  a non-finite ``v`` counts as violation 1). A design the engine finds infeasible (``reason`` ≠ 0:
  top_k > experts, out of memory, no layout, ...) has the extra constraint ``feasible`` = 1; its
  reason name is the trial's user attribute ``reason``.
* Objective values told: the output itself when the design is feasible and the value finite
  (designs that only break a user constraint keep their true values); otherwise a finite penalty,
  the worst value seen so far among feasible designs, so the trial stays COMPLETE, optuna's plots
  stay readable and the GP's fit is not distorted by huge numbers. TPE and NSGA-II rank infeasible
  trials by their constraint violation only, so the penalty never makes them look good.
* ``trials`` is a target total: a search stopped at any time and started again (same storage and
  study name) continues until the storage holds ``trials`` completed trials; running it again with a
  larger ``trials`` extends it. Several workers may share one storage (PostgreSQL); each stops when
  the shared count reaches the target (so the total may overshoot by up to a batch per worker).
  The sampler is seeded with ``seed`` + the number of trials already stored, so a resumed search
  does not replay its first proposals; give each concurrent worker its own ``seed``.
* Batches: ``batch`` trials are asked (TPE's constant liar keeps them apart), evaluated in one
  jitted call padded to ``batch`` (one compilation), then told. The default batch is 8: TPE's own
  cost per trial dominates whatever the batch, and its quality falls with larger batches (fewer
  model updates); on bench/search_quality.py batch 8 reached the optimum in 7/10 seeds, batch 32
  in 3–5/10. The random sampler is where large batches pay (thousands of trials per second).
* Samplers: tpe = TPESampler(multivariate, constant_liar, n_startup_trials = min(batch, 16));
  nsga2 = NSGAIISampler(population_size = max(batch, 8)); gp = GPSampler (needs PyTorch);
  random = RandomSampler.
* Results: ``best`` is the feasible trial with the best first objective; with several objectives
  ``front`` is the Pareto front of the feasible trials (one trial per distinct grid point, the
  engine's definition of dominance, duplicates of equal values kept).

Over 500 lines: the search space, sampler, storage and resume, the batched loop and its files are
one command's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import hardware_db
from hardware_db import closest
from kernels.reasons import REASONS

from . import reductions as red
from .spec import OBJECTIVE_OUTPUT, SpecError
from .names import output_units
from .study import Study, load_study

SEARCH_KEYS = ("objectives", "constraints", "sampler", "trials", "batch", "seed", "storage")
SAMPLERS = ("tpe", "nsga2", "gp", "random")
DEFAULTS = {"sampler": "tpe", "trials": 300, "batch": 8, "seed": 0}
FEASIBLE_KEY = "feasible"
N_BEST = 10                      # rows of best.csv
ATTR = "carbon_sweep"            # optuna study user attribute holding what the search is of
ELAPSED_ATTR = "carbon_sweep_elapsed_s"
log = logging.getLogger(__name__)
_CONSTRAINT_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|<|>)\s*"
                            r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


# ---------------------------------------------------------------------------------------------
# [search]


@dataclass(frozen=True)
class Constraint:
    text: str
    name: str
    op: str
    threshold: float

    def violation(self, v: np.ndarray) -> np.ndarray:
        """Relative violation: ≤ 0 feasible (see the module doc)."""
        v = np.asarray(v, np.float64)
        scale = abs(self.threshold) or 1.0
        c = ((v - self.threshold) if self.op in ("<=", "<") else (self.threshold - v)) / scale
        if self.op in ("<", ">"):
            c = np.where(c >= 0, np.maximum(c, 1e-12), c)
        return np.where(np.isfinite(c), c, 1.0)


@dataclass(frozen=True)
class SearchOptions:
    """The validated ``[search]`` options, typed and frozen (overrides: ``dataclasses.replace``)."""
    objectives: list[str]
    constraints: list[Constraint]
    sampler: str
    trials: int
    batch: int
    seed: int
    storage: str | None

    @property
    def names(self) -> list[str]:
        return [red.parse_objective(o)[0] for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        return ["maximize" if red.parse_objective(o)[1] < 0 else "minimize" for o in self.objectives]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_search(study: Study) -> SearchOptions:
    """Validate [search]; every error names the file, section "search", the key and what is allowed."""
    file, body = study.file, study.search
    err = lambda key, msg: SpecError(file, "search", key, msg)  # noqa: E731
    if not isinstance(body, dict):
        raise SpecError(file, None, "search", "must be a section [search], not a value")
    for k in body:
        if k not in SEARCH_KEYS:
            raise err(k, f"unknown key{closest(k, SEARCH_KEYS)} (allowed in [search]: {', '.join(SEARCH_KEYS)})")
    allowed = output_units()
    default_obj = OBJECTIVE_OUTPUT[study.options["objective"]]
    objectives = body.get("objectives", [default_obj])
    if isinstance(objectives, str):
        objectives = [objectives]
    if not isinstance(objectives, list) or not objectives or not all(isinstance(o, str) for o in objectives):
        raise err("objectives", 'must be a non-empty list of output names, e.g. ["total_tco2e"] or '
                  '["loss", "total_tco2e"] ("max:name" to maximise)')
    for o in objectives:
        name = red.parse_objective(o)[0]
        if name not in allowed:
            raise err("objectives", f"unknown output '{name}'{closest(name, allowed)} (allowed: {', '.join(allowed)})")
    names = [red.parse_objective(o)[0] for o in objectives]
    if len(set(names)) != len(names):
        raise err("objectives", f"names an output twice: {objectives}")
    raw_cons = body.get("constraints", [])
    if isinstance(raw_cons, str):
        raw_cons = [raw_cons]
    if not isinstance(raw_cons, list) or not all(isinstance(c, str) for c in raw_cons):
        raise err("constraints", 'must be a list of strings "output <= number", e.g. ["loss <= 2.3", '
                  '"train_days <= 90"] (operators: <=, >=, <, >)')
    constraints = []
    for text in raw_cons:
        m = _CONSTRAINT_RE.match(text)
        if not m:
            raise err("constraints", f"'{text}' is not \"output OP number\" (OP: <=, >=, <, >; e.g. \"loss <= 2.3\")")
        name, op, num = m.group(1), m.group(2), float(m.group(3))
        if name not in allowed:
            raise err("constraints", f"'{text}': unknown output '{name}'{closest(name, allowed)} "
                      f"(allowed: {', '.join(allowed)})")
        constraints.append(Constraint(text.strip(), name, op, num))
    texts = [c.text for c in constraints]
    if len(set(texts)) != len(texts):
        raise err("constraints", "lists the same constraint twice")
    sampler = body.get("sampler", DEFAULTS["sampler"])
    if sampler not in SAMPLERS:
        raise err("sampler", f"'{sampler}' is not allowed{closest(str(sampler), SAMPLERS)} "
                  f"(allowed: {', '.join(SAMPLERS)})")
    out = {}
    for key in ("trials", "batch"):
        v = body.get(key, DEFAULTS[key])
        if not _is_int(v) or v < 1:
            raise err(key, f"must be a whole number ≥ 1, not {v!r}")
        out[key] = v
    seed = body.get("seed", DEFAULTS["seed"])
    if not _is_int(seed) or seed < 0:
        raise err("seed", f"must be a whole number ≥ 0, not {seed!r}")
    storage = body.get("storage")
    if storage is not None and (not isinstance(storage, str) or not storage.strip()):
        raise err("storage", f"must be a storage URL such as \"journal:///search.log\", \"sqlite:///search.db\" or "
                  f"\"postgresql://user@host/db\", not {storage!r}")
    return SearchOptions(objectives, constraints, sampler, out["trials"], out["batch"], seed, storage)


# ---------------------------------------------------------------------------------------------
# the search space


@dataclass
class Dim:
    name: str
    distribution: Any          # optuna distribution
    kind: str                  # "cat" (choice = grid value), "snap" (nearest), "snaplog" (nearest in log)
    values: np.ndarray         # grid coordinates in file order
    sorted_values: np.ndarray | None = None
    sorted_index: np.ndarray | None = None
    lookup: dict | None = None

    def indices(self, params: list) -> np.ndarray:
        """Grid positions (file order) of sampled parameter values."""
        if self.kind == "cat":
            return np.array([self.lookup[p] for p in params], np.int64)
        s = self.sorted_values.astype(np.float64)
        x = np.asarray(params, np.float64)
        if self.kind == "snaplog":
            s, x = np.log(s), np.log(np.maximum(x, np.finfo(float).tiny))
        n = len(s)
        if n == 1:
            return np.zeros(len(x), np.int64) + self.sorted_index[0]
        i = np.clip(np.searchsorted(s, x), 1, n - 1)
        pick = np.where(x - s[i - 1] <= s[i] - x, i - 1, i)
        return self.sorted_index[pick]


def _py(v):
    return v.item() if hasattr(v, "item") else v


def _arithmetic(s: np.ndarray) -> float | None:
    """The common step of sorted values, or None."""
    if len(s) < 2:
        return None
    d = np.diff(s.astype(np.float64))
    step = d[0]
    if step > 0 and np.allclose(d, step, rtol=1e-9, atol=0):
        return float(step)
    return None


def _float_steps(lo: float, step: float, n: int):
    """FloatDistribution(lo, lo + (n − 1)·step, step) holding all n values, or None if optuna would not.

    optuna checks that the step divides the range in decimal, on the floats' shortest reprs, and
    lowers ``high`` to the last step that fits when it does not: with the step a grid's values differ
    by (0.25 − 0.2 = 0.04999999999999999) it dropped the top value of 0.2…0.6. So the step and the
    high are written in decimal (12 significant digits), as a user writes them."""
    import decimal

    import optuna.distributions as od

    d_step = decimal.Decimal(f"{step:.12g}")
    high = float(decimal.Decimal(repr(lo)) + d_step * (n - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the warning of a lowered high; checked below instead)
        dist = od.FloatDistribution(lo, high, step=float(d_step))
    kept = int(round((dist.high - dist.low) / dist.step)) + 1
    return dist if kept == n else None


def search_space(study: Study) -> list[Dim]:
    import optuna.distributions as od

    dims = []
    for name, vals in study.dims.items():
        raw = study.doc.get("grid", {}).get(name)
        if vals.dtype.kind in "OUSb" or len(vals) == 1:
            choices = [_py(v) for v in vals]
            dims.append(Dim(name, od.CategoricalDistribution(choices), "cat", vals,
                            lookup={c: i for i, c in enumerate(choices)}))
            continue
        is_int = vals.dtype.kind in "iu"
        order = np.argsort(vals, kind="stable")
        s = vals[order]
        lo, hi = _py(s[0]), _py(s[-1])
        step = _arithmetic(s)
        log_range = len(s) > 2 and ((isinstance(raw, dict) and raw.get("scale") == "log")
                                    or (step is None and s[0] > 0 and _arithmetic(np.log(s.astype(float))) is not None))
        common = dict(sorted_values=s, sorted_index=order)
        if log_range:
            dist = od.IntDistribution(lo, hi, log=True) if is_int else od.FloatDistribution(lo, hi, log=True)
            dims.append(Dim(name, dist, "snaplog", vals, **common))
        elif step is not None:
            if is_int and float(step).is_integer():
                dist = od.IntDistribution(int(lo), int(lo + int(step) * (len(s) - 1)), step=int(step))
            else:
                dist = _float_steps(float(lo), step, len(s))
            if dist is None:  # optuna would leave out some of the values: choose among them instead
                choices = [_py(v) for v in vals]
                dims.append(Dim(name, od.CategoricalDistribution(choices), "cat", vals,
                                lookup={c: i for i, c in enumerate(choices)}))
                continue
            dims.append(Dim(name, dist, "snap", vals, **common))
        elif isinstance(raw, dict):
            dist = od.IntDistribution(int(lo), int(hi)) if is_int else od.FloatDistribution(float(lo), float(hi))
            dims.append(Dim(name, dist, "snap", vals, **common))
        else:
            choices = [_py(v) for v in vals]
            dims.append(Dim(name, od.CategoricalDistribution(choices), "cat", vals,
                            lookup={c: i for i, c in enumerate(choices)}))
    return dims


# ---------------------------------------------------------------------------------------------
# samplers and storage


def make_sampler(opts: SearchOptions, file: str, seed: int):
    import optuna

    if opts.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                          n_startup_trials=min(opts.batch, 16))
    if opts.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(opts.batch, 8))
    if opts.sampler == "gp":
        for pkg, pip in (("torch", "torch"), ("scipy", "scipy")):
            if importlib.util.find_spec(pkg) is None:
                raise SpecError(file, "search", "sampler", f"'gp' needs {pkg}, which is not installed: "
                                f"pip install {pip} (or use sampler = \"tpe\", \"nsga2\" or \"random\")")
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def _redact(url: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", url)


def _sqlite_pragmas(dbapi_conn, _record):
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")      # readers (optuna-dashboard) do not block the search
    cur.execute("PRAGMA synchronous=NORMAL")    # no fsync per commit: ~20 commits per trial
    cur.close()


JOURNAL = "journal://"  # journal:///path/file.log: optuna's JournalStorage on an append-only file


def _rdb_storage(url: str):
    """optuna's storage for a URL: ``journal:///path`` an append-only journal file (the default in
    the output folder: writing a trial costs ~0.5 ms, against ~8-17 ms through SQLite's ORM; several
    processes may share it, on one machine or NFS, and optuna-dashboard reads it); otherwise the
    RDB storage, SQLite files in WAL mode without a sync per commit (a killed search keeps every
    committed trial; only an OS crash can lose the last few), PostgreSQL for workers on many machines."""
    import optuna

    if url.startswith(JOURNAL):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len(JOURNAL):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if not url.startswith("sqlite"):
        return optuna.storages.RDBStorage(url)
    from sqlalchemy import event

    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    engine = getattr(storage, "engine", None)
    if engine is not None:
        event.listen(engine, "connect", _sqlite_pragmas)
        engine.dispose()  # pooled connections were opened before the listener
    return storage


def _search_hash(study: Study, opts: SearchOptions) -> str:
    """What the trial values depend on: everything but the run's knobs (trials, batch, seed, ...)."""
    doc = {k: v for k, v in study.doc.items() if k not in ("search", "study")}
    st = study.doc.get("study", {})
    doc["study"] = {k: st[k] for k in ("layout", "objective", "dtype") if k in st}
    doc["search"] = {"objectives": opts.objectives, "constraints": [c.text for c in opts.constraints]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# the search


@dataclass
class SearchResult:
    study: Any                              # optuna.Study
    best: dict | None                       # {"trial", "index", "params", "values"} or None
    front: list[dict] | None                # Pareto front (multi-objective), else None
    n_trials: int                           # completed trials in the storage
    n_feasible: int
    elapsed_s: float                        # summed over every run of this search
    out_dir: Path | None
    n_new: int = 0                          # trials added by this call
    storage: str = ""
    options: SearchOptions | None = None
    tables: dict = field(default_factory=dict)   # "best" / "front" → pandas.DataFrame

    def summary(self) -> dict:
        d = {"best": self.best, "n_trials": self.n_trials, "n_feasible": self.n_feasible,
             "elapsed_s": self.elapsed_s}
        if self.front is not None:
            d["front"] = self.front
        return d


def _feasible(t) -> bool:
    return all(c <= 0.0 for c in t.constraints.values())


def optimize(spec, *, out=None, storage=None, trials=None, db=None, quiet=True, write=True,
             batch=None, seed=None, sampler=None) -> SearchResult:
    """Search a study's grid with optuna. ``spec``: a path, a dict shaped like the TOML, or a Study.

    ``storage``: a URL or an optuna storage object; default: the journal file ``<out>/optuna.log`` (out
    defaults to results/<study name>-search), or in memory with ``write=False``. ``trials``
    overrides [search] trials (a target total); ``batch``, ``seed``, ``sampler`` override theirs.
    With ``write=False`` nothing is written (unless ``storage`` names a file).

    Long: checks, storage, the optuna study and the batched loop in the order they must run, with
    the errors each step can raise.
    """
    import optuna

    from .engine import Evaluator

    t0 = time.perf_counter()
    db = db or hardware_db.load()
    study = spec if isinstance(spec, Study) else load_study(spec, db)
    file = study.file
    opts = parse_search(study)
    if trials is not None:
        if not _is_int(trials) or trials < 1:
            raise SpecError(file, "search", "trials", f"--trials must be a whole number ≥ 1, not {trials!r}")
        opts = dataclasses.replace(opts, trials=trials)
    for key, val in (("batch", batch), ("seed", seed)):
        if val is not None:
            if not _is_int(val) or val < (1 if key == "batch" else 0):
                raise SpecError(file, "search", key, f"must be a whole number, not {val!r}")
            opts = dataclasses.replace(opts, **{key: val})
    if sampler is not None:
        if sampler not in SAMPLERS:
            raise SpecError(file, "search", "sampler", f"'{sampler}' is not allowed (allowed: {', '.join(SAMPLERS)})")
        opts = dataclasses.replace(opts, sampler=sampler)
    if not study.dims:
        raise SpecError(file, "grid", None, "is empty: the search space is the [grid]; give at least one dimension")

    make_sampler(opts, file, opts.seed)  # missing packages fail before anything is made

    # storage and the optuna study
    out_dir = None
    if write:
        out_dir = Path(out) if out is not None else Path("results") / f"{study.name}-search"
    from_flag = storage is not None
    storage = storage if storage is not None else opts.storage
    if storage is None:
        storage = f"{JOURNAL}{(out_dir / 'optuna.log').resolve()}" if write else optuna.storages.InMemoryStorage()
    storage_label = _redact(storage) if isinstance(storage, str) else type(storage).__name__
    where = (None, None) if from_flag else ("search", "storage")
    if isinstance(storage, str) and "://" not in storage:
        raise SpecError(file, where[0], where[1] or "--storage", f"'{storage}' is not a URL (e.g. "
                        "journal:///search.log, sqlite:///search.db, postgresql://user@host/db)")
    # the evaluator, with every output the search needs
    needed = opts.names + [c.name for c in opts.constraints]
    chosen = study.options["outputs"]
    if chosen is not None:
        study = dataclasses.replace(study, options=dataclasses.replace(
            study.options, outputs=list(chosen) + [n for n in needed if n not in chosen]))
    ev = Evaluator(study, db)
    probe = ev.evaluate(np.zeros(1, np.int64), pad_to=opts.batch)  # every call has this shape: one compile
    for key, names in (("objectives", opts.names), ("constraints", [c.name for c in opts.constraints])):
        for n in names:
            if n not in probe:
                raise SpecError(file, "search", key, f"output '{n}' is not computed for this study (layout mode "
                                f"'{ev.mode}'; with [cluster] mfu given there is no layout, so tp, pp, ep, "
                                "microbatch, recompute, interleave are not outputs)")
    space = search_space(study)
    dists = {d.name: d.distribution for d in space}

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)
            try:
                if isinstance(storage, str):
                    if write and not from_flag and opts.storage is None:
                        out_dir.mkdir(parents=True, exist_ok=True)  # the default journal file lives there
                    storage_obj = _rdb_storage(storage)
                else:
                    storage_obj = storage
                ostudy = optuna.create_study(storage=storage_obj, study_name=study.name,
                                             directions=opts.directions, load_if_exists=True)
            except SpecError:
                raise
            except Exception as exc:  # SQLAlchemy / driver errors: name the URL, not a traceback
                msg = f"cannot open optuna storage {storage_label}: {type(exc).__name__}: {exc}".splitlines()[0]
                raise SpecError(file, where[0], where[1] or "--storage", msg) from None
            if [d.name.lower() for d in ostudy.directions] != opts.directions:
                raise SpecError(file, "search", "objectives", f"the storage {storage_label} holds a search "
                                f"'{study.name}' with other objective directions; use another --out/--storage or "
                                "[study] name")
            tag = {"spec_hash": _search_hash(study, opts), "objectives": opts.objectives,
                   "constraints": [c.text for c in opts.constraints], "dims": list(study.dims)}
            have = ostudy.user_attrs.get(ATTR)
            if have is None:
                ostudy.set_user_attr(ATTR, tag)
            elif have.get("spec_hash") != tag["spec_hash"]:
                raise SpecError(file, "search", None, f"the storage {storage_label} holds a search '{study.name}' of "
                                "a different spec (grid, fixed values, objectives or constraints changed); use "
                                "another --out/--storage or [study] name")
            if out_dir is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
            n_stored = len(ostudy.get_trials(deepcopy=False))
            ostudy.sampler = make_sampler(opts, file, opts.seed + n_stored)
            n_new = _loop(ostudy, ev, space, dists, opts, quiet)
            result = _collect(ostudy, ev, space, opts)
    finally:
        optuna.logging.set_verbosity(level)

    elapsed_run = time.perf_counter() - t0
    elapsed = float(ostudy.user_attrs.get(ELAPSED_ATTR, 0.0)) + elapsed_run
    ostudy.set_user_attr(ELAPSED_ATTR, elapsed)
    result.elapsed_s = elapsed
    result.out_dir = out_dir
    result.n_new = n_new
    result.storage = storage_label
    result.options = opts
    if write:
        _write(result, ev, study, opts, out_dir)
    return result


def _loop(ostudy, ev, space, dists, opts: SearchOptions, quiet: bool) -> int:
    """Ask ``batch`` trials, evaluate them in one jitted call, tell them; until the target total.

    The sampler works on an in-memory mirror of the storage: TPE reads every trial at each ask, and
    through SQLite that read cost ~0.12 s an ask (300 trials, batch 32: ask 43 s, tell 6 s, against
    6.5 s in memory). Before each batch the mirror takes the trials finished in the storage since
    (another worker's too); after it, the batch's finished trials are written to the storage at
    once. A batch interrupted between ask and tell leaves nothing in the storage."""
    import optuna

    from .engine import progress_bar

    complete = (optuna.trial.TrialState.COMPLETE,)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    store = ostudy
    ostudy = optuna.create_study(storage=optuna.storages.InMemoryStorage(), sampler=store.sampler,
                                 directions=[d.name.lower() for d in store.directions])
    mirrored: set[int] = set()  # the storage's trial ids the mirror holds

    def sync() -> int:
        """Mirror the storage's newly finished trials; the storage's count of completed trials."""
        stored = store.get_trials(deepcopy=False, states=finished)
        ostudy.add_trials([t for t in stored if t._trial_id not in mirrored])
        mirrored.update(t._trial_id for t in stored)
        return sum(t.state == optuna.trial.TrialState.COMPLETE for t in stored)

    def save(trials) -> None:
        for t in trials:  # (the storage numbers them in this order)
            mirrored.add(store._storage.create_new_trial(store._study_id,
                                                         template_trial=ostudy._storage.get_trial(t._trial_id)))

    done = sync()
    names = opts.names
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in opts.directions])
    # worst feasible value so far per objective (in the minimised sense): the infeasible penalty
    worst = np.full(len(names), -np.inf)
    for t in ostudy.get_trials(deepcopy=False, states=complete):
        if t.values is not None and t.constraints.get(FEASIBLE_KEY, 0.0) <= 0:
            worst = np.fmax(worst, signs * np.asarray(t.values, np.float64))
    progress = progress_bar(max(opts.trials, done), done, quiet)
    progress.unit, progress.desc = "trial", "search"
    n_new = 0
    pending = []
    try:
        while done < opts.trials:
            k = min(opts.batch, opts.trials - done)
            pending = [ostudy.ask(dists) for _ in range(k)]
            params = [t.params for t in pending]  # (each .params is a deep copy)
            idx = [d.indices([p[d.name] for p in params]) for d in space]
            flat = np.ravel_multi_index(idx, ev.shape).astype(np.int64)
            out = ev.evaluate(flat, pad_to=opts.batch)
            reason = out["reason"]
            ok = reason == 0
            vals = np.stack([np.asarray(out[n], np.float64) for n in names], axis=1) * signs
            good = ok[:, None] & np.isfinite(vals)
            if good.any():
                worst = np.fmax(worst, np.where(good, vals, -np.inf).max(axis=0))
            pen = np.where(np.isfinite(worst), worst, 0.0)
            told = np.where(good, vals, pen[None, :]) * signs
            cons = {c.text: c.violation(out[c.name]) for c in opts.constraints}
            for i, trial in enumerate(pending):
                trial.set_constraint(FEASIBLE_KEY, 0.0 if ok[i] else 1.0)
                for key, arr in cons.items():
                    trial.set_constraint(key, float(arr[i]))
                if not ok[i]:
                    trial.set_user_attr("reason", REASONS.get(int(reason[i]), str(int(reason[i]))))
                ostudy.tell(trial, told[i].tolist())
            save(pending)
            pending = []
            n_new += k
            progress.update(k)
            done = sync()
    finally:
        for trial in pending:  # interrupted between ask and tell: do not leave RUNNING trials behind
            try:
                ostudy.tell(trial, state=optuna.trial.TrialState.FAIL)
            except Exception:  # noqa: BLE001 (best effort while unwinding)
                pass
        progress.close()
    return n_new


def _collect(ostudy, ev, space, opts: SearchOptions) -> SearchResult:
    import optuna

    trials = ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    feas = [t for t in trials if _feasible(t)]
    best, front, tables = None, None, {}
    if feas:
        idx = [d.indices([t.params[d.name] for t in feas]) for d in space]  # FrozenTrial.params: no copy
        flat = np.ravel_multi_index(idx, ev.shape).astype(np.int64)
        signs = np.array([1.0 if d == "minimize" else -1.0 for d in opts.directions])
        f = np.array([t.values for t in feas], np.float64) * signs
        # one trial per distinct grid point (the first that reached it)
        _, first = np.unique(flat, return_index=True)
        first = np.sort(first)
        number = np.array([t.number for t in feas])
        order = first[np.lexsort((number[first],) + tuple(f[first].T[::-1]))]
        cols = lambda rows: {"index": flat[rows], "trial": number[rows]}  # noqa: E731
        rows_best = order[:N_BEST]
        best = _entry(ev, space, feas[order[0]], flat[order[0]], opts)
        tables["best"] = _table(ev, cols(rows_best), opts.batch)
        if len(opts.objectives) > 1:
            mask = red.pareto_mask(f[first])
            rows = first[mask]
            rows = rows[np.lexsort(tuple(f[rows].T[::-1]))]
            front = [_entry(ev, space, feas[r], flat[r], opts) for r in rows]
            tables["front"] = _table(ev, cols(rows), opts.batch)
    elif len(opts.objectives) > 1:
        front = []
    return SearchResult(ostudy, best, front, len(trials), len(feas), 0.0, None, tables=tables)


def _entry(ev, space, trial, flat, opts) -> dict:
    ix = np.unravel_index(int(flat), ev.shape)
    params = {d.name: _py(d.values[i]) for d, i in zip(space, ix)}
    return {"trial": trial.number, "index": int(flat), "params": params,
            "values": {n: float(v) for n, v in zip(opts.names, trial.values)}}


def _table(ev, cols, batch):
    """Rows re-evaluated at their grid points (in the search's batch shape: no new compile):
    dimensions, index, trial, then every output."""
    import pandas as pd

    flat = cols["index"]
    parts = [ev.evaluate(flat[i:i + batch], pad_to=batch) for i in range(0, len(flat), batch)]
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    ix = np.unravel_index(flat, ev.shape)
    data = {d: ev.study.dims[d][ix[k]] for k, d in enumerate(ev.dims)}
    data["index"] = flat
    data["trial"] = cols["trial"]
    for k in ev.grid_outputs:
        if k in out:
            data[k] = out[k]
    return pd.DataFrame(data)


# ---------------------------------------------------------------------------------------------
# files


def _write(result: SearchResult, ev, study: Study, opts: SearchOptions, out_dir: Path):
    from .results import df_to_files, versions

    for name in ("best", "front"):
        for suffix in (".csv", ".nc"):
            p = out_dir / f"{name}{suffix}"
            if p.exists():
                p.unlink()
    for name, df in result.tables.items():
        df_to_files(df, out_dir / name)
    figure = _figure(result, opts, out_dir)
    doc = {
        "name": study.name,
        "spec_file": study.file,
        "spec": study.doc,
        "spec_hash": result.study.user_attrs.get(ATTR, {}).get("spec_hash"),
        "versions": versions(),
        "storage": result.storage,
        "study_name": result.study.study_name,
        "sampler": opts.sampler,
        "objectives": opts.objectives,
        "constraints": [c.text for c in opts.constraints],
        "trials_target": opts.trials,
        "batch": opts.batch,
        "seed": opts.seed,
        "n_new": result.n_new,
        "layout": ev.mode,
        "law": study.law,
        "space": {d.name: {"distribution": type(d.distribution).__name__, "kind": d.kind,
                           "grid": [_py(v) for v in d.values]} for d in _space_of(study)},
        **result.summary(),
        "figure": figure,
    }
    doc["files"] = sorted(p.name for p in out_dir.iterdir() if not p.name.startswith("."))
    tmp = out_dir / "search.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2, default=json_default))
    os.replace(tmp, out_dir / "search.json")


def _space_of(study):
    return search_space(study)


def json_default(o):
    if isinstance(o, (np.integer, np.floating, np.bool_)):
        return o.item()
    return str(o)


def _figure(result: SearchResult, opts: SearchOptions, out_dir: Path) -> str | None:
    """optuna's Pareto-front figure (2 or 3 objectives) or its optimisation history, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization.matplotlib as ovm

    fig_dir = out_dir / "figures"
    n_obj = len(opts.objectives)
    if result.n_trials == 0 or n_obj > 3:
        return None
    fig_dir.mkdir(exist_ok=True)
    units = output_units()
    labels = [objective_label(o, units) for o in opts.objectives]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if n_obj > 1:
                ax = ovm.plot_pareto_front(result.study, target_names=labels)
                name = "pareto_front.png"
            else:
                ax = ovm.plot_optimization_history(result.study, target_name=labels[0])
                name = "optimization_history.png"
                vals = [t.value for t in result.study.get_trials(deepcopy=False) if t.value is not None]
                if vals and min(vals) > 0 and max(vals) > 100 * min(vals):
                    ax.set_yscale("log")
        except (ValueError, optuna.exceptions.OptunaError) as exc:  # e.g. no feasible trial to draw
            log.warning("carbon-sweep optimize: no figure: %s", exc)
            return None
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(7, 5)
        fig.tight_layout()
        path = fig_dir / name
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return str(path.relative_to(out_dir))


# ---------------------------------------------------------------------------------------------
# the command


def unit_suffix(name: str, units: dict, fmt: str = " {}") -> str:
    """An output's unit written with ``fmt``, or nothing for a pure number (unit '1')."""
    unit = units.get(name, ("1",))[0]
    return "" if unit == "1" else fmt.format(unit)


def objective_label(objective: str, units: dict) -> str:
    """An axis label for an objective: 'total_tco2e [t CO2e]', 'mfu (maximised)'."""
    from . import reductions as red

    name, sign = red.parse_objective(objective)
    return name + unit_suffix(name, units, " [{}]") + (" (maximised)" if sign < 0 else "")


