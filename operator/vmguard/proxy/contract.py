"""The proxy Job's contract with the operator's Job builders: the one module both import.

:mod:`vmguard.controller.kube.proxyjob` writes a proxy Job from these names — its command
line (:func:`backup_args`, :func:`restore_args`), its environment and where a files
restore's PVC is mounted — and the proxy reads them back
(:mod:`vmguard.proxy.environment`, :mod:`vmguard.cli.proxy`). A name changed here
changes both sides at once.

Invariants: names and paths only. This module imports nothing but :mod:`vmguard.config`,
so the controller may import it without pulling in the data plane (the import-linter
contracts allow the controller this one module of ``vmguard.proxy``). Credentials are
never values in a Job: the builders pass them as ``secretKeyRef`` variables and the
repository key as a read-only Secret file whose path is in :data:`KEY_FILE_ENV`.
"""

from __future__ import annotations

# Defined in vmguard.config because layers below the proxy read them too: the store
# (repository URL and S3 credentials), the CLI (vCenter credentials) and the operator's
# ProxySettings (VDDK path).
from vmguard.config import (
    REPO_ENV,
    S3_ACCESS_ENV,
    S3_SECRET_ENV,
    VC_PASSWORD_ENV,
    VC_USER_ENV,
    VDDK_PATH_ENV,
)

__all__ = [
    "BACKUP",
    "COMMAND",
    "COPY",
    "COPY_BANDWIDTH_ENV",
    "COPY_TARGET",
    "DISKS_AT_ONCE_ENV",
    "KEY_FILE_ENV",
    "LOCATOR_ENV",
    "REPO_ENV",
    "RESTORE",
    "RESTORE_TARGET_DIR",
    "S3_ACCESS_ENV",
    "S3_CA_BUNDLE_ENV",
    "S3_SECRET_ENV",
    "TRANSPORT_ENV",
    "VC_CA_BUNDLE_ENV",
    "VC_CA_FILE_ENV",
    "VC_INSECURE_ENV",
    "VC_PASSWORD_ENV",
    "VC_THUMBPRINT_ENV",
    "VC_URL_ENV",
    "VC_USER_ENV",
    "VDDK_PATH_ENV",
    "VERIFY",
    "VERIFY_RULES_DIR",
    "backup_args",
    "copy_args",
    "copy_target_name",
    "restore_args",
    "verify_args",
]

# vCenter: URL, and one of CA bundle (PEM text), CA file (a mounted Secret), thumbprint,
# or insecure ("true"); user and password as secretKeyRef variables.
VC_URL_ENV = "VMGUARD_VC_URL"
VC_CA_BUNDLE_ENV = "VMGUARD_VC_CA_BUNDLE"
VC_CA_FILE_ENV = "VMGUARD_VC_CA_FILE"
VC_THUMBPRINT_ENV = "VMGUARD_VC_THUMBPRINT"
VC_INSECURE_ENV = "VMGUARD_VC_INSECURE"
# The repository: URL (REPO_ENV), the S3 endpoint's CA bundle (PEM text), the path of
# the mounted key file; S3 credentials as secretKeyRef variables.
S3_CA_BUNDLE_ENV = "VMGUARD_S3_CA_BUNDLE"
KEY_FILE_ENV = "VMGUARD_KEY_FILE"
# How disks are reached: ``vddk`` or ``SCHEME:ARG`` of an installed locator
# (vmguard.vm.access.open_locator); and the transport wanted.
LOCATOR_ENV = "VMGUARD_PROXY_LOCATOR"
TRANSPORT_ENV = "VMGUARD_TRANSPORT"
# How many of a VM's disks a restore Job writes at once: what its vCenter's limits grant
# (controller.kube.admission.disks_at_once); unset: vmguard.vm.restore.DISKS_AT_ONCE.
DISKS_AT_ONCE_ENV = "VMGUARD_RESTORE_DISKS_AT_ONCE"

RESTORE_TARGET_DIR = "/restore-target"
"""Where a files restore into a PVC finds the claim mounted."""

COMMAND, BACKUP, RESTORE, COPY, VERIFY = "proxy", "backup", "restore", "copy", "verify"
"""``vmguard proxy backup|restore|copy|verify``: the sub-commands the Jobs run."""

VERIFY_RULES_DIR = "/verify-rules"
"""Where a verification Job finds its YARA rules (the policy's ConfigMap, mounted)."""

COPY_TARGET = "VMGUARD_COPY_"
"""A copy Job's target repository: the source's variables (:data:`REPO_ENV`,
:data:`S3_ACCESS_ENV`, :data:`S3_SECRET_ENV`, :data:`S3_CA_BUNDLE_ENV`,
:data:`KEY_FILE_ENV`) with ``VMGUARD_`` replaced by this prefix (``VMGUARD_COPY_REPO``,
...); the source is the Job's ordinary repository."""


COPY_BANDWIDTH_ENV = "VMGUARD_COPY_BANDWIDTH"
"""A copy Job's bandwidth limit: bytes per second of chunks written to the target (a
copy target's ``bandwidthLimitMiBps``); unset: no limit."""


def copy_target_name(name: str) -> str:
    """The target's variable for the source's ``name`` (:data:`COPY_TARGET`)."""
    return COPY_TARGET + name.removeprefix("VMGUARD_")


def backup_args(namespace: str, name: str) -> list[str]:
    """The proxy's arguments for one VMGuardBackup (after the image's ``vmguard`` command)."""
    return [COMMAND, BACKUP, "--namespace", namespace, "--name", name]


def copy_args(archive_id: str) -> list[str]:
    """The proxy's arguments to copy one archive from the Job's repository to its target."""
    return [COMMAND, COPY, "--archive", archive_id]


def verify_args(
    namespace: str, name: str, *, fsck: bool, yara: bool, fsck_refused: str = ""
) -> list[str]:
    """The proxy's arguments to verify the archive of one completed VMGuardBackup: its
    file systems (``--fsck``) and/or a YARA scan with the rules in
    :data:`VERIFY_RULES_DIR` (``--yara``). ``fsck_refused``: why the file systems asked
    for are not checked (the pod may not mount FUSE there): reported as the file-system
    check's ``Error`` beside the scan's result."""
    args = [COMMAND, VERIFY, "--namespace", namespace, "--name", name]
    if fsck:
        args.append("--fsck")
    if yara:
        args += ["--yara", VERIFY_RULES_DIR]
    if fsck_refused:
        args += ["--fsck-refused", fsck_refused]
    return args


def restore_args(namespace: str, name: str) -> list[str]:
    """The proxy's arguments for one VMGuardRestore."""
    return [COMMAND, RESTORE, "--namespace", namespace, "--name", name]
