"""``vmguard proxy copy --archive ID``: the copy Job's process (issue 17's copies).

The operator starts it (``controller/policy/copying.py``) when a backup of a policy
with copy targets has completed. The Job names two repositories: the source is its
ordinary repository (:data:`~vmguard.proxy.contract.REPO_ENV` and the rest), the target
has the same variables under :data:`~vmguard.proxy.contract.COPY_TARGET`; credentials
arrive as ``secretKeyRef`` variables, keys as read-only Secret files, and none is
printed or logged. The work is :func:`vmguard.store.copy.copy_archive`: chunks read
from the source (only those that changed since the VM's previously copied point),
re-encrypted with the target's key, written under the target's lease and Object
Lock, then indexes, then the manifest; with :data:`~vmguard.proxy.contract.COPY_BANDWIDTH_ENV`
the chunks it uploads take from a token bucket of that many bytes per second. It needs
no Kubernetes access and no delete
right on the target (docs/copies.md gives the S3 policy).

Invariants: idempotent and resumable — an archive already copied is reported, not
copied again; a killed copy's re-run finds the chunks it uploaded already stored. The
outcome is in the target repository (the copy's manifest, labelled with the source
archive): the operator reads it there, so the Job reports nothing but its exit code
(0 copied or already there; 1 failed, with one line saying why on stderr) and a
one-line summary on stdout for its log.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from vmguard.config import ca_bundle_file
from vmguard.engine.pipeline import default_workers
from vmguard.errors import VmguardError
from vmguard.proxy import contract
from vmguard.proxy.environment import repository_from
from vmguard.store import MasterKey, Repository, names
from vmguard.store.backend.limiter import LimitedBackend, TokenBucket
from vmguard.store.copy import CopyResult, copy_archive
from vmguard.store.location import open_repository

log = logging.getLogger(__name__)


def target_from(env: Mapping[str, str]) -> Repository:
    """The Job's copy target, opened (never created) with its own key and credentials."""
    name = contract.copy_target_name
    url = env.get(name(contract.REPO_ENV))
    if not url:
        raise VmguardError(f"{name(contract.REPO_ENV)} is not set")
    # The store reads S3 credentials under the ordinary names: hand it the target's.
    creds = {
        contract.S3_ACCESS_ENV: env.get(name(contract.S3_ACCESS_ENV), ""),
        contract.S3_SECRET_ENV: env.get(name(contract.S3_SECRET_ENV), ""),
    }
    bundle = env.get(name(contract.S3_CA_BUNDLE_ENV))
    key_file = env.get(name(contract.KEY_FILE_ENV))
    limit = bandwidth_from(env)
    return open_repository(
        url,
        MasterKey.from_file(key_file) if key_file else None,
        creds,
        ca_file=ca_bundle_file(bundle) if bundle else None,
        wrap=(lambda b: LimitedBackend(b, TokenBucket(limit), names.CHUNKS)) if limit else None,
    )


def bandwidth_from(env: Mapping[str, str]) -> int | None:
    """The Job's bandwidth limit in bytes per second (None: none), or VmguardError."""
    text = env.get(contract.COPY_BANDWIDTH_ENV)
    if not text:
        return None
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise VmguardError(
            f"{contract.COPY_BANDWIDTH_ENV} must be a positive number of bytes per second"
        )
    return limit


def summary(result: CopyResult) -> dict[str, object]:
    return {
        "source": result.source_archive,
        "target": result.target_archive,
        "skipped": result.skipped,
        "basedOn": result.based_on,
        "chunksTotal": result.chunks_total,
        "chunksRead": result.chunks_read,
        "chunksMapped": result.chunks_mapped,
        "chunksUploaded": result.chunks_uploaded,
        "bytesStored": result.bytes_stored,
    }


def run_copy(archive_id: str, env: Mapping[str, str] | None = None) -> int:
    """Copy ``archive_id`` from the Job's repository to its target; the exit code."""
    env = os.environ if env is None else env
    try:
        # Both at once: each derives its key (scrypt) and reads its config.
        with ThreadPoolExecutor(2, thread_name_prefix="vmguard-open") as pool:
            opening = pool.submit(repository_from, env)
            target = target_from(env)
            source = opening.result()
        result = copy_archive(source, target, archive_id, workers=default_workers())
    except VmguardError as exc:
        print(f"copy of {archive_id} failed: {exc}", file=sys.stderr, flush=True)
        return 1
    print(json.dumps({"copied": summary(result)}, sort_keys=True), flush=True)
    return 0


__all__ = ["run_copy", "summary", "target_from"]
