"""The proxy's side of a VMGuardRestore: ``vmguard proxy restore --namespace NS --name NAME``.

Data plane only. The operator has already checked the source and prepared the target,
and recorded both in the VMGuardRestore's status (``archiveId``; ``result.vm`` and
``result.disks`` — which disk of the archive goes into which disk of which VM; or
``result.location`` for files). The proxy reads the VMGuardRestore (its only read: the
VMGuardBackup may be gone by now), writes, and patches ``status.progress`` (throttled) and
its outcome into ``status.result`` — or ``status.error`` with a reason, exiting
non-zero so the Job fails and the operator fails the restore.

- ``newVM`` and ``disks``: each prepared disk is written through the transport
  (:func:`vmguard.vm.restore.write_disk`); a fresh disk keeps its holes, an
  overwritten one has them zeroed. Disks are written in parallel, at most as many at
  once as the operator granted the Job (``VMGUARD_RESTORE_DISKS_AT_ONCE``, from its
  vCenter's limits), and their progress is summed into one ``status.progress``.
- ``inPlace``: :func:`vmguard.vm.restore.restore_in_place` writes only the chunks
  changed since the backup where the CBT chain allows (the VM is already off).
- ``files``: :func:`vmguard.files.restore.restore_paths` into an S3 prefix
  (:class:`~vmguard.files.s3sink.S3PrefixSink`) or the PVC mounted at
  :data:`~vmguard.proxy.contract.RESTORE_TARGET_DIR`.

Everything comes from the environment the operator's Job sets, read as the backup proxy
reads it (:mod:`vmguard.proxy.environment`; names in :mod:`vmguard.proxy.contract`). No
secret is ever logged or reported.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

from vmguard.api.kinds import RESTORE
from vmguard.engine.restore import RestoreFailed
from vmguard.errors import (
    ChunkCorruptError,
    ChunkMissingError,
    ConfigError,
    RetryableError,
    VmguardError,
)
from vmguard.proxy.environment import disks_at_once, endpoint_from, job_locator, repository_from
from vmguard.proxy.report import StatusReporter
from vmguard.proxy.restore_files import restore_files
from vmguard.store import ArchiveManifest, Repository
from vmguard.vm.restore import (
    DISKS_AT_ONCE,
    DiskProgress,
    restore_in_place,
    write_disk,
    write_disks,
)
from vmguard.vsphere.session import VSphereSession

log = logging.getLogger(__name__)


class _Progress:
    """A ``(done, total)`` callback into one throttled ``status.progress``."""

    def __init__(self, reporter: StatusReporter) -> None:
        self.reporter = reporter
        self.started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        rate = done / max(time.monotonic() - self.started, 1e-3)
        self.reporter.progress(done, total, rate)


def error_reason(exc: BaseException) -> str:
    if isinstance(getattr(exc, "reason", None), str):
        return str(exc.reason)  # type: ignore[attr-defined]
    if isinstance(exc, (RestoreFailed, ChunkCorruptError, ChunkMissingError)):
        return "RepositoryDamaged"
    if isinstance(exc, RetryableError):
        return "Unreachable"
    if isinstance(exc, ConfigError):
        return "InvalidTarget"
    return "RestoreFailed"


def written_summary(result: dict[str, Any]) -> str:
    """What a finished restore wrote, for the proxy's log (pure)."""
    if "filesRestored" in result:
        return f"{result['filesRestored']} file(s), {result.get('bytesRestored', 0)} bytes"
    disks = result.get("disks") or []
    total = sum(int(d.get("bytesWritten") or 0) for d in disks)
    return f"{len(disks)} disk(s), {total} bytes"


def write_vm_disks(
    repo: Repository,
    manifest: ArchiveManifest,
    target: dict[str, Any],
    result: dict[str, Any],
    reporter: StatusReporter,
) -> dict[str, Any]:
    """newVM, inPlace, disks: write through the transport; the new ``status.result``."""
    endpoint = endpoint_from(os.environ)
    locator = job_locator(os.environ, endpoint)
    at_once = disks_at_once(os.environ) or DISKS_AT_ONCE
    session = VSphereSession(endpoint)
    try:
        if "inPlace" in target:
            moref = result["vm"]["moref"]
            lengths = {int(d.key): d.length for d in manifest.disks}
            done = restore_in_place(
                session,
                repo,
                manifest.archive_id,
                moref,
                locator,
                power_off=False,
                progress=DiskProgress(_Progress(reporter), lengths).disk,
                disks_at_once=at_once,
            )
            disks = [
                {"sourceKey": k, "vm": moref, "key": k, "bytesWritten": s.bytes_written}
                for k, s in sorted(done.disks.items())
            ]
            for k, why in sorted(done.reasons.items()):
                log.info("disk %s: %s", k, why)
            return {**result, "disks": disks}
        prepared = list(result.get("disks") or [])
        if "newVM" not in target:
            # Disks of an existing VM: CBT may not track what we write, so the next
            # backup must not continue from a change id of before (docs/cbt-chain.md).
            from vmguard.vsphere.cbt import mark_in_place_restore

            for moref in sorted({d["vm"] for d in prepared}):
                keys = [int(d["key"]) for d in prepared if d["vm"] == moref]
                mark_in_place_restore(session, moref, keys, manifest.archive_id)
        lengths = {n: manifest.disk(str(d["sourceKey"])).length for n, d in enumerate(prepared)}
        progress = DiskProgress(_Progress(reporter), lengths)
        log.info("writing %d disk(s), at most %d at once", len(prepared), at_once)
        writes = [
            functools.partial(
                write_disk,
                locator,
                repo,
                manifest,
                d["vm"],
                int(d["sourceKey"]),
                int(d["key"]),
                d["backing"],
                # A new VM's disks are empty; any other may hold old data where the
                # backup has holes (zeroing punches holes, so thin stays thin).
                zero_holes="newVM" not in target,
                progress=progress.disk(n),
            )
            for n, d in enumerate(prepared)
        ]
        stats = write_disks(writes, at_once)
        written = [
            {**d, "bytesWritten": s.bytes_written} for d, s in zip(prepared, stats, strict=True)
        ]
        return {**result, "disks": written}
    finally:
        session.close()


def run(
    namespace: str,
    name: str,
    reporter: StatusReporter | None = None,
) -> int:
    """Carry out one VMGuardRestore; 0 when its data is written, 1 when it failed (reported)."""
    reporter = reporter or StatusReporter(RESTORE.plural, namespace, name)
    obj = reporter.read()
    status, target = obj.get("status") or {}, obj["spec"]["target"]
    try:
        archive_id = status.get("archiveId")
        if not archive_id:
            raise ConfigError(f"VMGuardRestore {namespace}/{name} names no archive yet")
        repo = repository_from(os.environ)
        manifest = repo.load_archive(archive_id)
        log.info("restore %s/%s: archive %s of %s", namespace, name, archive_id, manifest.vm.name)
        result = dict(status.get("result") or {})
        if "files" in target:
            result = restore_files(repo, manifest, target["files"], result, reporter)
        else:
            result = write_vm_disks(repo, manifest, target, result, reporter)
        reporter.patch({"result": result})
        log.info("restore %s/%s written: %s", namespace, name, written_summary(result))
        return 0
    except VmguardError as exc:
        log.error("restore failed: %s", exc)
        error = {"reason": error_reason(exc), "message": str(exc)[:4096], "retryable": False}
        reporter.patch({"error": error})
        return 1
    except Exception as exc:
        log.exception("restore failed")
        error = {"reason": "ProxyError", "message": f"{type(exc).__name__}: {exc}"[:4096]}
        reporter.patch({"error": {**error, "retryable": False}})
        return 1
