"""Reading an operator's ``/metrics`` the way Prometheus does, for tests."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def page(port: int, host: str = "127.0.0.1") -> str | None:
    """The ``/metrics`` page as text; None while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as rsp:
            return str(rsp.read().decode())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def scrape(port: int, host: str = "127.0.0.1") -> Samples | None:
    """Every sample as ``{(name, sorted labels): value}``; None while nothing listens."""
    text = page(port, host)
    if text is None:
        return None
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples | None, name: str, **labels: str) -> float | None:
    if samples is None:
        return None
    return samples.get((name, tuple(sorted(labels.items()))))
