"""Shared pytest fixtures: the lab of real peers, brought up once per test session.

Tests marked ``lab`` get clients for the running lab: a Kubernetes ``ApiClient`` (admin),
a pyVmomi ``ServiceInstance``, the vSphere simulator's control client, a MinIO client
and fresh buckets, a fault proxy (toxiproxy) in front of MinIO, and the disk image
factory. If the lab was already running when the
session started it is left running; otherwise the session stops it at the end.

A skipped test fails the run: nothing in this suite may be skipped to make it green.
"""

from __future__ import annotations

import os
import secrets
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import distribute
from tests.distribute import pytest_xdist_make_scheduler  # noqa: F401  (the hook)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="run the full count of randomized schedules (make soak), not the fixed subset",
    )


def pytest_configure(config: pytest.Config) -> None:
    # `pytest -n N`: each worker runs a lab of its own (ports are chosen freely), next to
    # the one the session names; tests/distribute.py says how the tests are shared out.
    worker = distribute.worker()
    if worker:
        base = os.environ.get("VMGUARD_LAB_DIR") or str(Path(__file__).parents[1] / ".lab")
        os.environ["VMGUARD_LAB_DIR"] = f"{base.rstrip('/')}-{worker}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        if "lab" not in item.keywords and "unit" not in item.keywords:
            item.add_marker(pytest.mark.lab if "lab" in path.parts else pytest.mark.unit)
    # Tests that read what the others captured (tests/captures.py) or left behind (the
    # simulator's call log) run last: in a distributed run, last of all the workers'.
    distribute.order(config, items)


@pytest.fixture(scope="session", autouse=True)
def captured_objects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's directory of vmguard objects the lab tests saw (tests/captures.py),
    shared by the workers of a distributed run."""
    from tests import captures

    directory = distribute.shared_dir(tmp_path_factory) / "captured-objects"
    captures.start(directory, tag=distribute.worker() or "")
    return directory


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and exitstatus == 0:
        reporter.write_line(
            f"{skipped} test(s) skipped: a skip is a failure in this suite", red=True
        )
        session.exitstatus = 1


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from vmguard_lab.lab import Lab

    lab = Lab()
    # One lab starts at a time in a distributed run: each picks free ports when it is
    # made, and two made at once may pick the same one (a full run lost gw0's scheduler,
    # whose port gw1's lab had taken: no pod ran on gw0 after that).
    with distribute.one_at_a_time(tmp_path_factory, "lab-up"):
        was_running = all(lab.status().values())
        lab.up(vms=int(os.environ.get("VMGUARD_LAB_VMS", "32")))
    # Where the session's labs are, for the tests that read all their call logs.
    labs = distribute.shared_dir(tmp_path_factory) / "labs"
    labs.mkdir(exist_ok=True)
    (labs / (distribute.worker() or "main")).write_text(str(lab.paths.lab))
    yield lab
    if not was_running and not os.environ.get("VMGUARD_KEEP_LAB"):
        lab.down()


_SECRET_KEYS = ("secret", "password", "token")


class Masked(dict[str, Any]):
    """A dict whose repr hides secret values, so that a failing test's traceback (which
    prints fixture values) never puts the lab's credentials into a CI log."""

    def __repr__(self) -> str:
        def show(key: str, value: Any) -> str:
            secret = any(w in key.lower() for w in _SECRET_KEYS)
            if isinstance(value, dict):
                return repr(Masked(value))
            return "'***'" if secret and isinstance(value, str) else repr(value)

        return "{" + ", ".join(f"{k!r}: {show(str(k), v)}" for k, v in self.items()) + "}"


@pytest.fixture(scope="session")
def session_labs(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The directories of every lab this session's tests ran on: this process's, and in
    a distributed run every worker's (read after they have finished: tests/distribute.py)."""
    labs = distribute.shared_dir(tmp_path_factory) / "labs"
    return sorted({lab.paths.lab, *(Path(p.read_text()) for p in labs.iterdir())})


@pytest.fixture(scope="session")
def lab_state(lab: Any) -> dict[str, Any]:
    return Masked(lab.state().data)


@pytest.fixture(scope="session")
def kube_api(lab: Any) -> Any:
    from kubernetes import config

    return config.new_client_from_config(str(lab.paths.kubeconfig))


@pytest.fixture(scope="session")
def kubectl(lab: Any) -> Path:
    return Path(lab.paths.bin / "kubectl")


@pytest.fixture(scope="session")
def vsphere_si(lab_state: dict[str, Any]) -> Iterator[Any]:
    from pyVim.connect import Disconnect, SmartConnect

    vs = lab_state["vsphere"]
    host_port = vs["sdk_url"].split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    context = ssl.create_default_context(cafile=vs["ca"])
    si = SmartConnect(
        host=host, port=int(port), user=vs["username"], pwd=vs["password"], sslContext=context
    )
    yield si
    Disconnect(si)


@pytest.fixture(scope="session")
def vsim(lab_state: dict[str, Any]) -> Any:
    from vmguard_lab.vsim import VSimControl

    return VSimControl(lab_state["vsphere"]["control_url"])


@pytest.fixture(scope="session")
def vc_endpoint(lab_state: dict[str, Any]) -> Any:
    from vmguard.vsphere.session import Endpoint

    vs = lab_state["vsphere"]
    return Endpoint(vs["sdk_url"], vs["username"], vs["password"], ca_file=vs["ca"])


@pytest.fixture(scope="session")
def vc(vc_endpoint: Any) -> Iterator[Any]:
    """A :class:`vmguard.vsphere.session.VSphereSession` logged in to the simulator."""
    from vmguard.vsphere.session import VSphereSession

    session = VSphereSession(vc_endpoint)
    yield session
    session.close()


@pytest.fixture(scope="session")
def minio_client(lab_state: dict[str, Any]) -> Any:
    from minio import Minio

    m = lab_state["minio"]
    return Minio(
        m["endpoint"], access_key=m["access_key"], secret_key=m["secret_key"], secure=False
    )


@pytest.fixture(scope="session")
def minio2_client(lab_state: dict[str, Any]) -> Any:
    """A client of the lab's second, independent MinIO (where copies go)."""
    from minio import Minio

    m = lab_state["minio2"]
    return Minio(
        m["endpoint"], access_key=m["access_key"], secret_key=m["secret_key"], secure=False
    )


def _bucket(
    minio_client: Any, lab_state: dict[str, Any], lock: bool, server: str = "minio"
) -> Iterator[dict[str, Any]]:
    name = f"test-{secrets.token_hex(6)}"
    minio_client.make_bucket(name, object_lock=lock)
    m = lab_state[server]
    yield Masked(
        endpoint=m["endpoint"],
        access_key=m["access_key"],
        secret_key=m["secret_key"],
        bucket=name,
        secure=False,
    )
    if not lock:  # a locked bucket's objects cannot be deleted before their retention ends
        _remove_bucket(minio_client, name)


def _remove_bucket(minio_client: Any, name: str) -> None:
    """Best effort, to keep the lab's disk small: what a test left running may still be
    writing, and a bucket that stays is harmless (the lab is removed with its directory)."""
    from minio.deleteobjects import DeleteObject
    from minio.error import S3Error

    try:
        listing = minio_client.list_objects(name, recursive=True)
        list(minio_client.remove_objects(name, (DeleteObject(o.object_name) for o in listing)))
        minio_client.remove_bucket(name)
    except S3Error:
        pass


@pytest.fixture
def s3_bucket(minio_client: Any, lab_state: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A fresh, empty bucket on the lab's MinIO, removed after the test."""
    yield from _bucket(minio_client, lab_state, lock=False)


@pytest.fixture
def s3_lock_bucket(minio_client: Any, lab_state: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A fresh bucket created with object lock enabled (kept: its objects are locked)."""
    yield from _bucket(minio_client, lab_state, lock=True)


@pytest.fixture
def s3_bucket2(minio2_client: Any, lab_state: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A fresh, empty bucket on the lab's second MinIO, removed after the test."""
    yield from _bucket(minio2_client, lab_state, lock=False, server="minio2")


@pytest.fixture
def s3_lock_bucket2(minio2_client: Any, lab_state: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A fresh bucket with object lock on the lab's second MinIO (kept: locked objects)."""
    yield from _bucket(minio2_client, lab_state, lock=True, server="minio2")


@pytest.fixture(scope="session")
def toxiproxy(lab: Any) -> Iterator[Any]:
    """A toxiproxy server of this session on a free loopback port (its API client).

    Built and cached by the lab like MinIO; started here, not by ``lab up``, and stopped
    by its pid when the session ends (``lab down`` also stops one left behind).
    """
    from vmguard_lab import build
    from vmguard_lab.faults import start_toxiproxy

    binary = build.ensure_built(lab.paths, only=("toxiproxy",))["toxiproxy-server"]
    name = f"toxiproxy-{os.getpid()}"
    server = start_toxiproxy(lab.sup, binary, name)
    yield server.api
    server.api.close()
    lab.sup.stop(name)


@pytest.fixture
def minio_proxy(toxiproxy: Any, lab_state: dict[str, Any]) -> Iterator[Any]:
    """A fault proxy in front of the lab's MinIO (a :class:`vmguard_lab.faults.FaultProxy`):
    connect to ``minio_proxy.endpoint`` instead of MinIO's and add toxics. Removed after
    the test, with every toxic on it."""
    proxy = toxiproxy.create_proxy(f"minio-{secrets.token_hex(4)}", lab_state["minio"]["endpoint"])
    yield proxy
    proxy.delete()


@pytest.fixture(scope="session")
def image_factory(lab: Any) -> Any:
    from vmguard_lab.images import DiskImageFactory

    return DiskImageFactory(lab.paths.cache / "images")


@pytest.fixture(scope="session")
def vmguard_crds(lab: Any, kubectl: Path) -> None:
    """vmguard's CRDs applied to the lab apiserver and established."""
    install_crds(lab, kubectl)


def install_crds(lab: Any, kubectl: Path) -> None:
    """Apply ``crds/`` (generated from vmguard.crds; a test keeps them equal) and wait
    until every CRD is established. Also what a test that deletes them puts back."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, KUBECONFIG=str(lab.paths.kubeconfig))
    subprocess.run(
        [str(kubectl), "apply", "--server-side", "--force-conflicts", "-f", str(repo / "crds")],
        check=True,
        env=env,
        capture_output=True,
    )
    subprocess.run(
        [
            str(kubectl),
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            str(repo / "crds"),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
