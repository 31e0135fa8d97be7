"""``vmguard proxy backup --namespace NS --name N``: the backup proxy Job's process.

The operator prepares a backup (snapshot, parent archive, requested mode — all in the
VMGuardBackup's status) and runs this in a Job built by
:func:`vmguard.controller.kube.proxyjob.build_backup_job`. The proxy:

1. reads its VMGuardBackup (the only object its Role lets it read) and turns the status into
   a :class:`~vmguard.vm.backup.TransferRequest` (:func:`request_from`, pure);
2. connects with what the Job gives it (:mod:`vmguard.proxy.environment`, names in
   :mod:`vmguard.proxy.contract`): vCenter URL and trust, repository URL in the
   environment; credentials as ``secretKeyRef`` variables and the repository key as a
   read-only Secret file (none of them is ever printed or logged);
3. reaches disks through the locator ``VMGUARD_PROXY_LOCATOR`` names: ``vddk``
   (production), or ``SCHEME:ARG`` registered by an installed distribution
   (:func:`vmguard.vm.access.open_locator`; the lab's is ``lab:<url>``);
4. runs :func:`~vmguard.vm.backup.transfer` (idempotent: an archive already
   committed by this backup is reported, not written again), patching throttled
   progress, then the result (archive id, mode used and why, per-disk bytes, totals);
5. exits 0; on failure patches ``status.error {reason, message, retryable}`` and exits 1
   (143 on SIGTERM). The operator decides about retries.

Before each progress report it calls ``hooks.transfer_progress`` (:mod:`vmguard.hooks`;
a no-op unless an embedder gave one: the lab's fault tests slow the reads down there).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from typing import Any

from vmguard.api.kinds import BACKUP
from vmguard.errors import (
    AuthenticationError,
    ConfigError,
    PermanentError,
    RetryableError,
    VMNotFoundError,
)
from vmguard.hooks import NO_HOOKS, Hooks
from vmguard.proxy.contract import TRANSPORT_ENV
from vmguard.proxy.environment import endpoint_from, job_locator, repository_from
from vmguard.proxy.report import StatusReporter
from vmguard.store.archive import TransferStats
from vmguard.store.lineage import ORIGIN_NAMESPACE, ORIGIN_POLICY, ORIGIN_VMBACKUP
from vmguard.vm.backup import BackupResult, TransferRequest, transfer
from vmguard.vsphere.session import VSphereSession

log = logging.getLogger("vmguard.proxy")

MODE_USED = {"full": "full", "incremental": "incremental", "full-scan": "fullScan"}


class Terminated(Exception):
    """SIGTERM: the pod is being deleted or the Job's deadline passed."""


def request_from(obj: Mapping[str, Any], env: Mapping[str, str]) -> TransferRequest:
    """The transfer a VMGuardBackup's status asks for (pure); ConfigError when it is not ready."""
    status = obj.get("status") or {}
    vm, snapshot = status.get("vm") or {}, status.get("snapshot") or {}
    if not vm.get("moref") or not snapshot.get("moref") or not status.get("modeRequested"):
        raise ConfigError("the VMGuardBackup has no snapshot yet: the operator has not prepared it")
    if snapshot.get("removed"):
        raise ConfigError(f"snapshot {snapshot['moref']} was removed already")
    full = status["modeRequested"] == "full"
    note = ""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Quiesced" and cond.get("reason") == "CrashConsistentFallback":
            note = cond.get("message", "")
    return TransferRequest(
        vm_moref=vm["moref"],
        snapshot_moref=snapshot["moref"],
        backup_uid=obj["metadata"]["uid"],
        parent=None if full else status.get("parentArchiveId") or None,
        vcenter=status.get("vcenter", ""),
        transport=env.get(TRANSPORT_ENV) or "auto",
        mode_reason=status.get("modeReason", "") if full else "",
        snapshot_note=note,
        backings={
            int(d["key"]): d["backing"] for d in status.get("disks") or [] if d.get("backing")
        },
        labels=origin_labels(obj),
    )


def origin_labels(obj: Mapping[str, Any]) -> dict[str, str]:
    """Manifest labels naming the VMGuardBackup and its policy (pure), so that catalog sync
    can rebuild the object from the bucket alone (docs/repository-format.md §6)."""
    meta = obj.get("metadata") or {}
    out = {
        ORIGIN_NAMESPACE: str(meta.get("namespace") or ""),
        ORIGIN_VMBACKUP: str(meta.get("name") or ""),
        ORIGIN_POLICY: str(((obj.get("spec") or {}).get("policyRef") or {}).get("name") or ""),
    }
    return {k: v for k, v in out.items() if v}


def result_status(result: BackupResult, known: list[dict[str, Any]]) -> dict[str, Any]:
    """The status patch of a committed transfer (pure); ``known`` = status.disks so far."""
    m = result.manifest
    by_key = {int(d["key"]): dict(d) for d in known}
    disks: list[dict[str, Any]] = []
    totals: dict[str, Any] = dict.fromkeys(
        (
            "capacityBytes",
            "bytesRead",
            "bytesChanged",
            "bytesUploaded",
            "chunksNew",
            "chunksReused",
        ),
        0,
    )
    for rec in m.disks:
        key, s = int(rec.key), rec.stats
        outcome = result.disks.get(key)
        entry = by_key.get(key, {"key": key, "label": rec.label})
        entry.update(
            {
                "capacityBytes": rec.length,
                "mode": MODE_USED[outcome.mode if outcome else m.mode],
                "bytesRead": s.bytes_read,
                "bytesChanged": s.bytes_changed,
                "bytesUploaded": s.bytes_stored,
                "chunksNew": s.chunks_new,
                "chunksReused": s.chunks_reused,
            }
        )
        if rec.cbt is not None:
            entry["changeId"] = rec.cbt.change_id
        disks.append(entry)
        for k in totals:
            totals[k] += int(entry.get(k) or 0)
    # The ransomware signal's input: how well this backup's changed data compressed.
    summed = sum((rec.stats for rec in m.disks), TransferStats())
    if summed.compressibility is not None:
        totals["compressibility"] = round(summed.compressibility, 4)
    return {
        "archiveId": m.archive_id,
        "modeUsed": MODE_USED[m.mode],
        "modeReason": (result.mode_reason or m.mode_reason)[:1024],
        "disks": disks,
        "totals": totals,
    }


def failure(exc: BaseException) -> dict[str, Any]:
    """``status.error`` for an exception: a reason, a message, whether a retry may help."""
    if isinstance(exc, Terminated):
        reason, retryable = "ProxyTerminated", True
    elif isinstance(exc, VMNotFoundError):
        reason, retryable = "VMNotFound", False
    elif isinstance(exc, AuthenticationError):
        reason, retryable = "RepositoryKeyRejected", False
    elif isinstance(exc, ConfigError):
        reason, retryable = "InvalidConfiguration", False
    elif isinstance(exc, PermanentError):
        reason, retryable = "TransferFailed", False
    elif isinstance(exc, RetryableError):
        reason, retryable = "PeerUnavailable", True
    else:  # nbd, OS and library errors: maybe transient; the operator bounds the retries
        reason, retryable = "TransferFailed", True
    message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, Terminated) else str(exc)
    return {"reason": reason, "message": message[:4096], "retryable": retryable}


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated("the proxy was stopped (SIGTERM)")


def run_backup(namespace: str, name: str, hooks: Hooks = NO_HOOKS) -> int:
    """Transfer one VMGuardBackup's snapshot; 0 when committed, 1 (143: SIGTERM) when failed."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    signal.signal(signal.SIGTERM, _terminate)
    env = os.environ
    reporter = StatusReporter(BACKUP.plural, namespace, name)
    try:
        obj = reporter.read()
        request = request_from(obj, env)
        ep = endpoint_from(env)
        repo = repository_from(env)
        locator = job_locator(env, ep)
        started = time.monotonic()

        def progress(done: int, total: int) -> None:
            hooks.transfer_progress(done, total)
            elapsed = max(time.monotonic() - started, 1e-3)
            reporter.progress(done, total, done / elapsed)

        session = VSphereSession(ep)
        try:
            log.info(
                "backup %s/%s: snapshot %s of %s",
                namespace,
                name,
                request.snapshot_moref,
                request.vm_moref,
            )
            result = transfer(session, repo, locator, request, progress=progress)
        finally:
            session.close()
        patch = result_status(result, (obj.get("status") or {}).get("disks") or [])
        reporter.patch(patch)
        log.info("archive %s committed (%s)", result.manifest.archive_id, result.mode)
        return 0
    except (Exception, Terminated) as exc:
        log.error("backup %s/%s failed: %s", namespace, name, exc)
        try:
            reporter.patch({"error": failure(exc)})
        except Exception as report_exc:  # the Job's failure still tells the operator
            log.error("could not report the failure: %s", report_exc)
        return 143 if isinstance(exc, Terminated) else 1
    finally:
        sys.stdout.flush()
