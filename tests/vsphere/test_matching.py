"""Policy matching: every VM gets exactly one effective policy, or is reported unprotected."""

from __future__ import annotations

import pytest

from vmguard.vsphere.matching import (
    Criteria,
    PolicyRef,
    Selector,
    assign,
    folder_matches,
)
from vmguard.vsphere.records import VMRecord

pytestmark = pytest.mark.unit


def vm(name: str, **kw: object) -> VMRecord:
    defaults: dict[str, object] = {
        "moref": f"vm-{abs(hash(name)) % 10000}",
        "instance_uuid": f"uuid-{name}",
        "folder_path": "/DC0/vm",
        "datacenter": "DC0",
        "cluster": "C0",
        "power_state": "poweredOn",
    }
    defaults.update(kw)
    return VMRecord(name=name, **defaults)  # type: ignore[arg-type]


def policy(name: str, spec: dict[str, object] | None = None, **kw: object) -> PolicyRef:
    return PolicyRef(
        name=name, vcenter=str(kw.pop("vcenter", "vc1")), selector=Selector.from_spec(spec), **kw
    )  # type: ignore[arg-type]


def effective(vms: list[VMRecord], policies: list[PolicyRef]) -> dict[str, str | None]:
    return {a.vm.name: a.policy for a in assign(vms, policies, "vc1").assignments}


def test_empty_selector_matches_nothing() -> None:
    assert not Selector.from_spec({}).matches(vm("a"))
    assert Criteria.from_spec(None).is_empty()


@pytest.mark.parametrize(
    ("pattern", "name", "hit"),
    [
        ("db-*", "db-01", True),
        ("db-*", "web-01", False),
        ("DB-*", "db-01", False),  # case-sensitive, like vSphere names
        ("db-0?", "db-01", True),
        ("db-[0-4]*", "db-51", False),
        ("*", "ünïcødé/vm with spaces", True),
        ("ünïcødé*", "ünïcødé/vm", True),
        ("a/b", "a/b", True),  # a slash in a VM name is just a character
        ("a*", "b" * 255, False),
    ],
)
def test_name_globs(pattern: str, name: str, hit: bool) -> None:
    assert Selector.from_spec({"names": [pattern]}).matches(vm(name)) is hit


@pytest.mark.parametrize(
    ("path", "pattern", "hit"),
    [
        ("/DC0/vm/prod", "/DC0/vm/prod", True),
        ("/DC0/vm/prod/db", "/DC0/vm/prod", True),  # plain path covers subfolders
        ("/DC0/vm/production", "/DC0/vm/prod", False),  # but not a sibling prefix
        ("/DC0/vm/prod/db", "/DC0/vm/*", False),  # * stays within one level
        ("/DC0/vm/prod/db", "/DC0/vm/**", True),
        ("/DC0/vm/prod/db/x", "/*/vm/prod/**", True),
        ("/DC0/vm/prod", "/DC0/vm/prod/", True),
        ("/DC0/vm/p[r]od", "/DC0/vm/p[!x]od", False),
    ],
)
def test_folder_patterns(path: str, pattern: str, hit: bool) -> None:
    assert folder_matches(path, pattern) is hit


def test_criteria_are_anded_alternatives_ored() -> None:
    sel = Selector.from_spec({"names": ["db-*", "web-*"], "clusters": ["C1"]})
    assert sel.matches(vm("db-1", cluster="C1"))
    assert sel.matches(vm("web-1", cluster="C1"))
    assert not sel.matches(vm("db-1", cluster="C0"))
    assert not sel.matches(vm("app-1", cluster="C1"))


def test_tags_and_attributes_are_all_required_power_states_any() -> None:
    gold = vm("a", tags=("backup-tier:gold", "env:prod"))
    assert Selector.from_spec({"tags": [{"category": "backup-tier", "name": "gold"}]}).matches(gold)
    assert Selector.from_spec({"tags": [{"name": "gold"}]}).matches(gold)
    assert not Selector.from_spec({"tags": [{"category": "env", "name": "gold"}]}).matches(gold)
    both = {"tags": [{"name": "gold"}, {"category": "env", "name": "prod"}]}
    assert Selector.from_spec(both).matches(gold)
    assert not Selector.from_spec(both).matches(vm("b", tags=("backup-tier:gold",)))
    owned = vm("b", custom_attributes={"owner": "team-db", "backup": "yes"})
    attrs = [{"name": "owner", "value": "team-db"}, {"name": "backup", "value": "yes"}]
    assert Selector.from_spec({"customAttributes": attrs}).matches(owned)
    attrs[1]["value"] = "no"
    assert not Selector.from_spec({"customAttributes": attrs}).matches(owned)
    missing = [{"name": "missing", "value": ""}]
    assert not Selector.from_spec({"customAttributes": missing}).matches(owned)
    off = vm("c", power_state="poweredOff")
    on_or_off = {"names": ["*"], "powerStates": ["poweredOn", "poweredOff"]}
    assert Selector.from_spec(on_or_off).matches(off)
    assert not Selector.from_spec({"names": ["*"], "powerStates": ["poweredOn"]}).matches(off)


def test_clusters_by_name_or_path_datacenters_exact() -> None:
    v = vm("a", cluster="C1", cluster_path="/DC0/host/C1", datacenter="DC0")
    assert Selector.from_spec({"clusters": ["C1"]}).matches(v)
    assert Selector.from_spec({"clusters": ["/DC0/host/C1"]}).matches(v)
    assert not Selector.from_spec({"clusters": ["C"]}).matches(v)
    assert Selector.from_spec({"datacenters": ["DC0", "DC9"]}).matches(v)
    assert not Selector.from_spec({"datacenters": ["DC"]}).matches(v)


def test_exclusions_win_and_any_exclusion_excludes() -> None:
    sel = Selector.from_spec(
        {
            "names": ["*"],
            "folders": ["/DC0"],
            "exclude": {"names": ["*-scratch"], "tags": [{"name": "no-backup"}, {"name": "tmp"}]},
        }
    )
    assert sel.matches(vm("db", folder_path="/DC0/vm"))
    assert not sel.matches(vm("db-scratch", folder_path="/DC0/vm"))
    assert not sel.matches(vm("db", folder_path="/DC0/vm", tags=("policy:no-backup",)))
    assert not sel.matches(vm("db", folder_path="/DC0/vm", tags=("lifecycle:tmp",)))


def test_templates_are_never_selected() -> None:
    tmpl = vm("golden", template=True)
    assert not Selector.from_spec({"names": ["*"], "folders": ["/"]}).matches(tmpl)
    result = assign([tmpl], [policy("default", default=True)], "vc1")
    assert result.assignments[0].reason == "Template"
    assert result.unprotected == []


def test_priority_then_name_and_ties_are_reported() -> None:
    vms = [vm("db-1", tags=("backup-tier:gold",))]
    gold = {"tags": [{"name": "gold"}]}
    policies = [
        policy("b-gold", gold, priority=10),
        policy("a-gold", gold, priority=10),
        policy("all-db", {"names": ["db-*"]}, priority=5),
        policy("default", default=True),
    ]
    a = assign(vms, policies, "vc1").assignments[0]
    assert (a.policy, a.reason, a.conflicts) == ("a-gold", "Matched", ("b-gold",))
    # A higher priority beats a name that sorts first, without a conflict.
    policies.append(policy("z-urgent", {"names": ["db-1"]}, priority=100))
    a = assign(vms, policies, "vc1").assignments[0]
    assert (a.policy, a.conflicts) == ("z-urgent", ())


def test_fail_safe_default_and_unprotected() -> None:
    vms = [vm("db-1"), vm("new-vm-nobody-told-us-about")]
    policies = [policy("db", {"names": ["db-*"]})]
    assert effective(vms, policies) == {"db-1": "db", "new-vm-nobody-told-us-about": None}
    result = assign(vms, policies, "vc1")
    assert [v.name for v in result.unprotected] == ["new-vm-nobody-told-us-about"]
    policies.append(policy("fail-safe", default=True))
    assert effective(vms, policies) == {"db-1": "db", "new-vm-nobody-told-us-about": "fail-safe"}
    assert assign(vms, policies, "vc1").unprotected == []


def test_exactly_one_policy_per_vm_over_many() -> None:
    vms = [vm(f"vm-{i}", tags=(f"t:{i % 3}",), cluster=f"C{i % 2}") for i in range(300)]
    policies = [
        policy("t0", {"tags": [{"category": "t", "name": "0"}]}, priority=1),
        policy("c1", {"clusters": ["C1"]}, priority=2),
        policy("default", default=True),
    ]
    result = assign(vms, policies, "vc1")
    assert len(result.assignments) == 300
    assert {a.vm.name for a in result.assignments} == {v.name for v in vms}
    for a in result.assignments:
        i = int(a.vm.name.split("-")[1])
        expected = "c1" if i % 2 == 1 else "t0" if i % 3 == 0 else "default"
        assert a.policy == expected


def test_policies_of_other_vcenters_and_several_defaults() -> None:
    vms = [vm("a")]
    policies = [
        policy("elsewhere", {"names": ["*"]}, vcenter="vc2", priority=99),
        policy("d2", default=True),
        policy("d1", default=True),
    ]
    result = assign(vms, policies, "vc1")
    assert result.assignments[0].policy == "d1"
    assert result.problems == ["several default policies (d1, d2); d1 applies"]
    assert result.by_policy() == {"d1": [vms[0]]}


def test_policy_from_object() -> None:
    ref = PolicyRef.from_object(
        {
            "metadata": {"name": "gold"},
            "spec": {
                "vcenterRef": {"name": "vc1"},
                "priority": 7,
                "paused": True,
                "selector": {"tags": [{"name": "gold"}], "exclude": {"names": ["tmp-*"]}},
            },
        }
    )
    assert (ref.name, ref.vcenter, ref.priority, ref.paused, ref.default) == (
        "gold",
        "vc1",
        7,
        True,
        False,
    )
    assert ref.selector.matches(vm("db", tags=("tier:gold",)))
    assert not ref.selector.matches(vm("tmp-1", tags=("tier:gold",)))
