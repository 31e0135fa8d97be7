"""No kind of ours is known to kubectl by a name that Velero or KubeVirt also install.

``kubectl get NAME`` resolves NAME against the plurals, singulars and short names of
every API group in the cluster; where two groups share one, the user gets the other
product's objects (``kubectl get backuprepositories`` with Velero installed listed
Velero's). The lists below are the neighbours' CRD names (plural, singular, short
names) as their CRDs declare them: Velero 1.x (velero.io) and KubeVirt with CDI
(kubevirt.io, snapshot/export/clone/pool/instancetype/backup groups, cdi.kubevirt.io).
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


def names(kind: KindNames) -> set[str]:
    return {kind.plural, kind.singular, *kind.short_names}


def test_no_kind_is_known_by_a_name_velero_or_kubevirt_installs() -> None:
    taken = {n: "Velero" for n in VELERO} | {n: "KubeVirt" for n in KUBEVIRT}
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
