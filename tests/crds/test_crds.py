"""The CRDs: generated manifests match their source, and the real apiserver enforces them.

The unit test compares ``crds/*.yaml`` with a fresh rendering of ``vmguard.crds``. The
lab tests install the CRDs into the lab's kube-apiserver with ``kubectl apply
--server-side`` and check what a user sees: the examples in ``examples/`` are accepted
(with defaults filled in), malformed objects are refused with HTTP 422 and a message
naming the field and the rule, specs that must not change cannot, and ``kubectl get
vmguard`` lists every kind with its printer columns.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from vmguard.api import GROUP, VERSION
from vmguard.crds import KINDS
from vmguard.crds.render import chart_rendered, rendered

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
EXAMPLES = REPO / "examples"
PLURAL = {kind.kind: kind.plural for kind in KINDS}

Mutation = Callable[[dict[str, Any]], None]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("directory", "render"),
    [(CRD_DIR, rendered), (REPO / "charts" / "vmguard" / "templates" / "crds", chart_rendered)],
    ids=["crds", "chart-templates"],
)
def test_checked_in_manifests_match_the_source(
    directory: Path, render: Callable[[], dict[str, str]]
) -> None:
    assert not directory.is_symlink(), "Flux drops symlinks from Git sources"
    expected = render()
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in directory.glob("*.yaml")}
    assert sorted(on_disk) == sorted(expected), f"{directory} holds other files"
    stale = [name for name, text in expected.items() if on_disk[name] != text]
    assert not stale, f"regenerate with `python -m vmguard.crds {directory}`: {stale} differ"


@pytest.mark.unit
def test_every_kind_has_names_category_and_status() -> None:
    short = {k.kind: list(k.names.short_names) for k in KINDS}
    assert short == {
        "VCenter": ["vc"],
        "VMGuardRepository": ["vgrepo"],
        "VMProtectionPolicy": ["vmpp"],
        "VMGuardBackup": ["vgb"],
        "VMGuardRestore": ["vgr"],
        "ProtectedVM": ["pvm"],
    }
    for kind in KINDS:
        crd = kind.crd()
        assert crd["spec"]["names"]["categories"] == ["vmguard"]
        version = crd["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["properties"]["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


# ---- lab: the real apiserver ---------------------------------------------------------


def _run_kubectl(
    kubectl: Path, lab: Any, cache: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(kubectl), f"--kubeconfig={lab.paths.kubeconfig}", f"--cache-dir={cache}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def run_kubectl(
    kubectl: Path, lab: Any, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., subprocess.CompletedProcess[str]]:
    cache = tmp_path_factory.mktemp("kubectl-cache")
    return lambda *args: _run_kubectl(kubectl, lab, cache, *args)


def _namespace(kube_api: Any) -> Iterator[str]:
    core = client.CoreV1Api(kube_api)
    name = f"crds-{secrets.token_hex(4)}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="module")
def namespace(kube_api: Any, vmguard_crds: None) -> Iterator[str]:
    """One namespace for the tests that only create objects."""
    yield from _namespace(kube_api)


@pytest.fixture
def own_namespace(kube_api: Any, vmguard_crds: None) -> Iterator[str]:
    """A namespace of the test's own, for tests that list what is in it."""
    yield from _namespace(kube_api)


@pytest.fixture(scope="module")
def custom(kube_api: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api)


def example(file: str, name: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((EXAMPLES / file).read_text(encoding="utf-8"))
    body["metadata"] = {"name": name or f"{body['metadata']['name']}-{secrets.token_hex(3)}"}
    return body


def create(custom: client.CustomObjectsApi, ns: str, body: dict[str, Any]) -> dict[str, Any]:
    plural = PLURAL[body["kind"]]
    created: dict[str, Any] = custom.create_namespaced_custom_object(
        GROUP, VERSION, ns, plural, body
    )
    return created


def refused(call: Callable[[], Any]) -> str:
    """Run an apiserver call that must be refused as invalid; return the message."""
    with pytest.raises(client.ApiException) as err:
        call()
    assert err.value.status == 422, err.value.body
    message: str = json.loads(err.value.body)["message"]
    return message


@pytest.mark.lab
@pytest.mark.parametrize(
    "file",
    [
        "vcenter.yaml",
        "vmguardrepository.yaml",
        "policy-default.yaml",
        "policy-gold.yaml",
        "vmbackup.yaml",
        "vmrestore.yaml",
        "vmrestore-files.yaml",
        "vmrestore-point.yaml",
    ],
)
def test_examples_are_accepted(custom: client.CustomObjectsApi, namespace: str, file: str) -> None:
    body = example(file)
    created = create(custom, namespace, body)
    # Nothing the user wrote was pruned or changed by the schema.
    assert _contains(created["spec"], body["spec"]), (created["spec"], body["spec"])


def _secret_refs(spec: Any) -> Iterator[dict[str, Any]]:
    if isinstance(spec, dict):
        for key, value in spec.items():
            if key.endswith("SecretRef"):
                yield value
            else:
                yield from _secret_refs(value)
    elif isinstance(spec, list):
        for item in spec:
            yield from _secret_refs(item)


def test_example_secrets_hold_every_key_the_examples_read(
    custom: client.CustomObjectsApi, kube_api: Any, namespace: str
) -> None:
    docs = list(yaml.safe_load_all((EXAMPLES / "secrets.yaml").read_text(encoding="utf-8")))
    core = client.CoreV1Api(kube_api)
    for doc in docs:  # valid Secrets, as the apiserver sees them
        core.create_namespaced_secret(namespace, doc, dry_run="All")
    held = {d["metadata"]["name"]: set(d["stringData"]) for d in docs}
    wanted: dict[str, set[str]] = {}
    for file in ("vcenter.yaml", "vmguardrepository.yaml"):
        created = create(custom, namespace, example(file))  # with the keys' defaults
        for ref in _secret_refs(created["spec"]):
            keys = {v for k, v in ref.items() if k != "name"}
            wanted.setdefault(ref["name"], set()).update(keys)
    assert wanted and all(wanted[name] <= held.get(name, set()) for name in wanted), (
        wanted,
        held,
    )


def _contains(big: Any, small: Any) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(
            k in big and _contains(big[k], v) for k, v in small.items()
        )
    if isinstance(small, list):
        return (
            isinstance(big, list)
            and len(big) == len(small)
            and all(_contains(b, s) for b, s in zip(big, small, strict=True))
        )
    return bool(big == small)


@pytest.mark.lab
def test_defaults_are_filled_in(custom: client.CustomObjectsApi, namespace: str) -> None:
    vc = create(custom, namespace, example("vcenter.yaml"))["spec"]
    assert vc["port"] == 443
    assert vc["credentialsSecretRef"] == {
        "name": "vcenter-backup-user",
        "usernameKey": "username",
        "passwordKey": "password",
    }
    assert vc["tls"]["caSecretRef"]["key"] == "ca.crt"
    repo_body = example("vmguardrepository.yaml")
    del repo_body["spec"]["chunkSize"]
    repo = create(custom, namespace, repo_body)["spec"]
    assert repo["chunkSize"] == 4 << 20
    assert repo["gc"] == {"schedule": "@daily", "timeZone": "UTC", "gracePeriod": "24h"}
    policy = create(custom, namespace, example("policy-default.yaml"))["spec"]
    assert policy["transport"] == "auto"
    assert policy["mode"] == {"type": "auto"}
    assert policy["concurrency"] == {"perDatastore": 2, "perHost": 4, "total": 8}
    assert policy["quiesce"] == {"enabled": False, "fallbackToCrashConsistent": True}
    assert policy["snapshot"] == {"consolidate": True}
    assert (policy["priority"], policy["paused"]) == (0, False)
    backup = create(custom, namespace, example("vmbackup.yaml"))["spec"]
    assert backup["mode"] == "auto"


@pytest.mark.lab
def test_other_valid_shapes_are_accepted(custom: client.CustomObjectsApi, namespace: str) -> None:
    """The one-ofs and optional blocks the examples do not show, each in a valid form."""
    shapes: list[tuple[str, Mutation]] = [
        ("vcenter.yaml", _set("spec.tls", {"thumbprint": ":".join(["ab"] * 20)})),
        ("vcenter.yaml", _set("spec.tls", {"insecureSkipVerify": True})),
        ("vcenter.yaml", _set("spec.tls", {"caBundle": "-----BEGIN CERTIFICATE-----\nMII…"})),
        ("vcenter.yaml", _all(_delete("spec.tls"), _set("spec.host", "2001:db8::10"))),
        ("vmguardrepository.yaml", _all(_delete("spec.encryption"), _delete("spec.s3.prefix"))),
        ("policy-gold.yaml", _set("spec.hooks.preSnapshot.0.command", "C:\\bin\\freeze.cmd")),
        ("policy-gold.yaml", _set("spec.mode", {"type": "full"})),
        ("policy-gold.yaml", _set("spec.snapshot", {"consolidate": False})),
        ("policy-gold.yaml", _set("spec.selector", {"names": ["*"], "powerStates": ["poweredOn"]})),
        ("vmbackup.yaml", _set("spec.vm", {"name": "only a name"})),
        (
            "vmbackup.yaml",
            _all(
                _delete("spec.policyRef"),
                _set("spec.vcenterRef", {"name": "vc-prod"}),
                _set("spec.repositoryRef", {"name": "minio-main"}),
            ),
        ),
        ("vmrestore.yaml", _set("spec.target", {"inPlace": {"confirm": True}})),
        (
            "vmrestore.yaml",
            _set(
                "spec.target",
                {
                    "disks": [
                        {"source": {"key": 2000}, "overwrite": {"confirm": True}},
                        {
                            "source": {"label": "Hard disk 2"},
                            "attachTo": {"vm": {"name": "rescue-vm"}, "datastore": "ds2"},
                        },
                    ]
                },
            ),
        ),
        (
            "vmrestore.yaml",
            _set(
                "spec.target",
                {
                    "files": {
                        "disk": {"label": "Hard disk 1"},
                        "partition": 2,
                        "paths": ["/Users/*/Documents/**", "/etc/nginx"],
                        "to": {"s3": {"bucket": "restores", "prefix": "tickets/4711"}},
                    }
                },
            ),
        ),
    ]
    for file, mutate in shapes:
        body = example(file)
        mutate(body)
        created = create(custom, namespace, body)
        assert _contains(created["spec"], body["spec"]), (file, created["spec"])


def _set(path: str, value: Any) -> Mutation:
    """A mutation setting ``path`` (dotted, list indexes as numbers) to ``value``."""

    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = body
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _delete(path: str) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = body
        for key in parents:
            node = node[key]
        del node[last]

    return mutate


def _all(*mutations: Mutation) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        for m in mutations:
            m(body)

    return mutate


# (case id, example, mutation, strings the apiserver's message must contain)
BAD: list[tuple[str, str, Mutation, list[str]]] = [
    (
        "cron-minute-out-of-range",
        "policy-default.yaml",
        _set("spec.schedule.cron", "61 2 * * *"),
        ["spec.schedule.cron", "'61 2 * * *' is not a valid cron schedule"],
    ),
    (
        "cron-four-fields",
        "policy-default.yaml",
        _set("spec.schedule.cron", "0 2 * *"),
        ["spec.schedule.cron", "not a valid cron schedule"],
    ),
    (
        "cron-every-is-not-cron",
        "policy-gold.yaml",
        _set("spec.schedule.cron", "@every 1h"),
        ["spec.schedule.cron", "not a valid cron schedule"],
    ),
    (
        "repository-verify-cron",
        "vmguardrepository.yaml",
        _set("spec.verify.schedule", "0 25 * * *"),
        ["spec.verify.schedule", "not a valid cron schedule"],
    ),
    (
        "two-tls-modes",
        "vcenter.yaml",
        _set("spec.tls.thumbprint", ":".join(["AB"] * 32)),
        ["spec.tls", "set at most one of caBundle, caSecretRef, thumbprint, insecureSkipVerify"],
    ),
    (
        "insecure-and-ca",
        "vcenter.yaml",
        _set("spec.tls.insecureSkipVerify", True),
        ["spec.tls", "set at most one of"],
    ),
    (
        "thumbprint-wrong-length",
        "vcenter.yaml",
        _set("spec.tls", {"thumbprint": ":".join(["AB"] * 31)}),
        ["spec.tls.thumbprint", "SHA-256 (32 bytes) or SHA-1 (20 bytes)"],
    ),
    (
        "thumbprint-without-colons",
        "vcenter.yaml",
        _set("spec.tls", {"thumbprint": "AB" * 32}),
        ["spec.tls.thumbprint", "colon-separated hex"],
    ),
    (
        "thumbprint-not-hex",
        "vcenter.yaml",
        _set("spec.tls", {"thumbprint": ":".join(["ZZ"] * 20)}),
        ["spec.tls.thumbprint", "colon-separated hex"],
    ),
    (
        "host-is-a-url",
        "vcenter.yaml",
        _set("spec.host", "https://vcenter.example.com/sdk"),
        ["spec.host", "without https:// or a path"],
    ),
    (
        "sweep-interval-in-days",
        "vcenter.yaml",
        _set("spec.sweepInterval", "1d"),
        ["spec.sweepInterval", "should match"],
    ),
    (
        "sweep-interval-too-short",
        "vcenter.yaml",
        _set("spec.sweepInterval", "10s"),
        ["spec.sweepInterval", "must be at least 30s"],
    ),
    (
        "port-zero",
        "vcenter.yaml",
        _set("spec.port", 0),
        ["spec.port", "greater than or equal to 1"],
    ),
    (
        "secret-ref-not-a-dns-name",
        "vcenter.yaml",
        _set("spec.credentialsSecretRef.name", "Backup_User"),
        ["spec.credentialsSecretRef.name", "should match"],
    ),
    (
        "vcenter-name-with-dots",
        "vcenter.yaml",
        _set("metadata.name", "vc.example.com"),
        ["DNS-1123 label", "metadata.name"],
    ),
    (
        "chunk-size-not-power-of-two",
        "vmguardrepository.yaml",
        _set("spec.chunkSize", 3_000_000),
        ["spec.chunkSize", "power of two between 1 MiB (1048576) and 64 MiB"],
    ),
    (
        "chunk-size-too-large",
        "vmguardrepository.yaml",
        _set("spec.chunkSize", 128 << 20),
        ["spec.chunkSize", "power of two between 1 MiB"],
    ),
    (
        "object-lock-negative",
        "vmguardrepository.yaml",
        _set("spec.objectLockDays", -1),
        ["spec.objectLockDays", "greater than or equal to 1"],
    ),
    (
        "endpoint-with-scheme",
        "vmguardrepository.yaml",
        _set("spec.s3.endpoint", "http://minio:9000"),
        ["spec.s3.endpoint", "drop the scheme"],
    ),
    (
        "bucket-name",
        "vmguardrepository.yaml",
        _set("spec.s3.bucket", "My_Bucket"),
        ["spec.s3.bucket", "should match"],
    ),
    (
        "default-policy-with-selector",
        "policy-default.yaml",
        _set("spec.selector", {"names": ["web-*"]}),
        ["spec.selector", "it must not have a selector"],
    ),
    (
        "policy-without-selector",
        "policy-gold.yaml",
        _delete("spec.selector"),
        ["spec", "needs a selector unless it is the default policy"],
    ),
    (
        "selector-matching-everything",
        "policy-gold.yaml",
        _set("spec.selector", {"names": ["*"], "exclude": {"names": ["tmp-*"]}}),
        ["spec.selector.names", "selects every VM"],
    ),
    (
        "selector-only-exclusions",
        "policy-gold.yaml",
        _set("spec.selector", {"exclude": {"names": ["tmp-*"]}}),
        ["spec.selector", "exclude alone would select every VM"],
    ),
    (
        "invalid-glob",
        "policy-gold.yaml",
        _set("spec.selector.names", ["db-[0-9"]),
        ["spec.selector.names[0]", "'db-[0-9' is not a valid glob"],
    ),
    (
        "retention-all-zero",
        "policy-default.yaml",
        _set("spec.retention", {"keepLast": 0, "keepDaily": 0}),
        ["spec.retention", "retention must keep something"],
    ),
    (
        "retention-empty",
        "policy-default.yaml",
        _set("spec.retention", {}),
        ["spec.retention", "retention must keep something"],
    ),
    (
        "retention-negative",
        "policy-default.yaml",
        _set("spec.retention.keepDaily", -7),
        ["spec.retention.keepDaily", "greater than or equal to 0"],
    ),
    (
        "concurrency-zero",
        "policy-gold.yaml",
        _set("spec.concurrency.perHost", 0),
        ["spec.concurrency.perHost", "greater than or equal to 1"],
    ),
    (
        "concurrency-per-datastore-above-total",
        "policy-gold.yaml",
        _set("spec.concurrency.perDatastore", 10),
        ["spec.concurrency", "perDatastore exceeds total"],
    ),
    (
        "unknown-transport",
        "policy-gold.yaml",
        _set("spec.transport", "san"),
        ["spec.transport", 'Unsupported value: "san"', '"hotadd"'],
    ),
    (
        "full-every-with-full",
        "policy-gold.yaml",
        _set("spec.mode", {"type": "full", "fullEvery": 7}),
        ["spec.mode.fullEvery", "only applies to type auto"],
    ),
    (
        "time-zone-local",
        "policy-gold.yaml",
        _set("spec.schedule.timeZone", "Local"),
        ["spec.schedule.timeZone", "name a zone such as UTC"],
    ),
    (
        "rpo-negative",
        "policy-gold.yaml",
        _set("spec.rpo", "-6h"),
        ["spec.rpo", "should match"],
    ),
    (
        "hooks-without-commands",
        "policy-gold.yaml",
        _set("spec.hooks", {"guestCredentialsSecretRef": {"name": "guest"}}),
        ["spec.hooks", "give preSnapshot or postSnapshot"],
    ),
    (
        "policy-name-too-long-for-a-label",
        "policy-default.yaml",
        _set("metadata.name", "p" * 64),
        ["DNS-1123 label", "label value"],
    ),
    (
        "backup-vm-name-too-long",
        "vmbackup.yaml",
        _set("spec.vm.name", "名" * 256),
        ["spec.vm.name", "may not be more than 255"],
    ),
    (
        "backup-vm-unidentified",
        "vmbackup.yaml",
        _set("spec.vm", {}),
        ["spec.vm", "at least one of instanceUuid, moref, name"],
    ),
    (
        "backup-bad-moref",
        "vmbackup.yaml",
        _set("spec.vm.moref", "vm42"),
        ["spec.vm.moref", "should match"],
    ),
    (
        "backup-without-policy-or-refs",
        "vmbackup.yaml",
        _all(_delete("spec.policyRef"), _set("spec.vcenterRef", {"name": "vc-prod"})),
        ["spec", "give policyRef, or both vcenterRef and repositoryRef"],
    ),
    (
        "backup-incremental-cannot-be-forced",
        "vmbackup.yaml",
        _set("spec.mode", "incremental"),
        ["spec.mode", "Unsupported value"],
    ),
    (
        "restore-two-targets",
        "vmrestore.yaml",
        _set("spec.target.inPlace", {"confirm": True}),
        ["spec.target", "set exactly one of newVM, inPlace, disks, files"],
    ),
    (
        "restore-no-target",
        "vmrestore.yaml",
        _set("spec.target", {}),
        ["spec.target", "set exactly one of newVM, inPlace, disks, files"],
    ),
    (
        "restore-no-source",
        "vmrestore.yaml",
        _delete("spec.source"),
        ["spec.source", "Required value"],
    ),
    (
        "restore-in-place-unconfirmed",
        "vmrestore.yaml",
        _set("spec.target", {"inPlace": {"confirm": False}}),
        ["spec.target.inPlace", "set confirm: true"],
    ),
    (
        "restore-disk-two-ways",
        "vmrestore.yaml",
        _set(
            "spec.target",
            {
                "disks": [
                    {
                        "source": {"label": "Hard disk 2"},
                        "overwrite": {"confirm": True},
                        "attachTo": {"vm": {"moref": "vm-7"}},
                    }
                ]
            },
        ),
        ["spec.target.disks[0]", "set exactly one of attachTo, overwrite"],
    ),
    (
        "restore-files-two-destinations",
        "vmrestore.yaml",
        _set(
            "spec.target",
            {
                "files": {
                    "paths": ["/etc/**"],
                    "to": {"s3": {"prefix": "restores/x"}, "pvc": {"claimName": "data"}},
                }
            },
        ),
        ["spec.target.files.to", "set exactly one of s3, pvc"],
    ),
    (
        "restore-files-escape-volume",
        "vmrestore.yaml",
        _set(
            "spec.target",
            {"files": {"paths": ["/etc/**"], "to": {"pvc": {"claimName": "d", "path": "a/../.."}}}},
        ),
        ["spec.target.files.to.pvc.path", "no .."],
    ),
    (
        "restore-files-relative-path",
        "vmrestore.yaml",
        _set("spec.target", {"files": {"paths": ["etc/hosts"], "to": {"pvc": {"claimName": "d"}}}}),
        ["spec.target.files.paths[0]", "paths start at a file system's root"],
    ),
    (
        "restore-files-partition-without-disk",
        "vmrestore.yaml",
        _set(
            "spec.target",
            {"files": {"partition": 2, "paths": ["/x"], "to": {"pvc": {"claimName": "d"}}}},
        ),
        ["spec.target.files.partition", "needs files.disk"],
    ),
    (
        "hook-relative-command",
        "policy-gold.yaml",
        _set("spec.hooks.preSnapshot.0.command", "db-freeze"),
        ["spec.hooks.preSnapshot[0].command", "must be an absolute path"],
    ),
    (
        # issue 18, acceptance 5 (boot half): refused at admission
        "boot-test-without-isolated-network",
        "policy-gold.yaml",
        _set("spec.verification", {"fsck": False, "boot": {"timeout": "5m"}}),
        ["spec.verification.boot.isolatedNetwork", "Required value"],
    ),
    (
        "boot-script-without-guest-account",
        "policy-gold.yaml",
        _set(
            "spec.verification",
            {
                "boot": {
                    "isolatedNetwork": "isolated",
                    "script": {"configMapRef": {"name": "checks"}, "key": "check.sh"},
                }
            },
        ),
        ["spec.verification.boot", "boot.script needs boot.guestCredentialsSecretRef"],
    ),
    (
        "restore-isolated-network-and-network-map",
        "vmrestore.yaml",
        _set(
            "spec.target",
            {
                "newVM": {
                    "name": "sandbox",
                    "isolatedNetwork": "isolated",
                    "networkMap": [{"from": "VM Network", "to": "isolated"}],
                }
            },
        ),
        ["isolatedNetwork or networkMap, not both"],
    ),
    (
        "restore-backup-ref-not-a-name",
        "vmrestore.yaml",
        _set("spec.source.backupRef.name", "Backup 1"),
        ["spec.source.backupRef.name", "should match"],
    ),
    *[
        (
            f"restore-source-{name}",
            "vmrestore.yaml",
            _set("spec.source", source),
            [
                "spec.source",
                "give backupRef, or protectedVM with exactly one of archiveId, at and "
                "latestClean: true",
            ],
        )
        for name, source in [
            ("both-forms", {"backupRef": {"name": "b"}, "protectedVM": "p", "archiveId": "a"}),
            ("backup-and-time", {"backupRef": {"name": "b"}, "at": "2026-01-01T00:00:00Z"}),
            ("point-without-which", {"protectedVM": "p"}),
            (
                "point-both-ways",
                {"protectedVM": "p", "archiveId": "a", "at": "2026-01-01T00:00:00Z"},
            ),
            ("archive-without-vm", {"archiveId": "a"}),
            ("nothing", {}),
            ("latest-clean-false", {"protectedVM": "p", "latestClean": False}),
            (
                "latest-clean-and-time",
                {"protectedVM": "p", "latestClean": True, "at": "2026-01-01T00:00:00Z"},
            ),
        ]
    ],
]


@pytest.mark.lab
@pytest.mark.parametrize(
    ("file", "mutate", "expected"), [c[1:] for c in BAD], ids=[c[0] for c in BAD]
)
def test_malformed_objects_are_refused_with_a_readable_message(
    custom: client.CustomObjectsApi,
    namespace: str,
    file: str,
    mutate: Mutation,
    expected: list[str],
) -> None:
    body = example(file)
    mutate(body)
    message = refused(lambda: create(custom, namespace, body))
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"


GOOD_CRON = [
    "0 2 * * *",
    "*/15 * * * *",
    "5,35 8-18/2 * * 1-5",
    "0 22 * * mon-fri",
    "0 0 1 jan,jul *",
    "30 4 1-7 * SUN",
    "0 0 ? * 0",
    "0 3 31 12 7",
    "@daily",
    "@weekly",
]
BAD_CRON = [
    "",
    "0 24 * * *",
    "* * 0 * *",
    "* * 32 * *",
    "* * * 13 *",
    "* * * * 8",
    "*/0 * * * *",
    "0 2 * * * *",
    "0 2 * * friday",
    "TZ=UTC 0 2 * * *",
    "@every 1h",
    "0 2 L * *",
    " 0 2 * * *",
]


@pytest.mark.lab
def test_cron_lines(custom: client.CustomObjectsApi, namespace: str) -> None:
    for line in GOOD_CRON:
        body = example("policy-default.yaml")
        body["spec"]["schedule"]["cron"] = line
        assert create(custom, namespace, body)["spec"]["schedule"]["cron"] == line
    for line in BAD_CRON:
        body = example("policy-default.yaml")
        body["spec"]["schedule"]["cron"] = line
        message = refused(lambda b=body: create(custom, namespace, b))
        assert "spec.schedule.cron" in message, (line, message)


@pytest.mark.lab
def test_vm_names_are_free_unicode_up_to_255_characters(
    custom: client.CustomObjectsApi, namespace: str
) -> None:
    names = [
        "数据库/主/" + "名" * 249,  # 255 characters, 763 bytes in UTF-8, with slashes
        "web-01 / prod (Köln) %2f ½ 🚀",
        "a",
        "vm with trailing space ",
        "C:\\Windows\\share [copy] {1}",
    ]
    for name in names:
        body = example("vmbackup.yaml")
        body["spec"]["vm"]["name"] = name
        assert create(custom, namespace, body)["spec"]["vm"]["name"] == name
        restore = example("vmrestore.yaml")
        restore["spec"]["target"]["newVM"]["name"] = name
        assert create(custom, namespace, restore)["spec"]["target"]["newVM"]["name"] == name
    # A glob over such names is just as free.
    policy = example("policy-gold.yaml")
    policy["spec"]["selector"]["names"] = ["数据库/*", "web-?? / prod*", "[[]copy]*"]
    create(custom, namespace, policy)


def _patch(
    custom: client.CustomObjectsApi, ns: str, body: dict[str, Any], patch: dict[str, Any]
) -> dict[str, Any]:
    plural = PLURAL[body["kind"]]
    name = body["metadata"]["name"]
    out: dict[str, Any] = custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, plural, name, patch
    )
    return out


@pytest.mark.lab
def test_backup_and_restore_specs_are_immutable(
    custom: client.CustomObjectsApi, namespace: str
) -> None:
    backup = example("vmbackup.yaml")
    create(custom, namespace, backup)
    for change in (
        {"spec": {"mode": "full"}},
        {"spec": {"vm": {"name": "another-vm"}}},
        {"spec": {"policyRef": {"name": "other-policy"}}},
    ):
        message = refused(lambda c=change: _patch(custom, namespace, backup, c))
        assert "spec: Invalid value" in message and "VMGuardBackup spec is immutable" in message
    # Labels and status still change: only the request is frozen.
    _patch(custom, namespace, backup, {"metadata": {"labels": {"x": "y"}}})
    restore = example("vmrestore.yaml")
    create(custom, namespace, restore)
    message = refused(
        lambda: _patch(
            custom, namespace, restore, {"spec": {"target": {"newVM": {"powerOn": True}}}}
        )
    )
    assert "VMGuardRestore spec is immutable" in message


@pytest.mark.lab
def test_repository_identity_is_immutable(custom: client.CustomObjectsApi, namespace: str) -> None:
    repo = example("vmguardrepository.yaml")
    create(custom, namespace, repo)
    cases = [
        ({"spec": {"s3": {"bucket": "other-bucket"}}}, "spec.s3.bucket", "s3.bucket is immutable"),
        ({"spec": {"s3": {"prefix": "elsewhere"}}}, "spec.s3.prefix", "s3.prefix is immutable"),
        ({"spec": {"chunkSize": 8 << 20}}, "spec.chunkSize", "chunkSize is immutable"),
        (
            {"spec": {"encryption": None}},
            "spec.encryption",
            "encryption cannot be added to or removed",
        ),
    ]
    for patch, field, text in cases:
        message = refused(lambda p=patch: _patch(custom, namespace, repo, p))
        assert field in message and text in message, message
    # What does not define the repository may change.
    changed = _patch(custom, namespace, repo, {"spec": {"objectLockDays": 30}})
    assert changed["spec"]["objectLockDays"] == 30


@pytest.mark.lab
def test_kubectl_apply_prints_the_rule(
    run_kubectl: Callable[..., subprocess.CompletedProcess[str]],
    namespace: str,
    tmp_path: Path,
) -> None:
    body = example("policy-default.yaml")
    body["spec"]["schedule"]["cron"] = "0 2 * * 9"
    body["spec"]["retention"] = {"keepLast": 0}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    done = run_kubectl("apply", "-n", namespace, "-f", str(path))
    assert done.returncode != 0
    assert "spec.schedule.cron" in done.stderr
    assert "'0 2 * * 9' is not a valid cron schedule" in done.stderr
    assert "retention must keep something" in done.stderr


def _set_status(
    custom: client.CustomObjectsApi, ns: str, body: dict[str, Any], status: dict[str, Any]
) -> None:
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, PLURAL[body["kind"]], body["metadata"]["name"], {"status": status}
    )


def _ready(reason: str) -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": "True",
        "reason": reason,
        "message": "",
        "lastTransitionTime": "2025-01-01T04:00:00Z",
    }


@pytest.mark.lab
def test_kubectl_get_vmguard_lists_every_kind_with_its_columns(
    custom: client.CustomObjectsApi,
    own_namespace: str,
    run_kubectl: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    ns = own_namespace
    objs = {
        f: example(f, name=f.removesuffix(".yaml"))
        for f in (
            "vcenter.yaml",
            "vmguardrepository.yaml",
            "policy-gold.yaml",
            "vmbackup.yaml",
            "vmrestore.yaml",
        )
    }
    for body in objs.values():
        create(custom, ns, body)
    _set_status(
        custom,
        ns,
        objs["vcenter.yaml"],
        {
            "version": "8.0.3",
            "vms": {"discovered": 5000, "unprotected": 3},
            "conditions": [_ready("Connected")],
        },
    )
    _set_status(custom, ns, objs["vmguardrepository.yaml"], {"archives": 12, "dedupRatio": 3.25})
    _set_status(custom, ns, objs["policy-gold.yaml"], {"matchedVMs": 17})
    _set_status(
        custom,
        ns,
        objs["vmbackup.yaml"],
        {
            "phase": "Transferring",
            "modeUsed": "incremental",
            "modeReason": "CBT chain intact",
            "progress": {"percent": 42, "bytesDone": 42, "bytesTotal": 100},
        },
    )
    _set_status(custom, ns, objs["vmrestore.yaml"], {"phase": "Restoring"})
    pvm = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ProtectedVM",
        "metadata": {"name": "lab-0123456789abcdef"},
        "spec": {},
    }
    create(custom, ns, pvm)
    _set_status(
        custom,
        ns,
        pvm,
        {
            "vm": {"name": "db-01", "instanceUuid": "4211c3e0-0000-4000-8000-000000000001"},
            "policy": "gold-databases",
            "lastGoodPoint": {"archiveId": "a1", "time": "2025-01-01T04:15:00Z"},
            "pointCount": 2,
            "points": [
                {"archiveId": "a1", "repository": "repo", "time": "2025-01-01T04:15:00Z"},
                {"archiveId": "a0", "repository": "repo", "time": "2025-01-01T00:15:00Z"},
            ],
            "conditions": [_ready("GoodPoint")],
        },
    )

    done = run_kubectl("get", "vmguard", "-n", ns)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for kind in KINDS:
        assert f"{kind.kind.lower()}.{GROUP}/" in out, out
    tables = _tables(out)
    vc = tables["vcenter.vmguard.io/vcenter"]
    assert (vc["HOST"], vc["READY"], vc["VERSION"], vc["VMS"], vc["UNPROTECTED"]) == (
        "vcenter.example.com",
        "True",
        "8.0.3",
        "5000",
        "3",
    )
    repo = tables["vmguardrepository.vmguard.io/vmguardrepository"]
    assert (repo["BUCKET"], repo["ARCHIVES"], repo["DEDUP"]) == ("vmguard", "12", "3.25")
    policy = tables["vmprotectionpolicy.vmguard.io/policy-gold"]
    assert (policy["DEFAULT"], policy["PRIORITY"], policy["SCHEDULE"], policy["MATCHED"]) == (
        "false",
        "100",
        "15 */4 * * *",
        "17",
    )
    backup = tables["vmguardbackup.vmguard.io/vmbackup"]
    assert backup["VM"] == "db-01 / Buchhaltung (Köln) 数据库"
    assert (backup["POLICY"], backup["PHASE"], backup["MODE"], backup["PROGRESS%"]) == (
        "gold-databases",
        "Transferring",
        "incremental",
        "42",
    )
    restore = tables["vmguardrestore.vmguard.io/vmrestore"]
    assert (restore["BACKUP"], restore["PHASE"]) == (
        "gold-databases-4211c3e0-20250101t0415",
        "Restoring",
    )
    protected = tables["protectedvm.vmguard.io/lab-0123456789abcdef"]
    assert (protected["VM"], protected["POLICY"], protected["POINTS"], protected["READY"]) == (
        "db-01",
        "gold-databases",
        "2",
        "True",
    )
    assert protected["LAST-GOOD-POINT"].endswith(("y", "d", "h"))  # an age, e.g. "700d"
    # Short names reach the same objects.
    for short, name in [
        ("vc", "vcenter"),
        ("vgrepo", "vmguardrepository"),
        ("vmpp", "policy-gold"),
        ("vgb", "vmbackup"),
        ("vgr", "vmrestore"),
        ("pvm", "lab-0123456789abcdef"),
    ]:
        done = run_kubectl("get", short, "-n", ns, "-o", "name")
        assert done.returncode == 0 and done.stdout.strip().endswith("/" + name), done


def _tables(out: str) -> dict[str, dict[str, str]]:
    """``kubectl get`` output of several kinds → resource/name → column → cell."""
    rows: dict[str, dict[str, str]] = {}
    for block in out.strip().split("\n\n"):
        header, *lines = block.splitlines()
        starts = [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 1] == " ")]
        names = header.split()
        for line in lines:
            cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
            row = dict(zip(names, cells, strict=True))
            rows[row["NAME"]] = row
    return rows
