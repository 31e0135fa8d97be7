"""The check runner: every requested check of every volume of one archived point.

:func:`verify_point` is what ``vmguard verify`` and the operator's verification Jobs
call. For each disk of the archive it lists the volumes (:mod:`vmguard.files.volumes`),
then per volume runs the file-system check on a copy-on-write export
(:class:`~vmguard.verify.export.VolumeExport`, :mod:`vmguard.verify.fsck`) and the YARA
scan over the volume's files (:mod:`vmguard.verify.scan`). Invariants:

- Rules are compiled by the caller before this runs (a bad rule file stops the run before
  any chunk is fetched).
- Every volume gets a result per requested check, ``skipped`` with the reason when it
  holds nothing a check can read; a volume is never silently left out.
- Nothing is staged: the check reads through the export, the scan through a
  :class:`~vmguard.files.view.DiskView`; the only file written is each export's overlay,
  removed when the export ends (its size is in the result).
- One failing volume does not stop the others: every result is recorded.
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from vmguard.errors import DiskReadError, VmguardError
from vmguard.files.browse import DiskFiles
from vmguard.files.volumes import Volume
from vmguard.store import ArchiveManifest, Repository
from vmguard.verify.export import VolumeExport
from vmguard.verify.fsck import DEFAULT_TIMEOUT, check_filesystem
from vmguard.verify.results import Check, CheckResult, Outcome, PointVerification
from vmguard.verify.scan import (
    DEFAULT_FILE_TIMEOUT,
    DEFAULT_MAX_FILE_BYTES,
    RuleSet,
    scan_volume,
)

#: ``progress(done, total, what)``: units of work (volume bytes checked, file bytes scanned)
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class VerifyOptions:
    fsck: bool = True
    rules: RuleSet | None = None
    fsck_timeout: float = DEFAULT_TIMEOUT
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    file_timeout: int = DEFAULT_FILE_TIMEOUT
    cache_bytes: int = 64 << 20
    workdir: Path | None = None
    """Where exports put their overlays (default: a new temporary directory)."""


def verify_point(
    repo: Repository,
    manifest: ArchiveManifest,
    options: VerifyOptions,
    *,
    repo_url: str,
    env: Mapping[str, str],
    progress: Progress | None = None,
) -> PointVerification:
    """Run the checks ``options`` asks for on every volume of every disk of ``manifest``.

    ``repo_url`` and ``env`` open the same repository in nbdkit's process (secrets in
    the environment only).
    """
    outcome = PointVerification(manifest.archive_id, manifest.vm.name or manifest.vm.id)
    tally = _Tally(progress)
    with tempfile.TemporaryDirectory(prefix="vmguard-verify-", dir=options.workdir) as work:
        for record in manifest.disks:
            with DiskFiles(repo, manifest, record, cache_bytes=options.cache_bytes) as files:
                outcome.results += _verify_disk(files, options, repo_url, env, Path(work), tally)
    return outcome


class _Tally:
    """Progress over the whole point: the total grows by each disk's volumes as they are
    listed (the scan's file bytes are not known ahead, so they only count as done)."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.done = self.total = 0

    def expect(self, n: int) -> None:
        self.total += n

    def advance(self, n: int, *, what: str) -> None:
        self.done += n
        self.total = max(self.total, self.done)
        if self.progress is not None:
            self.progress(self.done, self.total, what)


def _verify_disk(
    files: DiskFiles,
    options: VerifyOptions,
    repo_url: str,
    env: Mapping[str, str],
    work: Path,
    tally: _Tally,
) -> list[CheckResult]:
    disk = files.disk.key
    checks = ([Check.FSCK] if options.fsck else []) + ([Check.YARA] if options.rules else [])
    try:
        volumes = files.volumes
    except DiskReadError as exc:
        return [
            CheckResult(c, disk, "-", Outcome.ERROR, 0.0, [{"message": str(exc)}]) for c in checks
        ]
    if options.fsck:
        tally.expect(sum(v.size for v in volumes if v.fs not in (None, "lvm")))
    results: list[CheckResult] = []
    for number, volume in enumerate(volumes):
        if volume.fs in (None, "lvm"):
            results += [_skipped(check, disk, volume) for check in checks]
            continue
        if options.fsck:
            results.append(
                _fsck_volume(files, volume, options, repo_url, env, work / f"{disk}-{number}")
            )
            tally.advance(volume.size, what=f"fsck {volume.name}")
        if options.rules is not None:
            results.append(
                scan_volume(
                    files,
                    volume,
                    options.rules,
                    max_file_bytes=options.max_file_bytes,
                    file_timeout=options.file_timeout,
                    progress=functools.partial(tally.advance, what=f"yara {volume.name}"),
                )
            )
    return results


def _skipped(check: Check, disk: str, volume: Volume) -> CheckResult:
    why = (
        "no file system recognised"
        if volume.fs is None
        else "LVM physical volume: its logical volumes are checked on their own"
    )
    return CheckResult(check, disk, volume.name, Outcome.SKIPPED, 0.0, [{"message": why}])


def _fsck_volume(
    files: DiskFiles,
    volume: Volume,
    options: VerifyOptions,
    repo_url: str,
    env: Mapping[str, str],
    work: Path,
) -> CheckResult:
    disk = files.disk.key
    if volume.fs is None:
        return _skipped(Check.FSCK, disk, volume)
    if volume.offset is None:
        return CheckResult(
            Check.FSCK,
            disk,
            volume.name,
            Outcome.SKIPPED,
            0.0,
            [{"message": "logical volumes are not checked yet (their extents are not one range)"}],
            fs=volume.fs,
        )
    started = time.monotonic()
    work.mkdir(parents=True)
    export = VolumeExport(
        repo_url,
        files.manifest.archive_id,
        disk,
        volume.offset,
        volume.size,
        work,
        env=env,
        cache_bytes=options.cache_bytes,
    )
    try:
        with export as path:
            verdict = check_filesystem(volume.fs, path, timeout=options.fsck_timeout)
            export.measure_overlay()
    except VmguardError as exc:
        return CheckResult(
            Check.FSCK,
            disk,
            volume.name,
            Outcome.ERROR,
            time.monotonic() - started,
            [{"message": str(exc)}],
            fs=volume.fs,
        )
    return CheckResult(
        Check.FSCK,
        disk,
        volume.name,
        verdict.result,
        time.monotonic() - started,
        verdict.findings,
        fs=volume.fs,
        tool=verdict.tool,
        bytes_fetched=export.bytes_fetched,
        overlay_bytes=export.overlay_bytes,
    )
