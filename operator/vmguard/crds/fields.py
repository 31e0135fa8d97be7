"""Field types shared by the vmguard kinds: references, durations, cron, globs, VM identity.

Each function returns the schema of one field as a user writes it, with the validation
that belongs to the *value* (a DNS name, a duration, a cron line) and the message the
user reads when it is wrong. Rules that relate several fields live in the kind modules.

Conventions (documented in ``docs/resource-model.md``):

- References are same-namespace ``{name: ...}`` objects, except ``vcenterRef`` and
  ``repositoryRef``, which may add a ``namespace`` (:func:`object_ref`; honoured when the
  referenced object's ``allowedNamespaces`` names the referrer, docs/tenancy.md). VCenter,
  VMGuardRepository and
  VMProtectionPolicy names are DNS-1123 *labels* (≤ 63 characters) because the operator
  copies them into label values and into generated VMGuardBackup names; everything else is
  referenced by a DNS-1123 *subdomain* (≤ 253), as Kubernetes names Secrets and PVCs.
- Durations use Go's syntax restricted to ``h``, ``m`` and ``s`` (``90m``, ``1h30m``);
  there is no ``d`` because Go has none and the operator parses them with Go's rules.
- VM names are free unicode (vSphere allows slashes and percent signs in names), so they
  are never used where a Kubernetes name is expected.
"""

from __future__ import annotations

from collections.abc import Mapping

from vmguard.crds.schema import (
    Schema,
    array,
    boolean,
    cel_string,
    integer,
    obj,
    rule,
    string,
    timestamp,
)

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
DURATION = r"^([0-9]+(\.[0-9]+)?(h|m|s))+$"
UUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
VM_MOREF = r"^vm-[0-9]{1,10}$"
_LABEL = r"[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?"
HOSTNAME = rf"{_LABEL}(\.{_LABEL})*\.?"
IPV6 = r"[0-9a-fA-F:.]*:[0-9a-fA-F:.]*"
# A glob is literal text, '*', '?' and classes '[abc]', '[a-z]', '[!abc]'. A '[' always
# opens a class that must be closed and non-empty (fnmatch would silently take an
# unclosed one literally, and a typo there would quietly select other VMs).
GLOB = r"^([^\[]|\[!?[^\]]+\])*$"
# S3 bucket naming rules: 3-63 lowercase letters, digits, dots and hyphens.
BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
# An object key prefix: non-empty segments of S3's safe characters, no leading or
# trailing slash, no '//'.
KEY_PREFIX = r"^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*$"
MAX_VM_NAME = 255
MAX_INVENTORY_PATH = 2048
MAX_DISKS = 256  # vSphere 8 allows up to 256 virtual disks per VM


def object_name(description: str, *, label: bool) -> Schema:
    """The ``name`` of a referenced Kubernetes object."""
    if label:
        return string(description, min_length=1, max_length=63, pattern=DNS_LABEL)
    return string(description, min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)


def local_ref(description: str, kind: str, *, label: bool) -> Schema:
    """``{name}`` of a ``kind`` object in the same namespace."""
    return obj(
        description,
        {"name": object_name(f"Name of the {kind} in this namespace.", label=label)},
        required=["name"],
    )


def object_ref(description: str, kind: str) -> Schema:
    """``{name, namespace?}`` of a VCenter or VMGuardRepository, possibly in another
    namespace (a platform namespace that lists the referrer in its
    ``spec.allowedNamespaces``)."""
    return obj(
        description,
        {
            "name": object_name(f"Name of the {kind}.", label=True),
            "namespace": object_name(
                f"Namespace of the {kind} (default: this one). Another namespace is honoured "
                f"only when the {kind}'s spec.allowedNamespaces lists this one.",
                label=True,
            ),
        },
        required=["name"],
    )


def allowed_namespaces(kind: str) -> Schema:
    """``spec.allowedNamespaces`` of a VCenter or VMGuardRepository."""
    return array(
        f"Namespaces whose objects may reference this {kind} with {{name, namespace}} "
        "(its own namespace always may). Exact names; edited by the platform team only. "
        "Their proxy Jobs run in this namespace (docs/tenancy.md).",
        object_name("A namespace.", label=True),
        max_items=1000,
        list_type="set",
    )


def secret_key(description: str, default: str) -> Schema:
    return string(description, min_length=1, max_length=253, pattern=SECRET_KEY, default=default)


def secret_ref(description: str, keys: Mapping[str, tuple[str, str]]) -> Schema:
    """A Secret in this namespace and the keys to read from it.

    ``keys`` maps a field name (``passwordKey``) to (its default key, what the key holds).
    The spec names keys, never values: no secret ever appears in a vmguard object.
    """
    props: dict[str, Schema] = {"name": object_name("Name of the Secret.", label=False)}
    for field, (default, holds) in keys.items():
        props[field] = secret_key(f"Key in the Secret that holds {holds}.", default)
    return obj(description, props, required=["name"])


def duration(
    description: str,
    *,
    minimum: str | None = None,
    maximum: str | None = None,
    default: str | None = None,
) -> Schema:
    """A Go duration (``30s``, ``5m``, ``1h30m``), optionally bounded (bounds checked in CEL)."""
    rules = []
    guard = f"!self.matches({cel_string(DURATION)})"
    if minimum is not None:
        rules.append(
            rule(
                f"{guard} || duration(self) >= duration('{minimum}')", f"must be at least {minimum}"
            )
        )
    if maximum is not None:
        rules.append(
            rule(
                f"{guard} || duration(self) <= duration('{maximum}')", f"must be at most {maximum}"
            )
        )
    return string(
        description + " A duration such as 90s, 15m or 1h30m (units h, m, s).",
        min_length=2,
        max_length=32,
        pattern=DURATION,
        default=default,
        rules=rules,
    )


def _cron_field(value: str, *, question_mark: bool = False) -> str:
    star = r"(\*|\?)" if question_mark else r"\*"
    item = rf"({star}|{value}(-{value})?)(/[1-9][0-9]?)?"
    return rf"{item}(,{item})*"


_MINUTE = r"[0-5]?[0-9]"
_HOUR = r"([01]?[0-9]|2[0-3])"
_DAY = r"(0?[1-9]|[12][0-9]|3[01])"
_MONTH = r"(0?[1-9]|1[0-2]|jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
_WEEKDAY = r"([0-7]|sun|mon|tue|wed|thu|fri|sat)"
_MACROS = "@(yearly|annually|monthly|weekly|daily|midnight|hourly)"
CRON = (
    r"(?i)^("
    + _MACROS
    + "|"
    + " +".join(
        [
            _cron_field(_MINUTE),
            _cron_field(_HOUR),
            _cron_field(_DAY, question_mark=True),
            _cron_field(_MONTH),
            _cron_field(_WEEKDAY, question_mark=True),
        ]
    )
    + ")$"
)


def cron(description: str) -> Schema:
    """A five-field cron line as Kubernetes CronJobs take it, or an @daily-style macro.

    Every field's values are range-checked by the regular expression (minute 0-59, hour
    0-23, day 1-31, month 1-12 or jan-dec, weekday 0-7 or sun-sat), with lists, ranges
    and steps. Not checked: that a range runs upwards (``30-10``) and that the date can
    occur at all (``0 0 31 2 *``); the policy controller reports both as a condition.
    """
    return string(
        description,
        min_length=1,
        max_length=128,
        rules=[
            rule(
                f"self.matches({cel_string(CRON)})",
                message_expression=(
                    """"'" + self + "' is not a valid cron schedule: expected minute (0-59) """
                    "hour (0-23) day-of-month (1-31) month (1-12 or jan-dec) day-of-week "
                    "(0-7 or sun-sat), each *, a value, a range or a list with an optional "
                    "/step, e.g. '0 2 * * *' or '*/30 8-18 * * mon-fri'; or one of @hourly, "
                    '''@daily, @weekly, @monthly, @yearly"'''
                ),
                reason="FieldValueInvalid",
            )
        ],
    )


def time_zone(description: str) -> Schema:
    """An IANA time zone name (``UTC``, ``Europe/Berlin``); existence is checked by the operator."""
    return string(
        description,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9][A-Za-z0-9_+-]*){0,2}$",
        default="UTC",
        rules=[
            rule(
                "self != 'Local'",
                "'Local' would depend on where the operator runs: name a zone such as UTC",
            )
        ],
    )


def glob(description: str) -> Schema:
    """A case-sensitive shell glob over VM names (``web-*``, ``db-[0-9][0-9]``)."""
    return string(
        description,
        min_length=1,
        max_length=MAX_VM_NAME,
        rules=[
            rule(
                f"self.matches({cel_string(GLOB)})",
                message_expression=(
                    """"'" + self + "' is not a valid glob: every [ must open a non-empty """
                    '''class closed by ] (to match [ itself, write [[])"'''
                ),
            )
        ],
    )


def host(description: str) -> Schema:
    """A host name or IP address (no scheme, no port, no path)."""
    return string(
        description,
        min_length=1,
        max_length=253,
        rules=[
            rule(
                f"self.matches({cel_string('^(' + HOSTNAME + '|' + IPV6 + ')$')})",
                message_expression=(
                    """"'" + self + "' is not a host name or IP address" + """
                    '''(self.contains("/") ? " (give the host alone, without https:// or a path)"'''
                    """ : "")"""
                ),
            )
        ],
    )


def endpoint(description: str) -> Schema:
    """``host[:port]`` of a network service, without a scheme."""
    regex = "^(" + HOSTNAME + r"|\[" + IPV6 + r"\])(:[0-9]{1,5})?$"
    return string(
        description,
        min_length=1,
        max_length=261,
        rules=[
            rule(
                f"self.matches({cel_string(regex)})",
                message_expression=(
                    """"'" + self + "' is not host[:port]" + (self.contains("://") ? """
                    """" (drop the scheme; set insecure: true for plain http)" : "")"""
                ),
            )
        ],
    )


def pem_bundle(description: str) -> Schema:
    return string(
        description + " PEM, one or more certificates.",
        min_length=1,
        max_length=65536,
        rules=[
            rule(
                "self.contains('-----BEGIN CERTIFICATE-----')",
                "must hold PEM certificates (-----BEGIN CERTIFICATE-----)",
            )
        ],
    )


def bucket(description: str) -> Schema:
    return string(description, min_length=3, max_length=63, pattern=BUCKET)


def key_prefix(description: str) -> Schema:
    """An S3 key prefix; ``.`` and ``..`` segments are refused (they mean nothing to S3)."""
    return string(
        description,
        min_length=1,
        max_length=512,
        pattern=KEY_PREFIX,
        rules=[rule("!self.split('/').exists(s, s == '..' || s == '.')", "no . or .. segments")],
    )


def vm_name(description: str) -> Schema:
    """A vSphere VM name: any unicode text, slashes included, up to 255 characters."""
    return string(description, min_length=1, max_length=MAX_VM_NAME)


def inventory_path(description: str) -> Schema:
    """A vSphere inventory path such as ``/DC0/vm/prod`` (names percent-escaped as vSphere does)."""
    return string(
        description,
        min_length=2,
        max_length=MAX_INVENTORY_PATH,
        rules=[rule("self.startsWith('/')", "must be an inventory path starting with /")],
    )


def inventory_name(description: str) -> Schema:
    """A vSphere object's name or inventory path (datastore, host, resource pool, network)."""
    return string(description, min_length=1, max_length=MAX_INVENTORY_PATH)


def vm_identity(description: str, *, required: bool) -> Schema:
    """The three ways vSphere identifies a VM; the instance UUID is the one that lasts."""
    props = {
        "instanceUuid": string(
            "vCenter instance UUID of the VM (config.instanceUuid): stable across renames "
            "and moves, and what backups are indexed by.",
            max_length=36,
            pattern=UUID,
        ),
        "moref": string(
            "Managed object id of the VM in its vCenter, e.g. vm-1042.",
            max_length=13,
            pattern=VM_MOREF,
        ),
        "name": vm_name("VM name as vCenter shows it (any unicode, slashes included)."),
    }
    rules = []
    if required:
        rules.append(
            rule(
                "has(self.instanceUuid) || has(self.moref) || has(self.name)",
                "identify the VM by at least one of instanceUuid, moref, name",
            )
        )
    return obj(description, props, rules=rules)


def conditions() -> Schema:
    """``status.conditions``: the shape of ``metav1.Condition``, keyed by ``type``."""
    condition = obj(
        "One aspect of the object's state (metav1.Condition).",
        {
            "type": string(
                "CamelCase condition type, e.g. Ready.",
                max_length=316,
                pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
            ),
            "status": string(max_length=7, enum=["True", "False", "Unknown"]),
            "observedGeneration": integer(minimum=0, int64=True),
            "lastTransitionTime": timestamp("When status last changed."),
            "reason": string(
                "CamelCase reason for the last transition.",
                min_length=1,
                max_length=1024,
                pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
            ),
            "message": string("Human-readable details.", max_length=32768),
        },
        required=["type", "status", "lastTransitionTime", "reason", "message"],
    )
    return array(
        "Standard conditions; Ready summarises the object.",
        condition,
        max_items=32,
        list_type="map",
        map_keys=["type"],
    )


def observed_generation() -> Schema:
    return integer("metadata.generation of the spec the status describes.", minimum=0, int64=True)


def progress(what: str) -> Schema:
    """``status.progress`` of a long operation, patched by the proxy Job as it goes."""
    return obj(
        f"How far the {what} has come; updated every few seconds while it runs.",
        {
            "percent": integer("Share of bytesTotal done, 0-100.", minimum=0, maximum=100),
            "bytesDone": integer("Bytes processed so far.", minimum=0, int64=True),
            "bytesTotal": integer("Bytes to process in all.", minimum=0, int64=True),
            "bytesPerSecond": integer("Recent throughput.", minimum=0, int64=True),
            "updateTime": timestamp("When the mover last reported."),
        },
    )


def failure() -> Schema:
    """``status.error``: why an operation failed, as one reason and one message."""
    return obj(
        "Why the operation failed; absent unless it did. Never holds a secret value.",
        {
            "reason": string(
                "CamelCase cause, e.g. SnapshotFailed, RepositoryUnreachable.",
                max_length=128,
                pattern=r"^[A-Za-z][A-Za-z0-9]*$",
            ),
            "message": string("What happened, for a human.", max_length=4096),
            "retryable": boolean("Whether the operator will retry on its own."),
        },
        required=["reason"],
    )


def placement(description: str) -> Schema:
    """Where proxy work reads or writes: the host and the disks per datastore, by which
    the admission limits count (docs/admission.md)."""
    return obj(
        description,
        {
            "host": string("ESXi host name.", max_length=255),
            "datastores": array(
                "Datastores holding the VM's files.",
                string(max_length=255),
                max_items=MAX_DISKS,
            ),
            "disks": array(
                "The VM's disks per datastore (the limits count disks).",
                obj(
                    None,
                    {
                        "datastore": string("Datastore name.", max_length=255),
                        "count": integer("Disks on it.", minimum=0, maximum=MAX_DISKS),
                    },
                    required=["datastore", "count"],
                ),
                max_items=MAX_DISKS,
            ),
        },
    )


def queue_position() -> Schema:
    """``status.queuePosition`` of work waiting in its vCenter's admission queue."""
    return integer(
        "While waiting for admission: the place in its vCenter's queue (1: next); "
        "exact up to 10, then rounded up to 20, 50, 100, 200, …",
        minimum=1,
    )


MAX_FINDINGS = 20
"""Findings a verification records (on the VMGuardBackup; its point keeps the first
:data:`MAX_POINT_FINDINGS`): enough to act on, bounded so an infected estate's objects
stay small."""
MAX_POINT_FINDINGS = 5


def verification_findings(max_items: int) -> Schema:
    """``verification.findings[]``: what a verification found, one entry per YARA match
    (volume, path, rule) or damaged file system (volume, the checker's message)."""
    return array(
        "What the verification found: a YARA match names the volume, the file's path in it "
        "and the rule; a file-system check's damage names the volume and the checker's "
        "message.",
        obj(
            None,
            {
                "disk": string("The disk's key in the archive.", max_length=32),
                "volume": string(
                    "The volume, as vmguard files names it (p1, disk).", max_length=64
                ),
                "check": string("fsck or yara.", max_length=16),
                "path": string("The file's path inside the volume.", max_length=4096),
                "rule": string("The YARA rule that matched (namespace.rule).", max_length=256),
                "message": string("What the check said.", max_length=1024),
            },
        ),
        max_items=max_items,
    )
