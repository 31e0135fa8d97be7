"""``VMGuardRepository``: an S3 bucket (MinIO or any S3 service) that holds vmguard archives.

The repository format is fixed when the repository is initialised, so the fields that
define it — bucket, prefix, chunk size, whether it is encrypted — cannot change later:
a different value would describe a different repository, and the archives the existing
VMGuardBackups point at would vanish from view. To move, create a new VMGuardRepository.
The encryption key's Secret may be renamed; the key in it must stay the same.
"""

from __future__ import annotations

from vmguard.api.kinds import REPOSITORY
from vmguard.crds import fields as f
from vmguard.crds.definition import Kind, column, name_is_label, ready_column
from vmguard.crds.schema import (
    array,
    boolean,
    enum,
    integer,
    number,
    obj,
    rule,
    string,
    timestamp,
)

MiB = 1 << 20
CHUNK_SIZES = [MiB << n for n in range(7)]  # 1 MiB … 64 MiB
DEFAULT_CHUNK_SIZE = 4 * MiB

s3 = obj(
    "The S3 service and the place in it where the repository lives.",
    {
        "endpoint": f.endpoint(
            "host[:port] of the S3 API, e.g. minio.backup.svc:9000 or s3.eu-west-1.amazonaws.com."
        ),
        "bucket": f.bucket(
            "Bucket name; the bucket must exist (with Object Lock enabled when "
            "objectLockDays is set)."
        ),
        "prefix": f.key_prefix(
            "Key prefix of the repository inside the bucket, so several repositories "
            "can share a bucket. Absent: the bucket root."
        ),
        "region": string("Region of the bucket (MinIO ignores it).", min_length=1, max_length=63),
        "insecure": boolean(
            "Speak plain HTTP instead of HTTPS (a MinIO inside the cluster).", default=False
        ),
        "caBundle": f.pem_bundle("CA certificates for the endpoint's TLS certificate."),
    },
    required=["endpoint", "bucket"],
    rules=[
        rule("self.bucket == oldSelf.bucket", "s3.bucket is immutable", field_path=".bucket"),
        rule(
            "(has(self.prefix) ? self.prefix : '') == (has(oldSelf.prefix) ? oldSelf.prefix : '')",
            "s3.prefix is immutable",
            field_path=".prefix",
        ),
        rule(
            "!(has(self.caBundle) && self.insecure)",
            "caBundle has no use with insecure: true (plain HTTP)",
        ),
    ],
)

schedule = {
    "schedule": f.cron("When to run, as cron (minute hour day-of-month month day-of-week)."),
    "timeZone": f.time_zone("Time zone of the schedule (IANA name)."),
}

spec = obj(
    "Where the repository is and how its data is written.",
    {
        "s3": s3,
        "credentialsSecretRef": f.secret_ref(
            "Secret with the S3 access key pair.",
            {
                "accessKeyIDKey": ("accessKeyID", "the access key id"),
                "secretAccessKeyKey": ("secretAccessKey", "the secret access key"),
            },
        ),
        "encryption": obj(
            "Encrypt chunks and metadata with AES-256-GCM. Decided when the repository is "
            "created: it cannot be added or removed later.",
            {
                "keySecretRef": f.secret_ref(
                    "Secret holding the repository key (32 random bytes, e.g. "
                    "`openssl rand 32`). Losing it loses every backup in the repository.",
                    {"key": ("key", "the repository key")},
                )
            },
            required=["keySecretRef"],
        ),
        "objectLockDays": integer(
            "Keep every object an archive needs (chunks, indexes, manifest and the key "
            "material that decrypts them) under S3 Object Lock for this many days, so "
            "nobody without the right to bypass it, vmguard included, can delete or "
            "overwrite a backup sooner. Fixed when the operator creates the repository; "
            "a repository whose config says otherwise is not Ready. Leave out for no lock.",
            minimum=1,
            maximum=36500,
        ),
        "objectLockMode": enum(
            "S3 Object Lock mode with objectLockDays: GOVERNANCE (a principal allowed "
            "s3:BypassGovernanceRetention can lift it) or COMPLIANCE (nobody can, not even "
            "the bucket's root account, until the period ends). Default GOVERNANCE.",
            ["GOVERNANCE", "COMPLIANCE"],
        ),
        "chunkSize": integer(
            "Size in bytes of the fixed chunks disks are cut into: a power of two from "
            "1 MiB to 64 MiB. Smaller dedups better, larger needs fewer objects.",
            default=DEFAULT_CHUNK_SIZE,
            rules=[
                rule(
                    f"self in {CHUNK_SIZES}",
                    "chunkSize must be a power of two between 1 MiB (1048576) and 64 MiB "
                    "(67108864), e.g. 4194304 for 4 MiB",
                ),
                rule("self == oldSelf", "chunkSize is immutable"),
            ],
        ),
        "verify": obj(
            "Periodic verification of the repository.",
            {
                **schedule,
                "depth": enum(
                    "existence: every chunk an archive references exists; full: every "
                    "chunk is also read, decrypted and hashed (reads the whole repository).",
                    ["existence", "full"],
                    default="existence",
                ),
            },
            required=["schedule"],
        ),
        "gc": obj(
            "Periodic garbage collection of chunks no archive references.",
            {
                **schedule,
                "gracePeriod": f.duration(
                    "Unreferenced chunks younger than this are left alone, so a failed "
                    "backup's retry can re-use them. Running backups are protected by "
                    "their leases, not by this period (docs/repository-format.md §7.5).",
                    minimum="1m",
                    maximum="720h",
                    default="24h",
                ),
            },
            required=["schedule"],
        ),
        "allowedNamespaces": f.allowed_namespaces("VMGuardRepository"),
    },
    required=["s3", "credentialsSecretRef"],
    rules=[
        rule(
            "has(self.encryption) == has(oldSelf.encryption)",
            "encryption cannot be added to or removed from an existing repository",
            field_path=".encryption",
        )
    ],
)

status = obj(
    "What the operator last observed of the repository.",
    {
        "observedGeneration": f.observed_generation(),
        "conditions": f.conditions(),
        "reachable": boolean("Whether the last access to the bucket succeeded."),
        "repositoryId": string("Id from the repository's config object.", max_length=64),
        "formatVersion": integer("Version of the repository format.", minimum=1),
        "encrypted": boolean("Whether the repository's config says it is encrypted."),
        "formatFeatures": array(
            "Format features the repository uses (docs/repository-format.md §2); "
            "`vmguard repo upgrade` adds those this release knows.",
            string(max_length=63),
            max_items=32,
        ),
        "archives": integer("Archives (backup points) in the repository.", minimum=0),
        "chunks": integer("Distinct chunks stored.", minimum=0, int64=True),
        "storedBytes": integer(
            "Bytes the repository occupies in the bucket (compressed, deduplicated).",
            minimum=0,
            int64=True,
        ),
        "logicalBytes": integer(
            "Bytes of disk data all archives describe, as if each were a full copy.",
            minimum=0,
            int64=True,
        ),
        "dedupRatio": number("logicalBytes / storedBytes.", minimum=0),
        "lastVerify": obj(
            "The last verification.",
            {
                "time": timestamp("When it finished."),
                "depth": string(max_length=16, enum=["existence", "full"]),
                "chunksChecked": integer(minimum=0, int64=True),
                "errors": integer("Missing or corrupt chunks found.", minimum=0),
            },
        ),
        "lastGC": obj(
            "The last garbage collection.",
            {
                "time": timestamp("When it finished."),
                "chunksDeleted": integer(minimum=0, int64=True),
                "bytesFreed": integer(minimum=0, int64=True),
            },
        ),
    },
)

KIND = Kind(
    names=REPOSITORY,
    description="An S3/MinIO bucket holding deduplicated, compressed VM backups.",
    spec=spec,
    status=status,
    columns=[
        column("Endpoint", ".spec.s3.endpoint", "S3 endpoint.", priority=1),
        column("Bucket", ".spec.s3.bucket", "Bucket."),
        column("Prefix", ".spec.s3.prefix", "Prefix in the bucket.", priority=1),
        ready_column(),
        column("Archives", ".status.archives", "Backup points stored.", type_="integer"),
        column(
            "Stored-Bytes",
            ".status.storedBytes",
            "Bytes in the bucket.",
            type_="integer",
        ),
        column("Dedup", ".status.dedupRatio", "Logical / stored bytes.", type_="number"),
        column("Last-Verify", ".status.lastVerify.time", "Last verify.", type_="date", priority=1),
    ],
    root_rules=[name_is_label("VMGuardRepository", "it becomes a label value on VMGuardBackups")],
)
