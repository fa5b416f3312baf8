"""The hardware, region and reference database: CSV/TOML files next to this module, loaded through
a schema check, optionally extended by a user's folder (``CARBON_SWEEP_DB`` or ``--db``).

Every table is keyed by ``id``. A user's file with the same name adds rows or replaces rows with the
same id; the same schema check applies. See SCHEMA.md for the columns and their units.
"""

from __future__ import annotations

import csv
import difflib
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).parent
ENV_VAR = "CARBON_SWEEP_DB"

STR, INT, NUM = "str", "int", "num"

# column -> (type, required). Numbers may be empty (unknown -> NaN) unless required.
SCHEMAS: dict[str, dict[str, tuple[str, bool]]] = {
    "accelerators.csv": {
        "id": (STR, True), "name": (STR, True), "vendor": (STR, False), "year": (INT, False),
        "peak_fp32_tflops": (NUM, False), "peak_tf32_tflops": (NUM, False),
        "peak_fp16_tflops": (NUM, False), "peak_bf16_tflops": (NUM, False),
        "peak_fp8_tflops": (NUM, False), "hbm_gb": (NUM, True), "hbm_usable_mib": (NUM, False),
        "hbm_bw_gbs": (NUM, True),
        "tdp_w": (NUM, False), "idle_w": (NUM, False), "devices_per_node": (INT, True),
        "intra_node_bw_gbs": (NUM, False), "inter_node_bw_gbs": (NUM, False),
        "die_area_mm2": (NUM, False), "process_node": (STR, False), "hbm_stacks": (INT, False),
        "mass_kg": (NUM, False), "pcf_kgco2e": (NUM, False), "host": (STR, False),
        "source": (STR, True), "notes": (STR, False),
    },
    "hosts.csv": {
        "id": (STR, True), "name": (STR, True), "cpus": (INT, False),
        "cpu_die_area_mm2": (NUM, False), "cpu_process_node": (STR, False),
        "cpu_tdp_w": (NUM, False), "dram_gb": (NUM, False), "ssd_gb": (NUM, False),
        "dram_w": (NUM, False), "network_w": (NUM, False), "other_w": (NUM, False),
        "other_kgco2e": (NUM, False), "source": (STR, True), "notes": (STR, False),
    },
    "process_nodes.csv": {
        "id": (STR, True), "method": (STR, True), "cpa_kgco2e_per_cm2": (NUM, True),
        "yield": (NUM, False), "source": (STR, True), "notes": (STR, False),
    },
    "memory.csv": {
        "id": (STR, True), "method": (STR, True), "kgco2e_per_gb": (NUM, True),
        "source": (STR, True), "notes": (STR, False),
    },
    "regions.csv": {
        "id": (STR, True), "name": (STR, True), "kind": (STR, False),
        "carbon_intensity_kg_per_kwh": (NUM, True), "year": (INT, False), "pue": (NUM, False),
        "wue_l_per_kwh": (NUM, False), "source": (STR, True), "notes": (STR, False),
    },
    "prices.csv": {
        "id": (STR, True), "provider": (STR, True), "offer": (STR, True), "instance": (STR, True),
        "hardware": (STR, True), "devices_per_instance": (INT, True), "usd_per_instance_hour": (NUM, True),
        "region": (STR, False), "date": (STR, True), "source": (STR, True), "notes": (STR, False),
    },
}
# Tables keyed by (id, method) rather than id alone.
KEYED_BY_METHOD = {"process_nodes.csv", "memory.csv"}
PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "fp8")
SIXTEEN_BIT = ("fp16", "bf16")
BYTES_PER_VALUE = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp8": 1}


class DatabaseError(ValueError):
    """A data file breaks the schema: the message names the file, row, column and what is allowed."""


def closest(word: str, options) -> str:
    """'; did you mean X?' for the closest option, or '' when none is close."""
    near = difflib.get_close_matches(str(word), list(options), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""


def _parse_value(path: Path, row_id: str, col: str, raw: str, kind: str, required: bool):
    raw = (raw or "").strip()
    where = f"{path}: row '{row_id}', column '{col}'"
    if raw == "":
        if required:
            raise DatabaseError(f"{where}: a value is required")
        return "" if kind == STR else math.nan
    if kind == STR:
        return raw
    try:
        value = float(raw)
    except ValueError:
        raise DatabaseError(f"{where}: '{raw}' is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise DatabaseError(f"{where}: {raw} is not allowed (a finite number >= 0, or empty for unknown)")
    if kind == INT:
        if value != int(value):
            raise DatabaseError(f"{where}: {raw} must be a whole number")
        return int(value)
    return value


def read_table(path: Path) -> list[dict]:
    """Read one CSV table through its schema; '#' lines are comments."""
    schema = SCHEMAS[path.name]
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            lines = [ln for ln in fh if not ln.lstrip().startswith("#") and ln.strip()]
    except OSError as exc:
        raise DatabaseError(f"{path}: cannot be read ({exc.strerror})") from None
    reader = csv.DictReader(lines)
    columns = reader.fieldnames or []
    unknown = [c for c in columns if c not in schema]
    if unknown:
        raise DatabaseError(
            f"{path}: unknown column '{unknown[0]}'{closest(unknown[0], schema)} (allowed: {', '.join(schema)})"
        )
    missing = [c for c, (_, req) in schema.items() if req and c not in columns]
    if missing:
        raise DatabaseError(f"{path}: required column '{missing[0]}' is missing")
    rows = []
    for n, raw in enumerate(reader, start=2):
        row_id = (raw.get("id") or "").strip() or f"line {n}"
        if None in raw:
            raise DatabaseError(f"{path}: row '{row_id}' has more fields than the header")
        rows.append({c: _parse_value(path, row_id, c, raw.get(c, ""), *schema[c]) for c in schema})
    return rows


def _key(name: str, row: dict):
    return (row["id"], row["method"]) if name in KEYED_BY_METHOD else row["id"]


@dataclass
class Database:
    """All tables, keyed by id (or (id, method)), plus the TOML documents."""

    tables: dict[str, dict] = field(default_factory=dict)
    docs: dict[str, dict] = field(default_factory=dict)
    compositions: dict[str, dict] = field(default_factory=dict)
    folders: list[Path] = field(default_factory=list)

    def with_calibration(self, path) -> "Database":
        """This database with a calibration file's tables merged into calibration.toml (entry by
        entry, as a --db folder's are): what ``[cluster] calibration = "file"`` runs with."""
        import copy

        docs = dict(self.docs)
        docs["calibration.toml"] = copy.deepcopy(self.docs.get("calibration.toml", {}))
        _deep_update(docs["calibration.toml"], _read_toml(Path(path)))
        return Database(tables=self.tables, docs=docs, compositions=self.compositions, folders=list(self.folders))

    # -- lookups ---------------------------------------------------------------------------
    @property
    def accelerators(self) -> dict[str, dict]:
        return self.tables["accelerators.csv"]

    @property
    def regions(self) -> dict[str, dict]:
        return self.tables["regions.csv"]

    @property
    def hosts(self) -> dict[str, dict]:
        return self.tables["hosts.csv"]

    def accelerator(self, hw_id: str) -> dict:
        if hw_id not in self.accelerators:
            raise KeyError(f"unknown hardware '{hw_id}'{closest(hw_id, self.accelerators)}")
        return self.accelerators[hw_id]

    def region(self, region_id: str) -> dict:
        if region_id not in self.regions:
            raise KeyError(f"unknown region '{region_id}'{closest(region_id, self.regions)}")
        return self.regions[region_id]

    def peak_tflops(self, hw_id: str, precision: str) -> float:
        """Dense peak at a precision. bf16 and fp16 are one 16-bit matrix format here: a device that
        publishes only one of them (V100: fp16; TPUs: bf16) uses it for both."""
        row = self.accelerator(hw_id)
        value = row.get(f"peak_{precision}_tflops", math.nan)
        if not math.isfinite(value) and precision in SIXTEEN_BIT:
            other = SIXTEEN_BIT[1 - SIXTEEN_BIT.index(precision)]
            value = row.get(f"peak_{other}_tflops", math.nan)
        return value

    def precisions(self, hw_id: str) -> list[str]:
        return [p for p in PRECISIONS if math.isfinite(self.peak_tflops(hw_id, p))]

    def accelerator_si(self, hw_id: str, precision: str = "bf16") -> dict:
        """The accelerator's figures in SI units, as the kernels take them."""
        row = self.accelerator(hw_id)
        return {
            "peak_flops": self.peak_tflops(hw_id, precision) * 1e12,
            # memory a run can use: what NVML reports where published (MiB), else the datasheet's GB
            "hbm_bytes": (row["hbm_usable_mib"] * 2.0**20 if math.isfinite(row.get("hbm_usable_mib", math.nan))
                          else row["hbm_gb"] * 1e9),
            "hbm_bw_bytes_s": row["hbm_bw_gbs"] * 1e9,
            "intra_bw_bytes_s": row["intra_node_bw_gbs"] * 1e9,
            "inter_bw_bytes_s": row["inter_node_bw_gbs"] * 1e9,
            "devices_per_node": float(row["devices_per_node"]),
            "tdp_w": row["tdp_w"],
            "idle_w": row["idle_w"],
        }

    def process_cpa(self, node: str, method: str) -> tuple[float, float]:
        """(kg CO2e per cm², yield) of a process node under an embodied method; NaN when unknown."""
        row = self.tables["process_nodes.csv"].get((node, method))
        if row is None:
            return math.nan, math.nan
        y = row["yield"]
        return row["cpa_kgco2e_per_cm2"], (1.0 if not math.isfinite(y) else y)

    def memory_kg_per_gb(self, kind: str, method: str) -> float:
        row = self.tables["memory.csv"].get((kind, method))
        return math.nan if row is None else row["kgco2e_per_gb"]

    def default(self, name: str):
        return self.docs["defaults.toml"][name]["value"]


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise DatabaseError(f"{path}: cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise DatabaseError(f"{path}: not valid TOML ({exc})") from None


def _deep_update(into: dict, doc: dict) -> None:
    """Merge a user's TOML document into the packaged one table by table: a user's
    calibration.toml with one [class.h100] entry changes that entry, not the other classes."""
    for key, value in doc.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_update(into[key], value)
        else:
            into[key] = value


def _merge_folder(db: Database, folder: Path) -> None:
    for name in SCHEMAS:
        path = folder / name
        if path.exists():
            table = db.tables.setdefault(name, {})
            for row in read_table(path):
                table[_key(name, row)] = row
    for path in sorted(folder.glob("*.toml")):
        _deep_update(db.docs.setdefault(path.name, {}), _read_toml(path))
    comp_dir = folder / "compositions"
    if comp_dir.is_dir():
        for path in sorted(comp_dir.glob("*.toml")):
            db.compositions[path.stem] = _read_toml(path)
    db.folders.append(folder)


def _check_references(db: Database) -> None:
    nodes = {n for (n, _) in db.tables["process_nodes.csv"]}
    for hw_id, row in db.accelerators.items():
        where = f"accelerators.csv: row '{hw_id}'"
        if row["process_node"] and row["process_node"] not in nodes:
            raise DatabaseError(
                f"{where}, column 'process_node': '{row['process_node']}' is not in process_nodes.csv"
                f"{closest(row['process_node'], nodes)}"
            )
        if row["host"] and row["host"] not in db.hosts:
            raise DatabaseError(
                f"{where}, column 'host': '{row['host']}' is not in hosts.csv{closest(row['host'], db.hosts)}"
            )
        if row["devices_per_node"] < 1:
            raise DatabaseError(f"{where}, column 'devices_per_node': must be at least 1")
        if not any(math.isfinite(row[f"peak_{p}_tflops"]) for p in PRECISIONS):
            raise DatabaseError(f"{where}: at least one peak_*_tflops column is required")
    for offer_id, row in db.tables.get("prices.csv", {}).items():
        if row["hardware"] not in db.accelerators:
            raise DatabaseError(f"prices.csv: row '{offer_id}', column 'hardware': '{row['hardware']}' is not in "
                                f"accelerators.csv{closest(row['hardware'], db.accelerators)}")
        if row["devices_per_instance"] < 1:
            raise DatabaseError(f"prices.csv: row '{offer_id}', column 'devices_per_instance': must be at least 1")


SERVING_RUN_KEYS = ("model", "hardware", "devices", "batch", "output_tokens", "weight_precision",
                    "measured_j_per_token", "measured_power_w", "measured_tokens_per_s", "workload", "source")
SERVING_MODEL_KEYS = ("model_id", "model_source", "layers", "d_model", "heads", "kv_heads", "head_dim", "d_ff", "vocab")
SERVING_PRECISIONS = ("bf16", "fp16", "fp8", "int8", "int4")


def check_serving_runs(doc: dict, accelerators, file: str = "serving_runs.toml") -> None:
    """Schema of serving_runs.toml (SCHEMA.md): every [model.*] has its architecture and source, every
    [workload.*] its input_tokens and their source, every [[run]] its keys, a known model, workload,
    accelerator and precision, and positive measured figures."""
    models, workloads = doc.get("model", {}), doc.get("workload", {})
    for name, m in models.items():
        for k in SERVING_MODEL_KEYS:
            if k not in m:
                raise DatabaseError(f"{file}: [model.\"{name}\"] lacks '{k}'")
    for name, w in workloads.items():
        if "input_tokens" not in w or "input_tokens_source" not in w:
            raise DatabaseError(f"{file}: [workload.{name}] needs input_tokens and input_tokens_source")
    for i, r in enumerate(doc.get("run", [])):
        where = f"{file}: run {i + 1}"
        for k in SERVING_RUN_KEYS:
            if k not in r:
                raise DatabaseError(f"{where} lacks '{k}'")
        if r["model"] not in models:
            raise DatabaseError(f"{where}: model '{r['model']}' is not a [model.*] table{closest(r['model'], models)}")
        if r["workload"] not in workloads:
            raise DatabaseError(f"{where}: workload '{r['workload']}' is not a [workload.*] table")
        if r["hardware"] not in accelerators:
            raise DatabaseError(f"{where}: hardware '{r['hardware']}' is not in accelerators.csv"
                                f"{closest(r['hardware'], accelerators)}")
        if r["weight_precision"] not in SERVING_PRECISIONS:
            raise DatabaseError(f"{where}: weight_precision '{r['weight_precision']}' is not one of "
                                f"{', '.join(SERVING_PRECISIONS)}")
        for k in ("devices", "batch", "output_tokens", "measured_j_per_token", "measured_power_w",
                  "measured_tokens_per_s"):
            v = r[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise DatabaseError(f"{where}: '{k}' must be a positive number, got {v!r}")


_CACHE: dict[tuple, Database] = {}


def load(extra_dir: str | os.PathLike | None = None) -> Database:
    """Load the packaged tables, then the user's folder (argument, else $CARBON_SWEEP_DB), checked."""
    extra = extra_dir if extra_dir is not None else os.environ.get(ENV_VAR) or None
    key = (str(extra) if extra else None,)
    if key in _CACHE:
        return _CACHE[key]
    db = Database()
    _merge_folder(db, HERE)
    if extra:
        folder = Path(extra)
        if not folder.is_dir():
            raise DatabaseError(f"{folder}: the user database folder does not exist ({ENV_VAR} / --db)")
        _merge_folder(db, folder)
    for name in SCHEMAS:
        db.tables.setdefault(name, {})
    _check_references(db)
    if "serving_runs.toml" in db.docs:
        check_serving_runs(db.docs["serving_runs.toml"], db.accelerators)
    _CACHE[key] = db
    return db
