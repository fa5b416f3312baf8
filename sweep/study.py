"""Study specs: the estimate sections for fixed values, ``[grid]`` for dimensions, ``[study]`` for
what to keep and reduce (and ``[search]`` for `carbon-sweep optimize`, see sweep.search).

[grid] key = [v1, v2, ...]                               a list
       key = {start, stop, num, scale = "linear"|"log"}  num points, both ends included
       key = {start, stop, step}                         start, start+step, ... ≤ stop
Keys are any numeric or true/false key of the estimate spec, plus the categorical ones
(sweep.dimensions.DIMENSIONS: ``hardware``, ``region``, ``ffn``, ``recompute``, ``cp_comm_type``).
A key is given in [grid] or in its section, not both.
"""

from __future__ import annotations

import dataclasses
import decimal
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import hardware_db
from hardware_db import closest

from . import uncertainty
from .dimensions import DIMENSIONS
from .names import elasticity_of, output_units, quantile_base
from .spec import BOOL, INT, KEYS, NUM, SpecError, check_sections, check_value, flat_values, read_toml
from .spec import LAYOUT_KEYS, OBJECTIVE_OUTPUT, resolve

CATEGORICAL_DIMS = tuple(DIMENSIONS)  # the coded and table dimensions, named once in sweep.dimensions
NUMERIC_DIMS = tuple(k for k, key in KEYS.items() if key.kind in (INT, NUM, BOOL))
GRID_DIMS = NUMERIC_DIMS + CATEGORICAL_DIMS
SMALL_GRID = 2_000_000  # grids up to this many points are kept in memory and written as NetCDF (sweep.engine)
STUDY_KEYS = ("name", "outputs", "layout", "objective", "pareto", "top", "keep_full_grid", "chunk_size", "dtype",
              "description", "marks", "kind")
LAYOUT_MODES = ("best", "fixed")
@dataclass(frozen=True)
class StudyOptions(Mapping):
    """A study's validated ``[study]`` options, typed and frozen (``dataclasses.replace`` makes a
    changed copy). Also read as a mapping (``options["dtype"]``), as the TOML section is."""
    outputs: list | None = None           # the outputs kept (None: all)
    layout: str = "best"                  # "best" (optimised per point) | "fixed" (the spec's)
    objective: str = "co2e"               # what a best layout minimises: co2e | time | energy
    pareto: list = field(default_factory=list)   # lists of objectives ("max:name" maximises)
    top: dict | None = None               # {"by": output, "n": rows}
    keep_full_grid: bool = True
    chunk_size: int | None = None
    dtype: str = "float64"                # float64 | float32
    description: str = ""
    marks: list = field(default_factory=list)    # published points drawn on the figures
    kind: str = "grid"                    # grid | validation

    def __getitem__(self, key):
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self.__dataclass_fields__)

    def __len__(self):
        return len(self.__dataclass_fields__)


@dataclass(frozen=True)
class Study:
    file: str
    doc: dict
    name: str
    fixed: dict[str, Any]            # key -> value given in the estimate sections
    dims: dict[str, np.ndarray]       # dimension -> coordinate values (order = file order)
    options: StudyOptions
    base: dict[str, Any]              # resolved values at the first grid point (defaults filled)
    law: str | None = None
    search: dict = field(default_factory=dict)
    uncertainty: Any = None           # sweep.uncertainty.Uncertainty of an [uncertainty] section, or None
    start: Any = None                 # [grid] start: None, "best", or (hours of the year, labels) (sweep.when)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.dims.values())

    @property
    def n_points(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.dims else 1

    def spec_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _range_values(file, key, table) -> np.ndarray:
    err = lambda msg: SpecError(file, "grid", key, msg)  # noqa: E731
    allowed = {"start", "stop", "num", "scale", "step"}
    unknown = set(table) - allowed
    if unknown:
        u = sorted(unknown)[0]
        raise err(f"unknown range key '{u}'{closest(u, allowed)} (a range is {{start, stop, num, scale}} or "
                  "{start, stop, step})")
    if "start" not in table or "stop" not in table:
        raise err("a range needs start and stop")
    start, stop = table["start"], table["stop"]
    for name, val in (("start", start), ("stop", stop)):
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val):
            raise err(f"range {name} must be a finite number, not {val!r}")
    if stop < start:
        raise err(f"range stop ({stop}) is below start ({start})")
    if "step" in table:
        if "num" in table or "scale" in table:
            raise err("give either {start, stop, step} or {start, stop, num, scale}, not both")
        step = table["step"]
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0:
            raise err(f"range step must be a number > 0, not {step!r}")
        n = int(math.floor((stop - start) / step + 1e-9)) + 1
        if n > 10_000_000:
            raise err(f"range has {n} values; at most 10,000,000 per dimension")
        return _progression(start, step, n)
    num = table.get("num")
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise err(f"range num must be a whole number ≥ 1, not {num!r}")
    scale = table.get("scale", "linear")
    if scale not in ("linear", "log"):
        raise err(f"range scale '{scale}' is not allowed (allowed: linear, log)")
    if scale == "log":
        if start <= 0:
            raise err(f"a log range needs start > 0, not {start}")
        return np.geomspace(start, stop, num)
    if num > 1:
        step = (decimal.Decimal(repr(stop)) - decimal.Decimal(repr(start))) / (num - 1)
        if step * (num - 1) == decimal.Decimal(repr(stop)) - decimal.Decimal(repr(start)):  # a decimal step
            return _progression(start, step, num)
    return np.linspace(start, stop, num)


def _progression(start, step, n: int) -> np.ndarray:
    """start, start + step, ... (n values) as the decimals a user writes: {start = 0.2, step = 0.05}
    gives 0.3, not 0.30000000000000004, so coordinates are the numbers one selects by. Computed in
    integers scaled by a power of ten and divided once (correctly rounded: each value is the double
    nearest its decimal); integer ranges stay integers; float arithmetic where that cannot be exact."""
    d_start, d_step = decimal.Decimal(repr(start)), decimal.Decimal(str(step))
    if isinstance(start, int) and isinstance(step, int):
        return start + step * np.arange(n)
    p = max(0, -d_start.as_tuple().exponent, -d_step.as_tuple().exponent)
    a, b = int(d_start.scaleb(p)), int(d_step.scaleb(p))
    if p > 22 or abs(a) + abs(b) * (n - 1) >= 2 ** 53:  # (10^p or the numerators not exact in float64)
        return float(start) + float(step) * np.arange(n)
    return (a + b * np.arange(n, dtype=np.int64)) / 10.0 ** p


def precision_of(doc) -> str:
    return doc.get("training", {}).get("precision", KEYS["precision"].default)


def _dim_values(file, key, raw, db, raw_doc=None) -> np.ndarray:
    err = lambda msg: SpecError(file, "grid", key, msg)  # noqa: E731
    if key not in GRID_DIMS:
        hint = closest(key, GRID_DIMS)
        raise err(f"unknown dimension{hint} (a grid key is a numeric spec key or one of "
                  f"{', '.join(CATEGORICAL_DIMS)})")
    if isinstance(raw, dict):
        if key in CATEGORICAL_DIMS:
            raise err("a categorical dimension takes a list, not a range")
        values = _range_values(file, key, raw)
        if KEYS[key].kind == INT:
            values = np.unique(np.round(values).astype(np.int64))
        values = [v.item() for v in values]
    elif isinstance(raw, list):
        values = raw
    else:
        raise err(f"must be a list or a range table, not {raw!r}")
    if len(values) == 0:
        raise err("is an empty list")
    if key == "hardware":
        for v in values:
            if not isinstance(v, str) or v not in db.accelerators:
                raise err(f"unknown hardware '{v}'{closest(str(v), db.accelerators)} (see: carbon-sweep hardware list)")
        precision = precision_of(raw_doc) if raw_doc is not None else "bf16"
        lacking = [v for v in values if precision not in db.precisions(v)]
        if lacking:
            raise err(f"'{lacking[0]}' has no published {precision} peak (allowed precisions for it: "
                      f"{', '.join(db.precisions(lacking[0]))}); set [training] precision or drop it")
    elif key == "region":
        for v in values:
            if not isinstance(v, str) or v not in db.regions:
                raise err(f"unknown region '{v}'{closest(str(v), db.regions)} (see: carbon-sweep regions list)")
    else:
        values = [check_value(file, key, v, "grid") for v in values]
    if len(set(values)) != len(values):
        raise err("has repeated values")
    if key in CATEGORICAL_DIMS:
        return np.asarray(values, dtype=object).astype(str)
    if KEYS[key].kind == BOOL:
        return np.asarray(values, dtype=bool)
    return np.asarray(values, dtype=np.int64 if KEYS[key].kind == INT else np.float64)


def _check_outputs(file, names, where="outputs", allowed=None):
    allowed = allowed or output_units()
    for n in names:
        base = n[4:] if n.startswith(("max:", "min:")) else n
        if "_elasticity_" in base and base not in allowed:  # <output>_elasticity_<input>
            out, _, inp = base.partition("_elasticity_")
            if out not in allowed or elasticity_of(base) is None:
                raise SpecError(file, "study", where, f"'{base}': '{out}' is not an output with an elasticity"
                                f"{closest(out, allowed)}")
            if elasticity_of(base, uncertainty.UNCERTAIN_INPUTS) is None:
                raise SpecError(file, "study", where, f"'{base}': '{inp}' is not an input an elasticity is taken "
                                f"for{closest(inp, uncertainty.UNCERTAIN_INPUTS)} "
                                f"(allowed: {', '.join(uncertainty.UNCERTAIN_INPUTS)})")
            continue
        if base not in allowed:
            raise SpecError(file, "study", where, f"unknown output '{base}'{closest(base, allowed)} "
                            f"(allowed: {', '.join(allowed)})")


def _study_options(file, body: dict, has_law: bool, sampled: bool = False) -> StudyOptions:
    for k in body:
        if k not in STUDY_KEYS:
            raise SpecError(file, "study", k, f"unknown key{closest(k, STUDY_KEYS)} (allowed: {', '.join(STUDY_KEYS)})")
    o = {
        "outputs": body.get("outputs"),
        "layout": body.get("layout", "best"),
        "objective": body.get("objective", "co2e"),
        "pareto": body.get("pareto", []),
        "top": body.get("top"),
        "keep_full_grid": body.get("keep_full_grid", True),
        "chunk_size": body.get("chunk_size"),
        "dtype": body.get("dtype", "float64"),
        "description": body.get("description", ""),
        "marks": body.get("marks", []),
        "kind": body.get("kind", "grid"),
    }
    if o["kind"] not in ("grid", "validation"):
        raise SpecError(file, "study", "kind", f"'{o['kind']}' is not allowed (allowed: grid, validation)")
    marks = o["marks"]
    if not isinstance(marks, list) or not all(isinstance(m, dict) and isinstance(m.get("label", ""), str)
                                              for m in marks):
        raise SpecError(file, "study", "marks", 'must be a list of tables such as {mfu = 0.35, lifespan_years = 2, '
                        'gpus_consumed = 2515, label = "paper"}: published points to draw on the figures')
    if o["layout"] not in LAYOUT_MODES:
        raise SpecError(file, "study", "layout", f"'{o['layout']}' is not allowed (allowed: best, fixed)")
    if o["objective"] not in OBJECTIVE_OUTPUT:
        raise SpecError(file, "study", "objective",
                        f"'{o['objective']}' is not allowed (allowed: {', '.join(OBJECTIVE_OUTPUT)})")
    if o["dtype"] not in ("float64", "float32"):
        raise SpecError(file, "study", "dtype", f"'{o['dtype']}' is not allowed (allowed: float64, float32)")
    if not isinstance(o["keep_full_grid"], bool):
        raise SpecError(file, "study", "keep_full_grid", "must be true or false")
    cs = o["chunk_size"]
    if cs is not None and (isinstance(cs, bool) or not isinstance(cs, int) or cs < 1):
        raise SpecError(file, "study", "chunk_size", f"must be a whole number ≥ 1, not {cs!r}")
    allowed = dict(output_units(sampled=sampled))
    if not has_law:
        allowed.pop("loss"), allowed.pop("loss_in_range")
    if o["outputs"] is not None:
        if not isinstance(o["outputs"], list) or not all(isinstance(n, str) for n in o["outputs"]) or not o["outputs"]:
            raise SpecError(file, "study", "outputs", "must be a non-empty list of output names")
        _check_outputs(file, o["outputs"], allowed=allowed)
    pareto = o["pareto"]
    if not isinstance(pareto, list) or not all(isinstance(p, list) and len(p) >= 2
                                               and all(isinstance(n, str) for n in p)
                                               for p in pareto):
        raise SpecError(file, "study", "pareto", 'must be a list of lists of two or more output names, e.g. '
                        '[["loss", "total_tco2e"]] ("max:name" to maximise)')
    for p in pareto:
        _check_outputs(file, p, "pareto", allowed=allowed)
    top = o["top"]
    if top is not None:
        if not isinstance(top, dict) or set(top) - {"by", "n"} or "by" not in top:
            raise SpecError(file, "study", "top", 'must be a table {by = "total_tco2e", n = 100}')
        _check_outputs(file, [top["by"]], "top", allowed=allowed)
        n = top.get("n", 100)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise SpecError(file, "study", "top", f"n must be a whole number ≥ 1, not {n!r}")
        o["top"] = {"by": top["by"], "n": n}
    return StudyOptions(**o)


def load_study(path_or_doc, db=None, *, extra_sections=("grid", "study", "search")) -> Study:
    """Read and validate a study (a path, or a dict shaped like the TOML)."""
    db = db or hardware_db.load()
    if isinstance(path_or_doc, dict):
        file, doc = "<study>", path_or_doc
    else:
        file, doc = str(path_or_doc), read_toml(path_or_doc)
    check_sections(file, doc, allowed_extra=tuple(extra_sections) + ("uncertainty",))
    if doc.get("study", {}).get("kind") == "validation":
        extra = [s for s in doc if s != "study"]
        if extra:
            raise SpecError(file, extra[0], None, "a validation study has only a [study] section")
        options = _study_options(file, doc["study"], has_law=True)
        name = doc["study"].get("name") or Path(file).stem
        return Study(file=file, doc=doc, name=name, fixed={}, dims={}, options=options, base={}, law=None)
    fixed = flat_values(doc)
    grid_raw = dict(doc.get("grid", {}))
    start = None
    if "start" in grid_raw:  # not a dimension of the engine's grid: applied to its result (sweep.when)
        from .when import grid_starts

        if "start" in fixed:
            raise SpecError(file, "grid", "start", "is also given in [site]; give it in one place only")
        start = grid_starts(file, grid_raw.pop("start"))
    dims = {}
    for key, raw in grid_raw.items():
        if key in fixed:
            raise SpecError(file, "grid", key, f"is also given in [{KEYS[key].section}]; give it in one place only")
        dims[key] = _dim_values(file, key, raw, db, doc)
    # Validate the spec at the first grid point (cross-key rules on grid keys are masked per point).
    first = dict(fixed)
    for key, vals in dims.items():
        v = vals[0]
        first[key] = v.item() if hasattr(v, "item") else v
    where = {k: "grid" for k in dims}
    base = resolve(file, first, db, where=where, grid_keys=set(dims) | ({"start"} if start is not None else set()))
    quality = doc.get("quality", {})
    law = quality.get("law", KEYS["law"].default)
    laws = db.docs.get("scaling_laws.toml", {})
    if law not in laws:
        raise SpecError(file, "quality", "law", f"unknown law '{law}'{closest(law, laws)} (allowed: {', '.join(laws)})")
    has_arch = base.get("layers") is not None or "layers" in dims
    options = _study_options(file, doc.get("study", {}), has_law=True, sampled="uncertainty" in doc)
    # layout keys given (fixed, or as grid dimensions) mean a fixed layout, as for `estimate`
    given = [k for k in LAYOUT_KEYS if k in dims or k in fixed]
    mfu_given = base.get("mfu") is not None or "mfu" in dims
    if "layout" not in doc.get("study", {}):
        options = dataclasses.replace(options, layout="fixed" if given else "best")
    elif options["layout"] == "best" and given and not mfu_given:
        k = given[0]
        raise SpecError(file, "grid" if k in dims else KEYS[k].section, k,
                        'is chosen per point by [study] layout = "best": remove it, or set layout = "fixed"')
    name = doc.get("study", {}).get("name") or Path(file).stem
    if not isinstance(name, str) or not name:
        raise SpecError(file, "study", "name", "must be a non-empty string")
    if options["layout"] == "best" and base.get("mfu") is None and "mfu" not in dims and not has_arch:
        raise SpecError(file, "cluster", "mfu", "is required when the model is given by params only")
    unc = None
    if "uncertainty" in doc:
        unc = uncertainty.parse(file, doc["uncertainty"], db, mfu_given=mfu_given,
                                moe=bool(np.all(np.asarray(dims.get("experts", [base.get("experts") or 1])) > 1)),
                                sweep=True)
        # the outputs the reductions and [study] outputs read quantiles of are sampled too
        named = [n[4:] if n.startswith(("max:", "min:")) else n for n in
                 (options["outputs"] or []) + [n for p in options["pareto"] for n in p]
                 + ([options["top"]["by"]] if options["top"] else [])]
        bases = tuple(dict.fromkeys(list(unc.outputs) + [b for n in named if (b := quantile_base(n))]))
        unc = dataclasses.replace(unc, outputs=bases)
        if unc.keep_samples:
            uncertainty.check_kept_samples(file, unc, options, int(np.prod([len(v) for v in dims.values()])),
                                           SMALL_GRID)
            if start is not None:
                raise SpecError(file, "uncertainty", "keep_samples", "is not available with [grid] start (the "
                                "samples would not follow the start hour's carbon intensity); use the quantile outputs")
    return Study(file=file, doc=doc, name=name, fixed=fixed, dims=dims, options=options, base=base, law=law,
                 search=doc.get("search", {}), uncertainty=unc, start=start)

