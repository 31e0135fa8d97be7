"""Times and durations as the API writes them: one formatter, one parser of each.

- A time in a status, label-free and second-resolution: RFC 3339 in UTC with a ``Z``,
  ``2025-01-07T02:00:00Z`` (what ``metav1.Time`` serialises to and ``kubectl`` shows).
  :func:`format_time` writes it; :func:`parse_time` reads it and the other shapes that
  reach us (``+00:00`` offsets from vSphere, fractions of a second), always returning
  an aware UTC datetime, and None for an absent or unreadable value: a status is read
  to decide a next step, and a bad timestamp in it must not crash-loop the operator.
- A duration in a spec: ``90s``, ``5m``, ``1h30m``, ``2h``, ``1d`` (the CRDs'
  ``duration`` pattern admits these). :func:`parse_duration` reads it as seconds and
  raises :class:`~vmguard.errors.ConfigError` for anything else, so a spec that reached
  us unvalidated (the CLI reads specs from files) fails with a readable message.

Not here: the time stamps of the repository format (archive ids and manifests,
:mod:`vmguard.store.names`), which the format document fixes independently of this API.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from vmguard.errors import ConfigError

TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def format_time(at: dt.datetime) -> str:
    """``at`` (timezone-aware) as ``2025-01-07T02:00:00Z``; fractions are dropped."""
    if at.tzinfo is None:
        raise ValueError("API times must be timezone-aware")
    return at.astimezone(dt.UTC).strftime(TIME_FORMAT)


def parse_time(text: str | None) -> dt.datetime | None:
    """An RFC 3339 / ISO 8601 time → aware UTC datetime; None when absent or unreadable.

    A time without an offset is taken as UTC (every time the API writes carries one).
    """
    if not text:
        return None
    try:
        at = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if at.tzinfo is dt.UTC:  # "Z" or "+00:00": what the API writes, nothing to convert
        return at
    return at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at.astimezone(dt.UTC)


def parse_duration(text: str | None, default: float) -> float:
    """``90s``, ``5m``, ``1h30m``, ``2h``, ``1d`` → seconds; ``default`` when absent."""
    if not text:
        return default
    total, number = 0.0, ""
    for ch in text:
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in _UNITS and number:
            try:
                total += float(number) * _UNITS[ch]
            except ValueError:  # "1.2.3s"
                raise ConfigError(f"invalid duration {text!r}") from None
            number = ""
        else:
            raise ConfigError(f"invalid duration {text!r}")
    if number:
        raise ConfigError(f"invalid duration {text!r}: a unit (s, m, h, d) is missing")
    return total
