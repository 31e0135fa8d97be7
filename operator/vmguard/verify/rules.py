"""YARA rules compiled with YARA-X, or a :class:`RulesError` naming the rule file, the
line and the rule that do not compile.

The one compiler of users' rules: ``vmguard verify --yara``, the verification Job and
the operator (which checks a policy's rules ConfigMap and reports a condition, docs/
verification.md) all call :func:`compile_sources`. Invariants: every source is added
before the rules are built, so a set with one bad file never yields rules with that file
silently missing; the error is the first one YARA-X reports, with its file (the
``origin`` given) and line, and the name of the rule that line belongs to (the nearest
``rule NAME`` at or above it), never a traceback. It reads no disk data: the operator may
import it (pyproject's contracts allow this one module of ``vmguard.verify``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import yara_x

from vmguard.errors import ConfigError

_WHERE = re.compile(r"-->\s*(?P<origin>.+?):(?P<line>\d+):(?P<col>\d+)")
_RULE = re.compile(r"^\s*(?:(?:private|global)\s+)*rule\s+(?P<name>[A-Za-z_][A-Za-z0-9_]*)")


class RulesError(ConfigError):
    """A rule file does not compile; the message names the file, the line and the rule."""

    def __init__(
        self, origin: str, line: int | None, message: str, rule: str | None = None
    ) -> None:
        self.origin = origin
        self.line = line
        self.rule = rule
        where = f"{origin} line {line}" if line is not None else origin
        if rule:
            where += f" (rule {rule})"
        super().__init__(f"YARA rules do not compile: {where}: {message}")


def rule_at(text: str, line: int) -> str | None:
    """The rule a 1-based ``line`` of ``text`` belongs to: the nearest declaration at or
    above it (None: above every rule, e.g. an import)."""
    for candidate in reversed(text.splitlines()[:line]):
        found = _RULE.match(candidate)
        if found:
            return found.group("name")
    return None


def compile_sources(sources: Iterable[tuple[str, str]]) -> Any:
    """``(origin, text)`` pairs compiled together: YARA-X's rules, or RulesError on the
    first that does not compile."""
    compiler = yara_x.Compiler()
    for origin, text in sources:
        try:
            compiler.add_source(text, origin=origin)
        except yara_x.CompileError as exc:
            raise _rules_error(origin, text, str(exc)) from None
    return compiler.build()


def _rules_error(origin: str, text: str, error: str) -> RulesError:
    first = error.splitlines()[0] if error else "compile error"
    message = re.sub(r"^error\[\w+\]:\s*", "", first)
    where = _WHERE.search(error)
    line = int(where.group("line")) if where else None
    return RulesError(origin, line, message, rule_at(text, line) if line else None)


__all__ = ["RulesError", "compile_sources", "rule_at"]
