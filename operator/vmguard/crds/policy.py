"""``VMProtectionPolicy``: which VMs are protected, when, where to, and for how long.

Every discovered VM gets exactly one effective policy: of the non-default policies of
its vCenter whose selector matches it, the one with the highest ``priority`` (ties go
to the name that sorts first, and are reported); failing that, the vCenter's default
policy (``default: true``). A default policy therefore has no selector, and every other
policy must have one that constrains something: a selector of ``names: ["*"]`` alone
would be a second, unmarked default.

Selector semantics: every criterion given must hold (AND). Within ``names``,
``folders``, ``datacenters``, ``clusters`` and ``powerStates`` any one entry may match
(OR); ``tags`` and ``customAttributes`` must all be present on the VM (AND), like a
label selector's ``matchLabels``. A VM matching any ``exclude`` criterion is not
selected.
"""

from __future__ import annotations

from vmguard.api import DEFAULT_BACKUP_TTL, MAX_BACKUP_TTL
from vmguard.api.kinds import POLICY
from vmguard.crds import fields as f
from vmguard.crds.definition import Kind, column, name_is_label, ready_column
from vmguard.crds.schema import (
    Schema,
    array,
    boolean,
    cel_string,
    enum,
    integer,
    obj,
    rule,
    string,
    timestamp,
)

POWER_STATES = ["poweredOn", "poweredOff", "suspended"]
RETENTION = ["keepLast", "keepHourly", "keepDaily", "keepWeekly", "keepMonthly", "keepYearly"]


def _tag() -> Schema:
    return obj(
        "A vSphere tag, optionally qualified by its category.",
        {
            "category": string("Tag category name.", min_length=1, max_length=255),
            "name": string("Tag name.", min_length=1, max_length=255),
        },
        required=["name"],
    )


def _attribute() -> Schema:
    return obj(
        "A vSphere custom attribute and the value it must have.",
        {
            "name": string("Custom attribute name.", min_length=1, max_length=255),
            "value": string("Exact value.", max_length=1024),
        },
        required=["name", "value"],
    )


def _criteria(exclude: bool) -> dict[str, Schema]:
    verb = "Exclude" if exclude else "Select"
    props: dict[str, Schema] = {
        "names": array(
            f"{verb} VMs whose name matches any of these globs.",
            f.glob("Glob over VM names."),
            min_items=1,
            max_items=256,
            list_type="set",
        ),
        "folders": array(
            f"{verb} VMs in any of these VM folders or their subfolders.",
            f.inventory_path("Inventory path of a VM folder, e.g. /DC0/vm/prod."),
            min_items=1,
            max_items=128,
            list_type="set",
        ),
        "tags": array(
            f"{verb} VMs carrying {'any' if exclude else 'all'} of these tags.",
            _tag(),
            min_items=1,
            max_items=32,
        ),
        "customAttributes": array(
            f"{verb} VMs with {'any' if exclude else 'all'} of these custom attribute values.",
            _attribute(),
            min_items=1,
            max_items=32,
            list_type="map",
            map_keys=["name"],
        ),
    }
    if not exclude:
        props["datacenters"] = array(
            "Select VMs in any of these datacenters (by name).",
            f.inventory_name("Datacenter name."),
            min_items=1,
            max_items=64,
            list_type="set",
        )
        props["clusters"] = array(
            "Select VMs whose host is in any of these clusters (name or inventory path).",
            f.inventory_name("Cluster name or path."),
            min_items=1,
            max_items=128,
            list_type="set",
        )
        props["powerStates"] = array(
            "Select VMs in any of these power states.",
            string(max_length=16, enum=POWER_STATES),
            min_items=1,
            max_items=3,
            list_type="set",
        )
    return props


_POSITIVE = ["names", "folders", "datacenters", "clusters", "tags", "customAttributes"]
_ANY_CRITERION = " || ".join(f"has(self.{c})" for c in [*_POSITIVE, "powerStates"])
_OTHER_THAN_NAMES = " || ".join(f"has(self.{c})" for c in [*_POSITIVE[1:], "powerStates"])

selector = obj(
    "Which VMs of the vCenter the policy protects. Absent on the default policy.",
    {
        **_criteria(exclude=False),
        "exclude": obj(
            "VMs matching any of these are not selected, whatever else matches.",
            _criteria(exclude=True),
            min_properties=1,
        ),
    },
    rules=[
        rule(
            _ANY_CRITERION,
            "selector must name at least one of names, folders, datacenters, clusters, "
            "tags, customAttributes, powerStates (exclude alone would select every VM)",
        ),
        rule(
            f"!has(self.names) || !self.names.exists(n, n.matches(r'^\\*+$')) "
            f"|| {_OTHER_THAN_NAMES}",
            'names: ["*"] with no other criterion selects every VM: '
            "use default: true for a catch-all policy",
            field_path=".names",
        ),
    ],
)

hook = obj(
    "A command run inside the guest through VMware Tools.",
    {
        "name": string("Label for status and events.", min_length=1, max_length=63),
        "command": string(
            "Absolute path of the program in the guest (/usr/local/bin/x or C:\\x.exe).",
            min_length=1,
            max_length=1024,
            rules=[
                rule(
                    r"self.startsWith('/') || self.matches(r'^[A-Za-z]:[\\/]')",
                    "command must be an absolute path in the guest",
                )
            ],
        ),
        "args": array(None, string(max_length=4096), max_items=64),
        "timeout": f.duration("Kill the command after this long.", maximum="1h", default="5m"),
        "onError": enum(
            "fail: fail the backup; continue: record a warning and go on.",
            ["fail", "continue"],
            default="fail",
        ),
    },
    required=["command"],
)

hooks = obj(
    "Commands run in the guest around the snapshot (e.g. flush a database).",
    {
        "guestCredentialsSecretRef": f.secret_ref(
            "Guest OS account the commands run as.",
            {
                "usernameKey": ("username", "the guest user name"),
                "passwordKey": ("password", "the guest password"),
            },
        ),
        "preSnapshot": array("Run in order before the snapshot.", hook, min_items=1, max_items=16),
        "postSnapshot": array(
            "Run in order after the snapshot, also when it failed.", hook, min_items=1, max_items=16
        ),
    },
    required=["guestCredentialsSecretRef"],
    rules=[
        rule(
            "has(self.preSnapshot) || has(self.postSnapshot)",
            "hooks: give preSnapshot or postSnapshot commands",
        )
    ],
)

_retention_sum = " || ".join(f"(has(self.{k}) && self.{k} > 0)" for k in RETENTION)

retention = obj(
    "Which backups to keep; a backup kept by any rule is kept. Each rule keeps the "
    "newest completed backup of each period (hour, day, ...) for that many periods, "
    "as restic and borg do.",
    {
        "keepLast": integer("Keep the newest N backups.", minimum=0, maximum=10000),
        "keepHourly": integer("Keep one backup per hour for N hours.", minimum=0, maximum=8760),
        "keepDaily": integer("Keep one backup per day for N days.", minimum=0, maximum=3660),
        "keepWeekly": integer("Keep one backup per week for N weeks.", minimum=0, maximum=520),
        "keepMonthly": integer("Keep one backup per month for N months.", minimum=0, maximum=1200),
        "keepYearly": integer("Keep one backup per year for N years.", minimum=0, maximum=100),
    },
    rules=[
        rule(
            _retention_sum,
            "retention must keep something: set at least one of keepLast, keepHourly, "
            "keepDaily, keepWeekly, keepMonthly, keepYearly above 0",
        )
    ],
)

MAX_COPIES = 4

copy_target = obj(
    "A second repository every completed backup of this policy is copied to (3-2-1): "
    "read from the primary repository, re-encrypted with the target's key, written "
    "under the target's Object Lock. The target must not be or overlap the primary "
    "(same bucket and nested prefixes) and must have the primary's chunk size; "
    "otherwise the policy's CopiesValid condition says why and nothing is copied there.",
    {
        "repositoryRef": f.local_ref(
            "The VMGuardRepository copies go to.", "VMGuardRepository", label=True
        ),
        "retention": retention,
        "delay": f.duration(
            "Copy a backup only once it completed this long ago (default: at once).",
            maximum="720h",
        ),
        "points": enum(
            "Which points are copied: All (every completed backup), Daily (each VM's "
            "first completed point of each day) or Weekly (of each week, from Monday), "
            "days in the policy's schedule.timeZone. Points not chosen are never copied "
            "and do not count as lagging.",
            ["All", "Daily", "Weekly"],
            default="All",
        ),
        "bandwidthLimitMiBps": integer(
            "At most this many MiB per second of chunks uploaded to the target by each "
            "copy Job (a token bucket in the Job; default: no limit).",
            minimum=1,
            maximum=100000,
        ),
        "credentialsSecretRef": f.secret_ref(
            "S3 credentials the copy Jobs write the target with, instead of the "
            "VMGuardRepository's: they need no delete right (docs/copies.md gives the S3 "
            "policy), while the target's retention and GC keep the repository's own.",
            {
                "accessKeyIDKey": ("accessKeyID", "the access key id"),
                "secretAccessKeyKey": ("secretAccessKey", "the secret access key"),
            },
        ),
    },
    required=["repositoryRef", "retention"],
)

copies = array(
    "Copy targets: other repositories that hold a copy of every completed backup, each "
    "with its own retention.",
    copy_target,
    min_items=1,
    max_items=MAX_COPIES,
)

boot_test = obj(
    "Boot the point as a temporary VM in an isolated network (docs/verification.md, "
    "Boot test): restored as a new VM (fresh instance UUID and MAC addresses) with every "
    "NIC on isolatedNetwork, powered on, its VMware Tools heartbeat awaited, the check "
    "script run in the guest (its exit code decides), the recovery time measured, the VM "
    "destroyed afterwards.",
    {
        "isolatedNetwork": f.inventory_name(
            "The network or distributed port group every NIC of the test VM is connected "
            "to. Required: a boot test never falls back to the source network."
        ),
        "folder": f.inventory_path("VM folder of the test VM (default: the datacenter's)."),
        "resourcePool": f.inventory_name("Resource pool of the test VM (name or path)."),
        "host": f.inventory_name("ESXi host of the test VM (name or inventory path)."),
        "datastore": f.inventory_name("Datastore of the test VM (default: the source's)."),
        "script": obj(
            "The check run in the guest once its tools answer: the ConfigMap key's text "
            "is handed to the interpreter (interpreter -c TEXT); exit code 0 passes.",
            {
                "configMapRef": f.local_ref(
                    "A ConfigMap in the policy's namespace.", "ConfigMap", label=False
                ),
                "key": string("The key holding the script.", min_length=1, max_length=253),
                "interpreter": string(
                    "Absolute path of the guest's interpreter.",
                    min_length=2,
                    max_length=255,
                    default="/bin/sh",
                    rules=[rule("self.startsWith('/')", "an absolute path in the guest")],
                ),
            },
            required=["configMapRef", "key"],
        ),
        "guestCredentialsSecretRef": f.secret_ref(
            "Guest OS account the script runs as (required with script).",
            {
                "usernameKey": ("username", "the guest user name"),
                "passwordKey": ("password", "the guest password"),
            },
        ),
        "timeout": f.duration(
            "The heartbeat and the script together must be done within this long after "
            "power-on; else the boot test fails.",
            minimum="10s",
            maximum="6h",
            default="10m",
        ),
    },
    required=["isolatedNetwork"],
    rules=[
        rule(
            "!has(self.script) || has(self.guestCredentialsSecretRef)",
            "boot.script needs boot.guestCredentialsSecretRef (the guest account)",
        )
    ],
)

verification = obj(
    "Verify every completed backup of this policy (docs/verification.md): a proxy Job "
    "checks the point's file systems (fsck, on a copy-on-write export: nothing is "
    "written to the repository) and scans its files with the user's YARA rules, "
    "admitted through the vCenter's queue after every waiting backup. The result is on "
    "the VMGuardBackup (status.verification) and on the point in the VM's ProtectedVM.",
    {
        "every": string(
            "When to verify: EachBackup (each backup once it completed), or a cron line "
            "(read in spec.schedule.timeZone): at each of its times the newest completed "
            "backup of each of the policy's VMs is verified (again), unless it was asked "
            "for since. A point whose VMGuardBackup expired is not verified by the "
            "operator (vmguard verify checks it from the repository).",
            max_length=128,
            default="EachBackup",
            rules=[
                rule(
                    f"self == 'EachBackup' || self.matches({cel_string(f.CRON)})",
                    "verification.every: EachBackup, or a cron line (minute hour "
                    "day-of-month month day-of-week), e.g. '0 3 * * 0'",
                )
            ],
        ),
        "fsck": boolean("Check every file system with its own checker.", default=True),
        "yara": obj(
            "Scan every file of the point with YARA rules (YARA-X).",
            {
                "configMapRef": f.local_ref(
                    "A ConfigMap in the policy's namespace whose keys ending in .yar or "
                    ".yara are rule files. Rules that do not compile are the policy's "
                    "VerificationReady condition (naming the key, the line and the rule); "
                    "a verification run with them ends as Error, saying the same.",
                    "ConfigMap",
                    label=False,
                ),
            },
            required=["configMapRef"],
        ),
        "boot": boot_test,
        "concurrency": integer(
            "At most this many of the policy's verifications run at once.",
            minimum=1,
            maximum=64,
            default=2,
        ),
    },
    rules=[
        rule(
            "self.fsck || has(self.yara) || has(self.boot)",
            "verification needs a check: fsck: true, yara, or boot",
        )
    ],
)

LABEL_KEY_MAX = 316  # a label key: a DNS subdomain prefix (253), "/", a name (63)

proxy = obj(
    "Where this policy's proxy pods run, within what the platform team allows: the chart's "
    "proxy.policyMay lists the priority classes, node label keys and taint keys a policy "
    "may name. Anything else is refused at admission (the chart's "
    "ValidatingAdmissionPolicy) and, should it get past, fails the backup with reason "
    "ProxySettingsNotAllowed. Merged over the chart's proxy settings: nodeSelector "
    "entries are added (a policy's value wins), tolerations appended, priorityClassName "
    "replaces the chart's.",
    {
        "priorityClassName": string(
            "An existing PriorityClass of this policy's proxy pods.",
            min_length=1,
            max_length=253,
        ),
        "nodeSelector": {
            "description": "Node labels this policy's proxy pods must run on.",
            "type": "object",
            "maxProperties": 16,
            "additionalProperties": string(max_length=63),
        },
        "tolerations": array(
            "Taints this policy's proxy pods tolerate. Each names its key: a toleration "
            "without one would tolerate every taint, control-plane taints included.",
            obj(
                "A Kubernetes toleration with a key.",
                {
                    "key": string("The taint's key.", min_length=1, max_length=LABEL_KEY_MAX),
                    "operator": enum("Exists or Equal.", ["Exists", "Equal"]),
                    "value": string("The taint's value (with Equal).", max_length=63),
                    "effect": enum(
                        "The taint effect tolerated (empty: all).",
                        ["NoSchedule", "PreferNoSchedule", "NoExecute"],
                    ),
                    "tolerationSeconds": integer(
                        "With NoExecute: how long the pod stays once tainted.", int64=True
                    ),
                },
                required=["key"],
            ),
            max_items=16,
        ),
    },
)

concurrency = obj(
    "How many of this policy's backups may run at once.",
    {
        "perDatastore": integer(
            "At most this many on VMs of one datastore (snapshot I/O).",
            minimum=1,
            maximum=64,
            default=2,
        ),
        "perHost": integer(
            "At most this many on VMs of one ESXi host.", minimum=1, maximum=64, default=4
        ),
        "total": integer("At most this many overall.", minimum=1, maximum=1000, default=8),
    },
    # The whole default, not {}: the apiserver checks a default against the rules as is.
    default={"perDatastore": 2, "perHost": 4, "total": 8},
    rules=[
        rule("self.perDatastore <= self.total", "concurrency.perDatastore exceeds total"),
        rule("self.perHost <= self.total", "concurrency.perHost exceeds total"),
    ],
)

spec = obj(
    "Selection, schedule, retention and behaviour of backups.",
    {
        "vcenterRef": f.object_ref("The vCenter whose VMs this policy protects.", "VCenter"),
        "repositoryRef": f.object_ref("Where the backups go.", "VMGuardRepository"),
        "default": boolean(
            "The fail-safe policy of the vCenter: it protects every VM that no other policy "
            "selects. It has no selector. One per vCenter.",
            default=False,
        ),
        "priority": integer(
            "When several policies select a VM, the highest priority wins.",
            minimum=0,
            maximum=1000000,
            default=0,
        ),
        "selector": selector,
        "schedule": obj(
            "When backups run.",
            {
                "cron": f.cron("Cron line (minute hour day-of-month month day-of-week)."),
                "timeZone": f.time_zone("Time zone the cron line is read in (IANA name)."),
                "jitter": f.duration(
                    "Start each VM's backup at a random delay up to this long after the "
                    "scheduled time, to spread load. Each VM keeps its own stable offset.",
                    maximum="24h",
                ),
            },
            required=["cron"],
        ),
        "retention": retention,
        "copies": copies,
        "verification": verification,
        "mode": obj(
            "Full or incremental. Every backup is a synthetic full in the repository; "
            "this only decides which blocks are read.",
            {
                "type": enum(
                    "auto: read only changed blocks (CBT) when the chain allows, else all "
                    "allocated blocks; full: always read all allocated blocks.",
                    ["auto", "full"],
                    default="auto",
                ),
                "fullEvery": integer(
                    "With auto: read everything every Nth backup anyway, so a CBT fault "
                    "cannot go unnoticed forever.",
                    minimum=1,
                    maximum=1000,
                ),
            },
            default={"type": "auto"},
            rules=[
                rule(
                    "self.type == 'auto' || !has(self.fullEvery)",
                    "mode.fullEvery only applies to type auto",
                    field_path=".fullEvery",
                )
            ],
        ),
        "transport": enum(
            "How disks are read: hotadd (attach to a proxy VM), nbd (over the network "
            "from ESXi), auto (hotadd when possible, else nbd).",
            ["auto", "hotadd", "nbd"],
            default="auto",
        ),
        "quiesce": obj(
            "Application-consistent snapshots through VMware Tools.",
            {
                "enabled": boolean("Quiesce the guest file systems.", default=False),
                "fallbackToCrashConsistent": boolean(
                    "When quiescing fails, take a crash-consistent snapshot (and say so in "
                    "status) rather than fail the backup.",
                    default=True,
                ),
            },
            default={"enabled": False, "fallbackToCrashConsistent": True},
        ),
        "snapshot": obj(
            "What happens around the backup's snapshot once it is removed.",
            {
                "consolidate": boolean(
                    "When vSphere reports that the VM's disks need consolidation "
                    "(consolidationNeeded), consolidate them (ConsolidateVMDisks). Off: "
                    "report it only, for an admin to consolidate in a maintenance window.",
                    default=True,
                ),
            },
            default={"consolidate": True},
        ),
        "hooks": hooks,
        "concurrency": concurrency,
        "proxy": proxy,
        "rpo": f.duration(
            "Recovery point objective: alert when a VM's last completed backup is older. "
            "Default: twice the schedule's interval.",
            minimum="1m",
            maximum="8760h",
        ),
        "ttlSecondsAfterFinished": integer(
            "How long a VMGuardBackup of this policy (one backup run) stays after it "
            "finished (Completed or Failed); then it is deleted, like a Job. Its archive "
            "and its restore point in the VM's ProtectedVM stay: only retention removes "
            "those. A VMGuardBackup's own spec.ttlSecondsAfterFinished wins.",
            minimum=0,
            maximum=MAX_BACKUP_TTL,
            default=DEFAULT_BACKUP_TTL,
        ),
        "paused": boolean(
            "Stop creating backups (running ones finish). Selection still counts VMs as "
            "protected, so the default policy does not take them over.",
            default=False,
        ),
        "failsafe": obj(
            "How fast the fail-safe backs up the policy's VMs that were never backed up "
            "(a rollout over many VMs is spread over sweeps, not snapshotted at once). "
            "VMs over the limits wait for the next sweeps, in the order of their names.",
            {
                "maxPerSweep": integer(
                    "At most this many new fail-safe backups per sweep of the vCenter.",
                    minimum=1,
                    maximum=5000,
                    default=50,
                ),
                "maxInFlight": integer(
                    "No new fail-safe backup while this many of the policy's are in progress.",
                    minimum=1,
                    maximum=5000,
                    default=100,
                ),
            },
            default={"maxPerSweep": 50, "maxInFlight": 100},
        ),
        "dryRun": boolean(
            "Create no VMGuardBackup: status.plan and status.failsafe report what the "
            "scheduled runs and the fail-safe would back up, and when.",
            default=False,
        ),
    },
    required=["vcenterRef", "repositoryRef", "schedule", "retention"],
    rules=[
        rule(
            "!self.default || !has(self.selector)",
            "a default policy (default: true) protects every VM no other policy selects: "
            "it must not have a selector",
            field_path=".selector",
        ),
        rule(
            "self.default || has(self.selector)",
            "a policy needs a selector unless it is the default policy (default: true)",
        ),
        rule(
            "!has(self.copies) || self.copies.all(c, "
            "c.repositoryRef.name != self.repositoryRef.name)",
            "a copy target must be another repository than repositoryRef",
            field_path=".copies",
        ),
        rule(
            "!has(self.copies) || self.copies.all(c, "
            "self.copies.exists_one(d, d.repositoryRef.name == c.repositoryRef.name))",
            "each copy target may be named once",
            field_path=".copies",
        ),
    ],
)

status = obj(
    "What the policy controller last computed.",
    {
        "observedGeneration": f.observed_generation(),
        "conditions": f.conditions(),
        "matchedVMs": integer("VMs whose effective policy this is.", minimum=0),
        "lastScheduleTime": timestamp("The last scheduled run the controller started."),
        "nextScheduleTime": timestamp("The next scheduled run."),
        "lastRun": obj(
            "Outcome of the backups of the last scheduled run.",
            {
                "time": timestamp("When the run started."),
                "backups": integer("VMGuardBackups the run created.", minimum=0),
                "completed": integer(minimum=0),
                "failed": integer(minimum=0),
                "running": integer(minimum=0),
            },
        ),
        "lastSuccessfulTime": timestamp("When a backup under this policy last completed."),
        "failsafe": obj(
            "What the fail-safe did at the vCenter's last sweep.",
            {
                "created": integer("Fail-safe VMGuardBackups the sweep created.", minimum=0),
                "waiting": integer(
                    "VMs never backed up that wait for a later sweep (spec.failsafe limits).",
                    minimum=0,
                ),
                "planned": integer(
                    "Dry run: fail-safe backups the sweep would have created.", minimum=0
                ),
                "plannedVMs": array(
                    "Dry run: the first of those VMs, by name.",
                    string(max_length=256),
                    max_items=10,
                ),
            },
        ),
        "plan": obj(
            "Dry run: what the next scheduled run would back up.",
            {
                "nextRunTime": timestamp("The next scheduled run."),
                "vms": integer("VMGuardBackups it would create, one per VM.", minimum=0),
            },
        ),
        "vmsOutsideRPO": integer(
            "VMs whose last completed backup is older than the RPO.", minimum=0
        ),
        "retention": obj(
            "What retention last did (it runs after each completed backup).",
            {
                "lastPruneTime": timestamp("When retention last pruned a backup."),
                "lastPruned": integer(
                    "VMGuardBackups (with their archives) that pass removed.", minimum=0
                ),
                "blocked": integer(
                    "VMGuardBackups retention would prune but Object Lock still protects.",
                    minimum=0,
                ),
            },
        ),
    },
)

KIND = Kind(
    names=POLICY,
    description="Which VMs of a vCenter to back up, when, to which repository, for how long.",
    spec=spec,
    status=status,
    columns=[
        column("Default", ".spec.default", "The vCenter's fail-safe policy.", type_="boolean"),
        column("Priority", ".spec.priority", "Wins over lower priorities.", type_="integer"),
        column("Schedule", ".spec.schedule.cron", "Cron schedule."),
        column("Matched", ".status.matchedVMs", "VMs protected by it.", type_="integer"),
        ready_column(),
        column("Paused", ".spec.paused", "No new backups.", type_="boolean"),
        column("Dry-Run", ".spec.dryRun", "Plans only.", type_="boolean", priority=1),
        column(
            "Waiting", ".status.failsafe.waiting", "VMs the fail-safe takes later.", type_="integer"
        ),
        column("Last-Run", ".status.lastScheduleTime", "Last scheduled run.", type_="date"),
        # kubectl prints a future time of type date as <invalid>; a string shows it as is.
        column("Next-Run", ".status.nextScheduleTime", "Next scheduled run (UTC).", priority=1),
        column("Repository", ".spec.repositoryRef.name", "Target repository.", priority=1),
    ],
    root_rules=[name_is_label("VMProtectionPolicy", "it becomes a label value on VMGuardBackups")],
)
