"""``vmguard proxy verify --namespace NS --name BACKUP [--fsck] [--yara DIR]``: the
verification Job's process.

The operator starts it (``controller/backup/verification.py``) for a completed
VMGuardBackup whose policy asks for verification. It reads the backup's archive id from
the object, opens the Job's repository (credentials from ``secretKeyRef`` variables, the
key from its mounted file, none printed), runs the checks of :mod:`vmguard.verify` on
every volume of every disk of the archive (:func:`~vmguard.verify.runner.verify_point`:
file systems on a copy-on-write export, the YARA rules over every file) and patches the
outcome into the backup's ``status.verification``: ``result`` (:func:`verdict`),
``findings`` (:func:`findings`, at most :data:`MAX_FINDINGS`) and ``durationSeconds``.
The operator records it on the point.

Invariants: the repository is only read; a rule file that does not compile is reported
as ``Error`` naming the file and the line, before anything is read; the exit code is 0
once a result is reported (whatever it says), 1 when none could be (the operator then
records ``Error`` with the Job's reason).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vmguard.api import VerificationResult
from vmguard.api.kinds import BACKUP
from vmguard.errors import ConfigError, VmguardError
from vmguard.proxy import contract
from vmguard.proxy.environment import repository_from
from vmguard.proxy.report import StatusReporter
from vmguard.store.crypto import KEY_ENV
from vmguard.store.location import repository_url
from vmguard.verify.results import Check, Outcome, PointVerification
from vmguard.verify.runner import VerifyOptions, verify_point
from vmguard.verify.scan import compile_rules

log = logging.getLogger(__name__)

MAX_FINDINGS = 20
"""The CRD's ``status.verification.findings`` maxItems."""


def verdict(point: PointVerification) -> VerificationResult:
    """One word for a point's results: a YARA match makes it ``Infected``, a file system
    found damaged ``Failed``, a check without a verdict ``Error``; else ``Passed``."""
    failed = [r for r in point.results if r.result == Outcome.FAILED]
    if any(r.check == Check.YARA for r in failed):
        return VerificationResult.INFECTED
    if failed:
        return VerificationResult.FAILED
    if any(r.result == Outcome.ERROR for r in point.results):
        return VerificationResult.ERROR
    return VerificationResult.PASSED


def refused(
    result: VerificationResult, found: list[dict[str, str]], why: str
) -> tuple[VerificationResult, list[dict[str, str]]]:
    """``result`` and ``found`` with the file-system check refused for ``why`` (the pod
    may not mount FUSE): no verdict on the file systems, so a point that would have
    ``Passed`` is ``Error``; a YARA match still says ``Infected``. The refusal is listed
    after the matches."""
    if result == VerificationResult.PASSED:
        result = VerificationResult.ERROR
    matches = [f for f in found if f.get("rule")]
    rest = [f for f in found if not f.get("rule")]
    entry = {"check": str(Check.FSCK), "message": f"error: not run: {why}"[:1024]}
    return result, [*matches, entry, *rest][:MAX_FINDINGS]


def findings(point: PointVerification, limit: int = MAX_FINDINGS) -> list[dict[str, str]]:
    """What the status lists, matches first: each YARA match (volume, path, rule), then
    each damaged file system and each check without a verdict (volume, message)."""
    out: list[dict[str, str]] = [
        {
            "disk": str(m["disk"]),
            "volume": str(m["volume"]),
            "check": str(Check.YARA),
            "path": str(m["path"]),
            "rule": str(m["rule"]),
            "message": str(m["message"])[:1024],
        }
        for m in point.matches
    ]
    for r in point.results:
        if r.result not in (Outcome.FAILED, Outcome.ERROR) or (
            r.check == Check.YARA and r.result == Outcome.FAILED
        ):
            continue
        text = "; ".join(str(f.get("message", "")) for f in r.findings[:3])
        out.append(
            {
                "disk": r.disk,
                "volume": r.volume,
                "check": str(r.check),
                "message": f"{r.result}: {text}"[:1024],
            }
        )
    return out[:limit]


def _report(
    reporter: StatusReporter, result: str, found: list[dict[str, str]], seconds: float, msg: str
) -> None:
    body: dict[str, Any] = {
        "result": result,
        "findings": found,
        "durationSeconds": round(seconds, 1),
    }
    if msg:
        body["message"] = msg[:4096]
    reporter.patch({"verification": body})


def run_verify(
    namespace: str,
    name: str,
    *,
    fsck: bool,
    rules_dir: str | None,
    env: Mapping[str, str] | None = None,
    reporter: StatusReporter | None = None,
    fsck_refused: str = "",
) -> int:
    """Verify the archive of the VMGuardBackup ``namespace/name``; the exit code.
    ``fsck_refused``: the file systems were asked for but may not be checked in this pod
    (why, from the operator): reported with the other checks' outcome (:func:`refused`)."""
    env = os.environ if env is None else env
    started = time.monotonic()
    try:
        reporter = reporter or StatusReporter(BACKUP.plural, namespace, name)
        archive = str((reporter.read().get("status") or {}).get("archiveId") or "")
        if not archive:
            raise ConfigError(f"VMGuardBackup {namespace}/{name} has no archive to verify")
    except Exception as exc:  # nothing to report to, or nothing to verify
        print(f"vmguard proxy verify: {exc}", file=sys.stderr)
        return 1
    try:
        rules = compile_rules(Path(rules_dir)) if rules_dir else None  # before any read
    except ConfigError as exc:
        message = str(exc)
        found = [{"check": str(Check.YARA), "message": message[:1024]}]
        _report(reporter, VerificationResult.ERROR, found, time.monotonic() - started, message)
        print(f"vmguard proxy verify: {message}", file=sys.stderr)
        return 0
    try:
        repo = repository_from(env)
        manifest = repo.load_archive(archive)
        run_env = dict(env)
        key_file = env.get(contract.KEY_FILE_ENV)
        if key_file:  # nbdkit's plugin reads the key from its environment, never argv
            run_env[KEY_ENV] = Path(key_file).read_text()
        point = verify_point(
            repo,
            manifest,
            VerifyOptions(fsck=fsck, rules=rules),
            repo_url=repository_url(None, env),
            env=run_env,
        )
    except (VmguardError, OSError) as exc:
        message = f"the verification could not run: {exc}"
        _report(reporter, VerificationResult.ERROR, [], time.monotonic() - started, message)
        print(f"vmguard proxy verify: {message}", file=sys.stderr)
        return 0
    result, found = verdict(point), findings(point)
    message = ""
    if fsck_refused:
        result, found = refused(result, found, fsck_refused)
        message = f"file systems not checked: {fsck_refused}"
    _report(reporter, result, found, time.monotonic() - started, message)
    print(f"verified {archive}: {result} ({len(point.results)} checks)", flush=True)
    return 0


__all__ = ["MAX_FINDINGS", "findings", "refused", "run_verify", "verdict"]
