"""Typed views of the specs the controllers read: VMGuardBackup's.

A ``TypedDict`` mirrors the CRD's spec schema key for key (tests/api/test_spec.py walks
both and fails when they part), so a misspelt key in a controller is mypy's error, not a
silent ``None``. A spec is written by people (or by a policy's scheduler) and checked
by the apiserver at admission (OpenAPI schema and CEL rules); keys the schema does not
require may be missing.

(Two classes where a key is required rather than ``NotRequired``: under postponed
annotations Python 3.11 cannot tell a ``NotRequired`` key from a required one at run
time.)
"""

from __future__ import annotations

from typing import Literal, TypedDict

from vmguard.api.status import VMIdentity


class LocalRef(TypedDict):
    """``{name}`` of an object in the same namespace."""

    name: str


class _ObjectRefKeys(TypedDict):
    name: str


class ObjectRef(_ObjectRefKeys, total=False):
    """``{name, namespace}`` of a VCenter or VMGuardRepository: without ``namespace``, or
    with the referring object's own, the object in the same namespace; with another, the
    object there, honoured only when its ``spec.allowedNamespaces`` names the referring
    namespace (docs/tenancy.md)."""

    namespace: str


class _BackupSpecKeys(TypedDict):
    vm: VMIdentity


class BackupSpec(_BackupSpecKeys, total=False):
    """``VMGuardBackup.spec``: what to back up (immutable)."""

    policyRef: LocalRef
    vcenterRef: ObjectRef
    repositoryRef: ObjectRef
    mode: Literal["auto", "full"]
    ttlSecondsAfterFinished: int
