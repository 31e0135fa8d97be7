"""Malware scans: the user's YARA rules over every file of a point (YARA-X).

:func:`compile_rules` compiles every ``*.yar``/``*.yara`` file of a directory (or one
file) before anything is read; :func:`scan_volume` runs the rules over the regular files
of one volume, read straight out of the archive. Invariants:

- Rules compile first (:mod:`.rules`): a rule file that does not compile is a
  :class:`~vmguard.verify.rules.RulesError` naming the file, the line and the rule,
  raised before any chunk is fetched — never a crash and
  never a scan with some rules silently missing.
- Bounds: a file larger than ``max_file_bytes`` is not scanned (it is listed in the
  findings as skipped, so a reader sees what was not looked at); each file's scan stops
  after ``file_timeout`` seconds (YARA-X's own timeout), also listed. Memory is bounded by
  ``max_file_bytes``: a file is scanned from one buffer.
- A match is a finding with the volume's path of the file and the rule's name
  (``namespace.rule`` when the rule file sets a namespace, else the rule).
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yara_x

from vmguard.errors import ConfigError, DiskReadError, FilesystemError
from vmguard.files.browse import DiskFiles
from vmguard.files.volumes import Volume
from vmguard.verify.results import Check, CheckResult, Outcome
from vmguard.verify.rules import RulesError, compile_sources

DEFAULT_MAX_FILE_BYTES = 64 << 20
DEFAULT_FILE_TIMEOUT = 30
RULE_SUFFIXES = (".yar", ".yara")
_ENGINE = f"yara-x {importlib.metadata.version('yara-x')}"


@dataclass
class RuleSet:
    rules: Any
    files: list[Path]


def rule_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise ConfigError(f"no YARA rules at {source}: not a file or directory")
    found = sorted(p for p in source.iterdir() if p.suffix in RULE_SUFFIXES and p.is_file())
    if not found:
        raise ConfigError(f"no YARA rule files (*.yar, *.yara) in {source}")
    return found


def compile_rules(source: Path) -> RuleSet:
    """Every rule file of ``source`` compiled together; RulesError on the first bad one."""
    files = rule_files(source)
    sources = []
    for path in files:
        try:
            sources.append((str(path), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise RulesError(str(path), None, f"cannot be read: {exc}") from exc
    return RuleSet(compile_sources(sources), files)


def scan_volume(
    files: DiskFiles,
    volume: Volume,
    rules: RuleSet,
    *,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    file_timeout: int = DEFAULT_FILE_TIMEOUT,
    progress: Callable[[int], None] | None = None,
) -> CheckResult:
    """Scan the regular files of ``volume``; ``progress`` gets the bytes of each file done."""
    started = time.monotonic()
    disk = files.disk.key
    result = CheckResult(Check.YARA, disk, volume.name, Outcome.PASSED, 0.0, fs=volume.fs)
    result.tool = _ENGINE
    before = files.view.stats.bytes_fetched
    scanner = yara_x.Scanner(rules.rules)
    scanner.set_timeout(file_timeout)
    matched = False
    try:
        for located in files.walk(volume.name):
            stat = located.stat
            if stat.kind != "file":
                continue
            if stat.size > max_file_bytes:
                result.findings.append(
                    {
                        "message": f"not scanned: {stat.size} bytes, over the bound",
                        "path": located.entry.path,
                    }
                )
                continue
            try:
                stream = files.open(located)
                extents = files.extents(stream)
                with files.view.plan(extents) if extents else nullcontext():
                    data = stream.read(stat.size)
            except (DiskReadError, FilesystemError, OSError) as exc:
                result.findings.append(
                    {"message": f"unreadable: {exc}", "path": located.entry.path}
                )
                result.result = Outcome.ERROR
                continue
            try:
                found = scanner.scan(data)
            except yara_x.TimeoutError:
                result.findings.append(
                    {"message": f"scan stopped after {file_timeout}s", "path": located.entry.path}
                )
                continue
            result.files_scanned += 1
            result.bytes_scanned += len(data)
            for rule in found.matching_rules:
                name = (
                    rule.identifier
                    if rule.namespace in ("", "default")
                    else (f"{rule.namespace}.{rule.identifier}")
                )
                result.findings.append(
                    {"message": f"matches {name}", "path": located.entry.path, "rule": name}
                )
                matched = True
            if progress is not None:
                progress(len(data))
    except (DiskReadError, FilesystemError) as exc:
        result.findings.append({"message": f"volume unreadable: {exc}"})
        result.result = Outcome.ERROR
    if matched:
        result.result = Outcome.FAILED
    result.bytes_fetched = files.view.stats.bytes_fetched - before
    result.duration = time.monotonic() - started
    return result
