"""nbdkit Python plugin: serve one disk of one archive, read-only, through a DiskView.

nbdkit loads this file into its embedded interpreter (Debian's nbdkit-plugin-python
embeds the system Python, which our virtualenv is built from); :mod:`vmguard.files.mount`
starts it. It is configured by nbdkit parameters, secrets come from the environment:

    nbdkit python nbdplugin.py repo=URL archive=SPEC disk=KEY [cache_mib=N] [stats=FILE]

``VMGUARD_PLUGIN_PATH`` (``os.pathsep``-separated) is prepended to ``sys.path`` so the
plugin imports the same vmguard and dependencies as the command that started it;
S3 credentials (as :mod:`vmguard.store.location` reads them) and the master key
(``VMGUARD_KEY``) come from the environment, never from the command line (which ``ps``
shows). With ``stats=FILE`` the plugin writes what its view fetched from the repository
(:class:`~vmguard.files.view.ViewStats` as JSON) to FILE when nbdkit exits (``cleanup``), so the
caller can count the repository reads a client's work cost (``vmguard verify`` does).

Invariants: the export is read-only at this layer (writes, with ``--cow``, stop in
nbdkit's cow filter and never reach the repository); every connection shares one view
(reads are thread-safe); block status reports the index's holes as holes, so
``nbdcopy`` and ``qemu-img`` keep the copy sparse and skip reading them.
"""

from __future__ import annotations

import builtins
import json
import os
import sys
from typing import Any

import nbdkit  # type: ignore[import-not-found]

API_VERSION = 2

_params: dict[str, str] = {}
_view: Any = None


def thread_model() -> int:
    return int(nbdkit.THREAD_MODEL_PARALLEL)


def config(key: str, value: str) -> None:
    if key not in ("repo", "archive", "disk", "cache_mib", "stats"):
        raise ValueError(f"unknown parameter {key}")
    _params[key] = value


def config_complete() -> None:
    global _view
    # The caller's path, in the caller's order, ahead of the embedded interpreter's own:
    # otherwise another checkout's vmguard on the path could shadow the caller's.
    wanted = [e for e in os.environ.get("VMGUARD_PLUGIN_PATH", "").split(os.pathsep) if e]
    sys.path[:] = wanted + [e for e in sys.path if e not in wanted]
    from vmguard.files.mount import open_view

    missing = {"repo", "archive"} - set(_params)
    if missing:
        raise ValueError(f"missing parameters: {', '.join(sorted(missing))}")
    _view = open_view(
        _params["repo"],
        _params["archive"],
        _params.get("disk"),
        cache_bytes=int(_params.get("cache_mib", "256")) << 20,
    )


def cleanup() -> None:
    if _view is not None and "stats" in _params:
        stats = _view.stats
        doc = {
            "chunks_fetched": stats.chunks_fetched,
            "bytes_fetched": stats.bytes_fetched,
            "cache_hits": stats.cache_hits,
            "hole_reads": stats.hole_reads,
        }
        # ``open`` is this plugin's nbdkit callback: the file is opened through builtins.
        with builtins.open(_params["stats"], "w") as f:
            json.dump(doc, f)


def open(readonly: bool) -> int:
    return 1


def get_size(h: int) -> int:
    return int(_view.size)


def can_write(h: int) -> bool:
    return False


def can_multi_conn(h: int) -> bool:
    return True


def can_extents(h: int) -> bool:
    return True


def can_cache(h: int) -> int:
    return int(nbdkit.CACHE_NONE)


def pread(h: int, buf: Any, offset: int, flags: int) -> None:
    try:
        data = _view.pread(offset, len(buf))
    except Exception as exc:
        nbdkit.debug(f"vmguard: read of {len(buf)} bytes at {offset} failed: {exc}")
        print(f"vmguard: {exc}", file=sys.stderr, flush=True)
        nbdkit.set_error(5)  # EIO
        raise
    buf[:] = data


def extents(h: int, count: int, offset: int, flags: int) -> list[tuple[int, int, int]]:
    return [
        (start, length, 0 if data else int(nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO))
        for start, length, data in _view.allocation(offset, count)
    ]
