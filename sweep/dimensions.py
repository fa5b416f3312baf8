"""Dimensions: how a grid dimension's values become the chain's inputs, through one mapping.

A dimension is numeric (each value is the input of its name: ``layers``, ``mfu``; a few spec keys
name an input otherwise: ``carbon_intensity`` → ``carbon_intensity_kg_per_kwh``), coded (a word per
value: ``ffn`` → ``ffn_matrices``, ``recompute`` → its code, ``cp_comm_type`` → ``cp_allgather``)
or a table (``hardware``, ``region``: each value a row of database figures, gathered by index; a
device's calibrated layout-model constants are its ``cal__`` columns). ``DIMENSIONS`` maps the
coded and table ones; every other dimension is numeric. A new table dimension (a precision, a start
hour) is one entry here.

Two uses, the same numbers: ``columns`` gives a dimension's inputs over its coordinates (the grid
path gathers them by index inside the jitted call), ``at`` at arbitrary values (the search, the
kept rows, optuna's trials).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .calibration import calibration_for
from .inputs import hardware_row, site_row
from .spec import CP_COMM_CODE, RECOMPUTE_CODE

SPEC_TO_X = {"carbon_intensity": "carbon_intensity_kg_per_kwh", "wue": "wue_l_per_kwh"}
CAL = "cal__"  # prefix of a table's calibration columns


@dataclass(frozen=True)
class Numeric:
    """Each value is the input named ``key`` (default: the dimension's name)."""
    key: str | None = None

    def columns(self, name, values, tables, fixed, dtype) -> dict:
        return {self.key or SPEC_TO_X.get(name, name): np.asarray(values).astype(dtype)}

    def at(self, name, values, labels, tables, fixed, dtype) -> dict:
        return {self.key or SPEC_TO_X.get(name, name): np.asarray(values).astype(dtype)}


@dataclass(frozen=True)
class Coded:
    """Each value a word with a number: ``codes[word]`` (``default`` for a word not listed)."""
    key: str
    codes: tuple            # ((word, number), ...)
    default: float | None = None

    def number(self, word):
        codes = dict(self.codes)
        return codes[word] if self.default is None else codes.get(word, self.default)

    def columns(self, name, values, tables, fixed, dtype) -> dict:
        return {self.key: np.array([self.number(v) for v in values], dtype)}

    def at(self, name, values, labels, tables, fixed, dtype) -> dict:
        return {self.key: np.vectorize(self.number, otypes=[np.float64])(np.asarray(values)).astype(dtype)}


@dataclass(frozen=True)
class Table:
    """Each value a row of figures (``tables[table]``, and ``tables[calibration]`` as ``cal__``
    columns); ``fixed_by``: an input a spec key given outright overrides (so the row's is not used)."""
    table: str
    calibration: str | None = None
    fixed_by: tuple = ()    # ((input, spec key), ...)

    def _rows(self, tables, fixed) -> dict:
        skip = {k for k, spec_key in self.fixed_by if spec_key in fixed}
        rows = {k: a for k, a in tables[self.table].items() if k not in skip}
        if self.calibration is not None:
            rows.update({CAL + k: a for k, a in tables[self.calibration].items()})
        return rows

    def columns(self, name, values, tables, fixed, dtype) -> dict:
        return {k: a.astype(dtype) for k, a in self._rows(tables, fixed).items()}

    def at(self, name, values, labels, tables, fixed, dtype) -> dict:
        labels = np.asarray(labels)
        sorter = np.argsort(labels)
        ix = sorter[np.searchsorted(labels, np.asarray(values), sorter=sorter)]
        return {k: a[ix].astype(dtype) for k, a in self._rows(tables, fixed).items()}


DIMENSIONS = {
    "hardware": Table("hardware", calibration="cal"),
    "region": Table("region", fixed_by=(("carbon_intensity_kg_per_kwh", "carbon_intensity"), ("pue", "pue"),
                                        ("wue_l_per_kwh", "wue"))),
    "ffn": Coded("ffn_matrices", (("gelu", 2.0), ("swiglu", 3.0)), default=2.0),
    "recompute": Coded("recompute", tuple(RECOMPUTE_CODE.items())),
    "cp_comm_type": Coded("cp_allgather", tuple(CP_COMM_CODE.items())),
}


def dimension(name: str):
    """The kind of a dimension (``DIMENSIONS``, else numeric)."""
    return DIMENSIONS.get(name, Numeric())


def load_tables(study, db) -> dict[str, dict[str, np.ndarray]]:
    """The figures of the table dimensions a study sweeps: {table: {column: array over its values}}
    (float64), from the database: each device's row and calibration, each region's row."""
    v = study.base
    tables = {}
    if "hardware" in study.dims:
        ids = list(study.dims["hardware"])
        rows = [hardware_row(db, h, v["precision"], v["embodied_method"], v.get("host")) for h in ids]
        tables["hardware"] = {k: np.array([r[k] for r in rows], np.float64) for k in rows[0]}
        cals = [calibration_for(db, h) for h in ids]
        tables["cal"] = {k: np.array([c.get(k, np.nan) for c in cals]) for k in cals[0]}
    if "region" in study.dims:
        rows = [site_row(db, {**v, "region": r}) for r in study.dims["region"]]
        tables["region"] = {k: np.array([r[k] for r in rows], np.float64) for k in rows[0]}
    return tables


def columns(study, tables, dtype) -> dict[str, dict[str, np.ndarray]]:
    """Every dimension's inputs over its coordinates: {dimension: {input: array}} (the grid path's)."""
    return {d: dimension(d).columns(d, vals, tables, study.fixed, dtype) for d, vals in study.dims.items()}


def inputs_at(study, tables, values: dict, x: dict, cal: dict, dtype) -> None:
    """Set in ``x`` (chain inputs) and ``cal`` (calibration) the inputs of dimensions at arbitrary
    values ({dimension: 1-D array}; a table dimension's values among its coordinates)."""
    for d, vals in values.items():
        for k, a in dimension(d).at(d, vals, study.dims.get(d), tables, study.fixed, dtype).items():
            if k.startswith(CAL):
                cal[k[len(CAL):]] = a
            else:
                x[k] = a
