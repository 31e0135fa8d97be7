"""Instant access: serve an archived disk as an NBD export (``vmguard mount``).

nbdkit does the NBD protocol; our Python plugin (:mod:`vmguard.files.nbdplugin`) answers
reads from a :class:`~vmguard.files.view.DiskView`, so a client reads a backup the way it
reads a live disk (``nbdcopy``, ``qemu-img``, ``nbdfuse``, a hypervisor) while only the
chunks it touches are fetched. With ``cow=True`` nbdkit's cow filter puts a throw-away
overlay in front: writes land in a temporary file and vanish when the server stops.
``docs/instant-access.md`` explains how this becomes instant VM recovery. Invariants:

- The repository is never written: the plugin cannot write, and the overlay lives in
  nbdkit's temporary directory.
- Secrets reach nbdkit through its environment, never its command line.
- The server exits with its parent (``--exit-with-parent``): a killed ``vmguard mount``
  leaves no server behind.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from vmguard.files.browse import pick_disk
from vmguard.files.view import DEFAULT_CACHE_BYTES, DiskView
from vmguard.store.location import master_key, open_repository
from vmguard.store.selection import select_archive
from vmguard.transport.nbd import NbdkitServer

PLUGIN = Path(__file__).with_name("nbdplugin.py")


def open_view(
    repo_url: str,
    archive: str,
    disk: str | None,
    *,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    env: Mapping[str, str] | None = None,
) -> DiskView:
    """The view a mount serves: repository by URL, archive by spec, disk by key/label."""
    env = os.environ if env is None else env
    repo = open_repository(repo_url, master_key(None, env), env)
    manifest = select_archive(repo, archive)
    return DiskView(repo, manifest, pick_disk(manifest, disk), cache_bytes=cache_bytes)


def serve(
    repo_url: str,
    archive: str,
    disk: str | None,
    *,
    cow: bool = False,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    env: Mapping[str, str] | None = None,
) -> NbdkitServer:
    """Start nbdkit serving the disk; the caller closes the returned server."""
    environ = dict(os.environ if env is None else env)
    environ["VMGUARD_PLUGIN_PATH"] = os.pathsep.join(p for p in sys.path if p)
    args = [str(PLUGIN), f"repo={repo_url}", f"archive={archive}"]
    if disk is not None:
        args.append(f"disk={disk}")
    args.append(f"cache_mib={max(1, cache_bytes >> 20)}")
    return NbdkitServer(
        "python", args, readonly=not cow, filters=["cow"] if cow else [], env=environ
    )
