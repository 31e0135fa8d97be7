"""No kind of ours is known to kubectl by a name that a product users run beside us installs.

``kubectl get NAME`` resolves NAME against the plurals, singulars and short names of
every API group in the cluster; where two groups share one, the user gets the other
product's objects (``kubectl get backuprepositories`` with Velero installed listed
Velero's). The lists below are the neighbours' CRD names (plural, singular, short
names) as their CRDs declare them: Velero 1.x (velero.io), KubeVirt with CDI
(kubevirt.io, snapshot/export/clone/pool/instancetype/backup groups, cdi.kubevirt.io),
Kasten K10 (config.kio.kasten.io, actions.kio.kasten.io, apps.kio.kasten.io,
dist.kio.kasten.io, reporting.kio.kasten.io, repositories.kio.kasten.io, and Kanister's
cr.kanister.io, which K10 installs) and cert-manager (cert-manager.io, acme.cert-manager.io).
Add a product here when users run it beside us.
"""

from __future__ import annotations

from vmguard.api.kinds import KINDS, LEGACY, KindNames
from vmguard.crds import KINDS as CRD_KINDS

VELERO = {
    "backups", "backup",
    "backuprepositories", "backuprepository",
    "backupstoragelocations", "backupstoragelocation", "bsl",
    "deletebackuprequests", "deletebackuprequest",
    "downloadrequests", "downloadrequest",
    "podvolumebackups", "podvolumebackup",
    "podvolumerestores", "podvolumerestore",
    "restores", "restore",
    "schedules", "schedule",
    "serverstatusrequests", "serverstatusrequest", "ssr",
    "volumesnapshotlocations", "volumesnapshotlocation", "vsl",
    "datauploads", "dataupload",
    "datadownloads", "datadownload",
}  # fmt: skip

KUBEVIRT = {
    "virtualmachines", "virtualmachine", "vm", "vms",
    "virtualmachineinstances", "virtualmachineinstance", "vmi", "vmis",
    "virtualmachineinstancemigrations", "virtualmachineinstancemigration", "vmim", "vmims",
    "virtualmachineinstancepresets", "virtualmachineinstancepreset", "vmipreset", "vmipresets",
    "virtualmachineinstancereplicasets", "virtualmachineinstancereplicaset", "vmirs", "vmirss",
    "virtualmachinepools", "virtualmachinepool", "vmpool", "vmpools",
    "virtualmachinesnapshots", "virtualmachinesnapshot", "vmsnapshot", "vmsnapshots",
    "virtualmachinesnapshotcontents", "virtualmachinesnapshotcontent",
    "vmsnapshotcontent", "vmsnapshotcontents",
    "virtualmachinerestores", "virtualmachinerestore", "vmrestore", "vmrestores",
    "virtualmachineexports", "virtualmachineexport", "vmexport", "vmexports",
    "virtualmachineclones", "virtualmachineclone", "vmclone", "vmclones",
    "virtualmachineinstancetypes", "virtualmachineinstancetype",
    "vminstancetype", "vminstancetypes", "vmf", "vmfs",
    "virtualmachineclusterinstancetypes", "virtualmachineclusterinstancetype",
    "vmclusterinstancetype", "vmclusterinstancetypes", "vmcf", "vmcfs",
    "virtualmachinepreferences", "virtualmachinepreference", "vmpref", "vmprefs", "vmp", "vmps",
    "virtualmachineclusterpreferences", "virtualmachineclusterpreference",
    "vmclusterpref", "vmclusterprefs", "vmcp", "vmcps",
    "virtualmachinebackups", "virtualmachinebackup", "vmbackup", "vmbackups",
    "virtualmachinebackuptrackers", "virtualmachinebackuptracker",
    "migrationpolicies", "migrationpolicy",
    "kubevirts", "kubevirt", "kv", "kvs",
    "datavolumes", "datavolume", "dv", "dvs",
    "datasources", "datasource", "das",
    "dataimportcrons", "dataimportcron", "dic", "dics",
    "objecttransfers", "objecttransfer", "ot", "ots",
    "storageprofiles", "storageprofile",
    "cdis", "cdi", "cdiconfigs", "cdiconfig",
}  # fmt: skip

KASTEN = {
    "profiles", "profile",
    "policies", "policy",
    "policypresets", "policypreset",
    "transformsets", "transformset",
    "blueprintbindings", "blueprintbinding",
    "storagesecuritycontexts", "storagesecuritycontext",
    "storagesecuritycontextbindings", "storagesecuritycontextbinding",
    "auditconfigs", "auditconfig",
    "restorepoints", "restorepoint",
    "restorepointcontents", "restorepointcontent",
    "clusterrestorepoints", "clusterrestorepoint",
    "applications", "application",
    "backupactions", "backupaction",
    "backupclusteractions", "backupclusteraction",
    "restoreactions", "restoreaction",
    "restoreclusteractions", "restoreclusteraction",
    "exportactions", "exportaction",
    "importactions", "importaction",
    "retireactions", "retireaction",
    "runactions", "runaction",
    "cancelactions", "cancelaction",
    "reportactions", "reportaction",
    "upgradeactions", "upgradeaction",
    "validateactions", "validateaction",
    "batchrestoreactions", "batchrestoreaction",
    "storagerepositories", "storagerepository",
    "reports", "report",
    "actionsets", "actionset",
    "blueprints", "blueprint",
    "repositoryservers", "repositoryserver",
}  # fmt: skip

CERT_MANAGER = {
    "certificates", "certificate", "cert", "certs",
    "certificaterequests", "certificaterequest", "cr", "crs",
    "issuers", "issuer",
    "clusterissuers", "clusterissuer",
    "orders", "order",
    "challenges", "challenge",
}  # fmt: skip

NEIGHBOURS = {
    "Velero": VELERO,
    "KubeVirt": KUBEVIRT,
    "Kasten K10": KASTEN,
    "cert-manager": CERT_MANAGER,
}


def names(kind: KindNames) -> set[str]:
    return {kind.plural, kind.singular, *kind.short_names}


def test_no_kind_is_known_by_a_name_a_neighbour_installs() -> None:
    taken = {n: product for product, listed in NEIGHBOURS.items() for n in listed}
    clashes = {f"{k.kind}: {n} ({taken[n]})" for k in KINDS for n in sorted(names(k)) if n in taken}
    assert not clashes, sorted(clashes)


def test_the_crds_are_rendered_with_those_names() -> None:
    rendered = {
        crd["spec"]["names"]["kind"]: crd["spec"]["names"] for crd in (k.crd() for k in CRD_KINDS)
    }
    assert set(rendered) == {k.kind for k in KINDS}
    for k in KINDS:
        got = rendered[k.kind]
        assert (got["plural"], got["singular"], tuple(got["shortNames"])) == (
            k.plural,
            k.singular,
            k.short_names,
        )


def test_each_renamed_kind_did_collide_so_the_list_can_catch_one() -> None:
    # The reason for the renames, kept as a check on the lists above.
    taken = VELERO | KUBEVIRT
    assert {k.kind: bool(names(old) & taken) for k, old in LEGACY.items()} == {
        k.kind: True for k in LEGACY
    }
