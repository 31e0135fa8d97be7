"""``vmguard-lab inventory``: what the running lab offers, read through its real APIs.

Kubernetes nodes through the apiserver, VMs through the vSphere API (pyVmomi, via
``vmguard.vsphere``), buckets through S3 — so the listing itself shows that each peer
answers. Credentials are read from the lab's state file and never printed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmguard_lab.lab import Lab


def print_inventory(lab: Lab, max_vms: int = 12) -> None:
    from kubernetes import client, config
    from minio import Minio

    from vmguard.vsphere.inventory import discover
    from vmguard.vsphere.session import Endpoint, connect, disconnect

    st = lab.state().data
    print("Endpoints")
    print(
        f"  Kubernetes apiserver  {st['kubernetes']['server']}  (KUBECONFIG={lab.paths.kubeconfig})"
    )
    print(f"  vSphere SDK           {st['vsphere']['sdk_url']}")
    print(f"  vSphere lab control   {st['vsphere']['control_url']}")
    print(f"  MinIO (S3)            http://{st['minio']['endpoint']}")

    api = config.new_client_from_config(str(lab.paths.kubeconfig))
    nodes = client.CoreV1Api(api).list_node().items
    print(f"\nKubernetes nodes ({len(nodes)})")
    for node in nodes:
        ready = next((c.status for c in node.status.conditions if c.type == "Ready"), "?")
        print(f"  {node.metadata.name:28} Ready={ready:5} {node.status.node_info.kubelet_version}")

    vs = st["vsphere"]
    si = connect(Endpoint(vs["sdk_url"], vs["username"], vs["password"], ca_file=vs["ca"]))
    try:
        vms = discover(si)
    finally:
        disconnect(si)
    print(f"\nvSphere VMs ({len(vms)}; first {min(max_vms, len(vms))})")
    print(f"  {'NAME':30} {'MOREF':10} {'POWER':11} {'HW':7} CBT")
    for vm in vms[:max_vms]:
        name = vm.name + (" (template)" if vm.template else "")
        cbt = "on" if vm.cbt_enabled else "off"
        hw = f"vmx-{vm.hardware_version:02d}"
        print(f"  {name:30} {vm.moref:10} {vm.power_state:11} {hw:7} {cbt}")

    m = st["minio"]
    s3 = Minio(m["endpoint"], access_key=m["access_key"], secret_key=m["secret_key"], secure=False)
    buckets = s3.list_buckets()
    left_by_tests = [b for b in buckets if b.name.startswith("test-")]
    print(f"\nMinIO buckets ({len(buckets)})")
    for b in buckets:
        if b not in left_by_tests:
            print(f"  {b.name}")
    if left_by_tests:
        print(f"  ... and {len(left_by_tests)} object-locked bucket(s) left by tests (test-*)")
