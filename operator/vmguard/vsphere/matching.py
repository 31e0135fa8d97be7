"""Which policy protects which VM: pure functions, no I/O.

Rules (the resource model documents them for users):

- A **selector** (the ``VMProtectionPolicy`` CRD's ``spec.selector``) is a conjunction
  of criteria. ``names`` (globs), ``folders``, ``datacenters``, ``clusters`` and
  ``powerStates`` list alternatives: one entry must match. ``tags`` and
  ``customAttributes`` are required together, like a label selector's ``matchLabels``:
  the VM must carry every one. A selector that sets nothing matches nothing: a policy
  protects what it names, never everything by accident.
- ``exclude`` has ``names``, ``folders``, ``tags`` and ``customAttributes``; a VM matching
  *any* of its entries is excluded ("not these names, not this folder, not this tag").
- Name globs are shell patterns (``*``, ``?``, ``[...]``) over the whole name,
  case-sensitive, Unicode included. A folder matches itself and every folder below it;
  patterns with wildcards are accepted too (``*`` stays within one level, ``**``
  crosses levels). A cluster is named by its name or its inventory path.
- A tag is ``{category, name}`` (category optional); a custom attribute is
  ``{name, value}`` with an exact value.
- Templates are never selected: a template is reported as ``Template``, not as
  unprotected.
- Every VM gets **exactly one** effective policy: among the non-default policies of its
  vCenter that match, the highest ``priority`` wins; at equal priority the policy whose
  name sorts first wins and the others are reported as a conflict. If none matches, the
  vCenter's default (fail-safe) policy applies. If there is no default either, the VM is
  **unprotected**.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any

from vmguard.vsphere.records import VMRecord


@dataclass(frozen=True)
class Criteria:
    names: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()
    datacenters: tuple[str, ...] = ()
    clusters: tuple[str, ...] = ()
    # ("category", "name") with category "" for any category
    tags: tuple[tuple[str, str], ...] = ()
    custom_attributes: tuple[tuple[str, str], ...] = ()
    power_states: tuple[str, ...] = ()

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> Criteria:
        spec = spec or {}
        return cls(
            names=tuple(spec.get("names") or ()),
            folders=tuple(spec.get("folders") or ()),
            datacenters=tuple(spec.get("datacenters") or ()),
            clusters=tuple(spec.get("clusters") or ()),
            tags=tuple((t.get("category", ""), t["name"]) for t in spec.get("tags") or ()),
            custom_attributes=tuple(
                (a["name"], a["value"]) for a in spec.get("customAttributes") or ()
            ),
            power_states=tuple(spec.get("powerStates") or ()),
        )

    def is_empty(self) -> bool:
        return not any(getattr(self, f) for f in self.__dataclass_fields__)

    def checks(self, vm: VMRecord, every_tag: bool) -> list[bool]:
        """One result per criterion this selector sets.

        ``every_tag``: tags and custom attributes must all be present (a selector's
        rule) rather than any one of them (an exclusion's rule).
        """
        out = []
        if self.names:
            out.append(any(fnmatchcase(vm.name, p) for p in self.names))
        if self.folders:
            out.append(any(folder_matches(vm.folder_path, p) for p in self.folders))
        if self.datacenters:
            out.append(vm.datacenter in self.datacenters)
        if self.clusters:
            out.append(any(c in (vm.cluster, vm.cluster_path) for c in self.clusters))
        combine = all if every_tag else any
        if self.tags:
            out.append(combine(_has_tag(vm, cat, name) for cat, name in self.tags))
        if self.custom_attributes:
            attrs = vm.custom_attributes
            out.append(combine(attrs.get(k) == v for k, v in self.custom_attributes))
        if self.power_states:
            out.append(vm.power_state in self.power_states)
        return out


def _has_tag(vm: VMRecord, category: str, name: str) -> bool:
    return f"{category}:{name}" in vm.tags if category else name in vm.tag_names


@dataclass(frozen=True)
class Selector:
    include: Criteria = field(default_factory=Criteria)
    exclude: Criteria = field(default_factory=Criteria)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> Selector:
        spec = spec or {}
        return cls(
            include=Criteria.from_spec(spec), exclude=Criteria.from_spec(spec.get("exclude"))
        )

    def matches(self, vm: VMRecord) -> bool:
        if vm.template:
            return False
        checks = self.include.checks(vm, every_tag=True)
        if not checks or not all(checks):
            return False
        return not any(self.exclude.checks(vm, every_tag=False))


@lru_cache(maxsize=1024)
def _folder_regex(pattern: str) -> re.Pattern[str]:
    pattern = pattern.rstrip("/") or "/"
    if not any(c in pattern for c in "*?["):
        # A plain folder path matches itself and everything below it.
        return re.compile(re.escape(pattern) + r"(/.*)?\Z", re.DOTALL)
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape("["))
                i += 1
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                out.append("[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def folder_matches(folder_path: str, pattern: str) -> bool:
    return bool(_folder_regex(pattern).match(folder_path.rstrip("/") or "/"))


@dataclass(frozen=True)
class PolicyRef:
    """What matching needs to know of a ``VMProtectionPolicy``."""

    name: str
    vcenter: str
    priority: int = 0
    default: bool = False
    paused: bool = False
    selector: Selector = field(default_factory=Selector)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> PolicyRef:
        spec = obj.get("spec") or {}
        return cls(
            name=obj["metadata"]["name"],
            vcenter=(spec.get("vcenterRef") or {}).get("name", ""),
            priority=int(spec.get("priority", 0)),
            default=bool(spec.get("default", False)),
            paused=bool(spec.get("paused", False)),
            selector=Selector.from_spec(spec.get("selector")),
        )


@dataclass(frozen=True)
class Assignment:
    """The effective policy of one VM, and why."""

    vm: VMRecord
    policy: str | None
    reason: str  # "Matched", "Default", "Template" or "Unprotected"
    conflicts: tuple[str, ...] = ()


@dataclass
class MatchResult:
    assignments: list[Assignment]
    # Configuration problems found while matching (several defaults, ...), for conditions.
    problems: list[str] = field(default_factory=list)

    @property
    def unprotected(self) -> list[VMRecord]:
        return [a.vm for a in self.assignments if a.reason == "Unprotected"]

    def by_policy(self) -> dict[str, list[VMRecord]]:
        out: dict[str, list[VMRecord]] = {}
        for a in self.assignments:
            if a.policy is not None:
                out.setdefault(a.policy, []).append(a.vm)
        return out


def assign(vms: Iterable[VMRecord], policies: Sequence[PolicyRef], vcenter: str) -> MatchResult:
    """Give every VM of one vCenter exactly one effective policy (or none)."""
    mine = [p for p in policies if p.vcenter == vcenter]
    defaults = sorted((p for p in mine if p.default), key=lambda p: p.name)
    ranked = sorted((p for p in mine if not p.default), key=lambda p: (-p.priority, p.name))
    problems = []
    if len(defaults) > 1:
        names = ", ".join(p.name for p in defaults)
        problems.append(f"several default policies ({names}); {defaults[0].name} applies")
    fallback = defaults[0] if defaults else None
    out = []
    for vm in vms:
        hits = [p for p in ranked if p.selector.matches(vm)]
        if hits:
            best = hits[0]
            ties = tuple(p.name for p in hits[1:] if p.priority == best.priority)
            out.append(Assignment(vm, best.name, "Matched", ties))
        elif vm.template:
            out.append(Assignment(vm, None, "Template"))
        elif fallback is not None:
            out.append(Assignment(vm, fallback.name, "Default"))
        else:
            out.append(Assignment(vm, None, "Unprotected"))
    return MatchResult(out, problems)
