"""The layout model's calibrated constants (hardware_db/calibration.toml) for one accelerator.

Top-level tables ``[name] value = …`` are the defaults; ``[class.X]`` tables with ``ids = [prefixes]``
override them for accelerators whose id starts with one of the prefixes.
"""

from __future__ import annotations


def _value(t):
    if isinstance(t, dict):
        return t.get("value")
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        return t
    return None


def class_of(db, hw_id: str) -> str:
    """The name of the first ``[class.X]`` whose ``ids`` prefixes match ``hw_id`` ('' = none)."""
    for name, cls in db.docs.get("calibration.toml", {}).get("class", {}).items():
        if any(hw_id.startswith(p) for p in cls.get("ids", [])):
            return name
    return ""


def calibration_for(db, hw_id: str) -> dict[str, float]:
    doc = db.docs.get("calibration.toml", {})
    cal = {}
    for k, t in doc.items():
        if k == "class":
            continue
        v = _value(t)
        if v is not None:
            cal[k] = float(v)
    for cls in doc.get("class", {}).values():
        if any(hw_id.startswith(p) for p in cls.get("ids", [])):
            for k, t in cls.items():
                v = _value(t)
                if v is not None and k != "ids":
                    cal[k] = float(v)
            break
    return cal


def serving_constants(db, hw_id: str) -> dict[str, float]:
    """The serving model's constants (hardware_db/serving.toml) for one accelerator: the top-level
    ``[name] value``, overridden by the ``[class.X]`` of calibration.toml's class of ``hw_id``."""
    doc = db.docs.get("serving.toml", {})
    cal = {k: float(t["value"]) for k, t in doc.items() if k not in ("class", "fit") and isinstance(t, dict)}
    for k, t in doc.get("class", {}).get(class_of(db, hw_id), {}).items():
        if isinstance(t, dict) and "value" in t:
            cal[k] = float(t["value"])
    return cal
