"""Start times of the typical (non-leap) year: the hour of a date, and its label. Pure: imported by
sweep.spec (to check a start) and sweep.when (to run it)."""

from __future__ import annotations

import datetime as dt

HOURS = 8760


def hour_of_year(value) -> float:
    """The UTC hour of a (non-leap) typical year of a date/datetime or ISO string; raises ValueError."""
    if isinstance(value, str):
        text = value.strip()
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"'{value}' is not an ISO date or datetime (e.g. \"2023-06-01\" or \"2023-06-01T14:00\")")
    elif isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, dt.date):
        when = dt.datetime(value.year, value.month, value.day)
    else:
        raise ValueError(f"{value!r} is not a date: give an ISO date or datetime such as "
                         "\"2023-06-01T14:00\", or \"best\"")
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    if when.month == 2 and when.day == 29:
        raise ValueError(f"'{value}': the typical year has no 29 February")
    base = dt.datetime(2001, 1, 1)  # a non-leap year
    moved = when.replace(year=2001)
    return (moved - base).total_seconds() / 3600.0


def hour_label(hour: float) -> str:
    """'06-01T14:00' (month-day and UTC hour of the typical year) of an hour of the year."""
    t = dt.datetime(2001, 1, 1) + dt.timedelta(hours=float(hour) % HOURS)
    return t.strftime("%m-%dT%H:%M")


def check_start(file, section, value, error):
    """A start as the spec gives it: "best", or a date (its ISO text kept); ``error(file, section,
    key, message)`` raised otherwise (sweep.spec.SpecError)."""
    if isinstance(value, str) and value.strip() == "best":
        return "best"
    try:
        hour_of_year(value)
    except ValueError as exc:
        raise error(file, section, "start", f"{exc} (allowed: an ISO date or datetime, or \"best\")") from None
    return value if isinstance(value, str) else value.isoformat()
