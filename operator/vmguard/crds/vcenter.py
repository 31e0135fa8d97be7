"""``VCenter``: one vCenter Server the operator inventories, snapshots and restores into.

The spec says how to reach it and how to trust it; the status says whether it is
reachable, what it runs, and what the last discovery sweep found. Trust is explicit:
with no ``tls`` block the system's CA roots are used, and certificate checks are only
ever skipped when ``insecureSkipVerify: true`` is written down, alone.
"""

from __future__ import annotations

from vmguard.api.kinds import VCENTER
from vmguard.crds import fields as f
from vmguard.crds.definition import Kind, column, name_is_label, ready_column
from vmguard.crds.schema import (
    array,
    boolean,
    cel_string,
    integer,
    obj,
    rule,
    string,
    timestamp,
)

# Colon-separated hex of a SHA-256 (32 bytes) or SHA-1 (20 bytes) certificate digest,
# as vSphere and `openssl x509 -fingerprint` print them.
THUMBPRINT = r"^([0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}$|^([0-9A-Fa-f]{2}:){19}[0-9A-Fa-f]{2}$"

tls = obj(
    "How to trust vCenter's certificate. Leave it out to use the system CA roots; "
    "set at most one of its fields.",
    {
        "caBundle": f.pem_bundle("CA certificates that sign vCenter's certificate."),
        "caSecretRef": f.secret_ref(
            "A Secret holding the CA bundle (e.g. one written by cert-manager or trust-manager).",
            {"key": ("ca.crt", "the PEM CA bundle")},
        ),
        "thumbprint": string(
            "Pin vCenter's certificate by its fingerprint instead of trusting a CA: SHA-256, "
            "or SHA-1 as older vSphere clients show it, as colon-separated hex.",
            max_length=95,
            rules=[
                rule(
                    f"self.matches({cel_string(THUMBPRINT)})",
                    "thumbprint must be the certificate's SHA-256 (32 bytes) or SHA-1 "
                    "(20 bytes) fingerprint as colon-separated hex, e.g. AB:CD:EF:…",
                )
            ],
        ),
        "insecureSkipVerify": boolean(
            "Accept any certificate. For labs only: it hands the vCenter password to "
            "whoever answers on the address."
        ),
    },
    rules=[
        # insecureSkipVerify: false next to a CA is harmless, so only true counts.
        rule(
            "(has(self.caBundle) ? 1 : 0) + (has(self.caSecretRef) ? 1 : 0)"
            " + (has(self.thumbprint) ? 1 : 0)"
            " + (has(self.insecureSkipVerify) && self.insecureSkipVerify ? 1 : 0) <= 1",
            "tls: set at most one of caBundle, caSecretRef, thumbprint, insecureSkipVerify",
        )
    ],
)

spec = obj(
    "Where vCenter is, which credentials to use and how to trust it.",
    {
        "host": f.host("Host name or IP address of vCenter Server (no scheme, no path)."),
        "port": integer("HTTPS port of the vSphere API.", minimum=1, maximum=65535, default=443),
        "credentialsSecretRef": f.secret_ref(
            "Secret with the vCenter user's name and password.",
            {
                "usernameKey": ("username", "the user name, e.g. backup@vsphere.local"),
                "passwordKey": ("password", "the password"),
            },
        ),
        "tls": tls,
        "sweepInterval": f.duration(
            "How often the operator re-reads the inventory and re-matches VMs to policies.",
            minimum="30s",
            maximum="24h",
            default="5m",
        ),
        "limits": obj(
            "How much of this vCenter vmguard's proxy work may use at once, in disks "
            "(docs/admission.md). The NFC limits bind work that may read over NBD only.",
            {
                "nfcDisks": integer(
                    "Disks open over NBD through this vCenter at once (vCenter allows 52 "
                    "NFC connections, one per disk).",
                    minimum=1,
                    maximum=10000,
                    default=52,
                ),
                "nfcDisksPerHost": integer(
                    "Disks open over NBD on one ESXi host at once (48 MB of NFC buffers "
                    "by default: 48 streams of 1 MB).",
                    minimum=1,
                    maximum=10000,
                    default=48,
                ),
                "disksPerDatastore": integer(
                    "Disks being backed up on one datastore at once, any transport.",
                    minimum=1,
                    maximum=10000,
                    default=8,
                ),
            },
        ),
        "datacenters": array(
            "Limit discovery to these datacenters (by name); default: every datacenter "
            "the user can see.",
            f.inventory_name("Datacenter name."),
            min_items=1,
            max_items=64,
            list_type="set",
        ),
        "allowedNamespaces": f.allowed_namespaces("VCenter"),
    },
    required=["host", "credentialsSecretRef"],
)

vm_counts = obj(
    "VM counts from the last sweep. Templates are not VMs here.",
    {
        "discovered": integer("VMs found.", minimum=0),
        "protected": integer("VMs with an effective policy.", minimum=0),
        "protectedByDefault": integer("Of those, VMs only the default policy catches.", minimum=0),
        "unprotected": integer(
            "VMs no policy selects and no default policy catches (listed in the "
            "Protected condition and in events).",
            minimum=0,
        ),
        "excluded": integer("VMs a policy's exclude removed from its selection.", minimum=0),
        "consolidationNeeded": integer(
            "VMs (templates included) for which vSphere reports consolidationNeeded (named in "
            "the Consolidated condition).",
            minimum=0,
        ),
    },
)

# The per-VM list (controller/vcenter/vmlist.py writes it; its docstring explains the bounds).
# Short keys because a vCenter may hold thousands of VMs and etcd caps an object at
# 1.5 MiB; an atomic list so managedFields tracks it as one field, not one per VM.
VM_LIST_MAX_ITEMS = 10_000
VM_LIST_MAX_NAME, VM_LIST_MAX_FOLDER, VM_LIST_MAX_POLICY, VM_LIST_MAX_ID = 255, 1024, 253, 64

vm_entry = obj(
    "One VM and its effective policy. Short keys keep the list small.",
    {
        "n": string(
            "Name as vSphere shows it ('/', '%' and '\\' escaped as %2f, %25, %5c).",
            max_length=VM_LIST_MAX_NAME,
        ),
        "u": string("Instance UUID (config.instanceUuid), lower case.", max_length=VM_LIST_MAX_ID),
        "m": string("Managed object id, e.g. vm-1042.", max_length=VM_LIST_MAX_ID),
        "s": string("Power state: on, off or suspended.", max_length=16),
        "f": string(
            "Inventory folder path, e.g. /DC0/vm/Production.", max_length=VM_LIST_MAX_FOLDER
        ),
        "p": string(
            "Effective policy (a VMProtectionPolicy in this namespace); absent: the VM is "
            "unprotected.",
            max_length=VM_LIST_MAX_POLICY,
        ),
        "d": boolean("True when p is the default (fail-safe) policy: no other policy selects it."),
    },
    required=["n", "u", "m"],
)

vm_list = obj(
    "Every VM of the last successful sweep with its effective policy, unprotected VMs "
    "first, then those only the default policy catches, then the rest (each by name). "
    "Capped at 10000 entries and about 1 MB; truncated says when VMs were left out. "
    "Rewritten only when it changes.",
    {
        "total": integer("VMs the sweep found (templates excluded).", minimum=0),
        "listed": integer("VMs in items.", minimum=0),
        "truncated": boolean("True when items does not hold every VM (total > listed)."),
        "items": array("The VMs.", vm_entry, max_items=VM_LIST_MAX_ITEMS, list_type="atomic"),
    },
)

status = obj(
    "What the operator last observed of this vCenter.",
    {
        "observedGeneration": f.observed_generation(),
        "conditions": f.conditions(),
        "reachable": boolean("Whether the last login and inventory read succeeded."),
        "version": string("vCenter version, e.g. 8.0.3.", max_length=32),
        "build": string("vCenter build number.", max_length=32),
        "instanceUuid": string(
            "vCenter's own instance UUID (about.instanceUuid): tells two vCenters apart "
            "even behind the same name.",
            max_length=36,
        ),
        "certificateThumbprint": string(
            "SHA-256 fingerprint of the certificate vCenter presented (for pinning).",
            max_length=95,
        ),
        "vms": vm_counts,
        "vmList": vm_list,
        "lastSweepTime": timestamp("When the last discovery sweep finished."),
        "lastSweepDurationSeconds": integer("How long it took.", minimum=0),
        "nextSweepTime": timestamp("When the next sweep is due."),
    },
)

KIND = Kind(
    names=VCENTER,
    description="A vCenter Server whose VMs vmguard discovers, backs up and restores.",
    spec=spec,
    status=status,
    columns=[
        column("Host", ".spec.host", "vCenter host."),
        ready_column(),
        column("Version", ".status.version", "vCenter version."),
        column("VMs", ".status.vms.discovered", "VMs discovered.", type_="integer"),
        column(
            "Unprotected",
            ".status.vms.unprotected",
            "VMs no policy protects.",
            type_="integer",
        ),
        column("Last-Sweep", ".status.lastSweepTime", "Last discovery sweep.", type_="date"),
    ],
    root_rules=[name_is_label("VCenter", "it becomes a label value on VMGuardBackups")],
)
