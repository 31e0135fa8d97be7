"""Build vmguard's operator and proxy images from Debian packages, without a registry.

``python3 images/build.py [--lab]`` (``make images``, ``make lab-images``) makes, in the
local image store of podman (root, ``/var/lib/containers/storage``):

1. ``vmguard-base:<hash>``: a Debian root file system made by ``mmdebstrap`` from
   :data:`BASE_PACKAGES` (``--variant=essential``: dpkg's essential set, no apt), with the
   user and group 65532 (``nonroot``) and no documentation, imported as one layer;
2. ``vmguard-operator:<version>`` and ``vmguard-proxy:<version>``: the two targets of
   ``images/Containerfile`` over that base, from wheels ``pip wheel`` makes here of this
   checkout (``pyproject.toml``, ``README.md``, ``operator/``) — the product only; the
   dependencies' stage is tagged too (``vmguard-deps:build-<hash>``, never shipped), so
   that its layers stay cached when vmguard's code alone changed;
3. with ``--lab``: ``vmguard-proxy:lab``, ``lab/image/Containerfile`` over the proxy image
   (the lab's distribution, for tests only).

Invariants: a step runs again only when no build of the same inputs is in the store:
each build is tagged with a hash of its inputs (``:build-<hash>``, ``:lab-<hash>``; the
stamps under ``$VMGUARD_CACHE_DIR/images-v<N>/``, default ``~/.cache/vmguard``, are kept
per hash too), so checkouts that differ (worktrees, branches) each keep their build and
switching between them is a cache hit; one build runs at a time per cache (a lock file);
the :data:`KEEP_BUILDS` newest builds of each image stay, older ones are removed. The
version tags (``vmguard-operator:<version>``, ``vmguard-proxy:<version>``,
``vmguard-proxy:lab``) point at the last checkout built.
The product's build context never contains ``lab/`` (the lab is a separate distribution
whose wheel only step 3 sees). ``images.json`` next to the stamps (and ``--json PATH``)
records each image's build reference, id, digest and size for the chart and the tests.

Podman runs with runc and cgroupfs and host networking (``PODMAN_FLAGS``): what works
on a machine without systemd or a cgroup-v2 delegation, and the same on any other.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Bump when the recipe changes in a way the hashed inputs do not show.
CACHE_VERSION = 1
SUITE = "bookworm"  # Python 3.11, python3-libnbd 1.14, nbdkit 1.32: what the lab tests with
BASE_PACKAGES = (
    "python3",  # 3.11: the interpreter of the virtualenv the images run
    "python3-libnbd",  # the NBD client bindings of vmguard.transport.nbd
    "nbdkit",  # the NBD server the proxy starts (file plugin; VDDK: docs/install.md)
    "nbdkit-plugin-python",  # serves an archived disk to nbdfuse (verify/export.py)
    "libnbd-bin",  # nbdfuse: a verified volume as a file the checkers open
    "fuse3",  # fusermount3, with which nbdfuse mounts and unmounts
    # the file-system checkers of verify/fsck.py
    "e2fsprogs",
    "xfsprogs",
    "ntfs-3g",
    "dosfstools",
    "ca-certificates",  # TLS to vCenter and S3 when no CA bundle is given
    "tzdata",  # policy schedules in named time zones
)
# boto3, for nbdkit's S3 plugin (nbdkit-plugin-python depends on it), is removed after
# installing (its byte-compiling postinst needs the files; the package stays registered,
# so scanners still see it): 79 MB, mostly botocore's data, that nothing in the images
# runs — vmguard's plugin is its own and reads S3 through vmguard's client.
UNUSED_PYTHON = ("botocore", "boto3", "s3transfer")
NONROOT = 65532
PODMAN_FLAGS = ("--runtime", "runc", "--cgroup-manager", "cgroupfs")


def ulimit_flags() -> tuple[str, ...]:
    """Explicit ``--ulimit`` flags no higher than this process's hard limits: podman's
    defaults may exceed them, and runc cannot raise a limit there (seen on a machine whose
    hard nproc limit was refused even at its own value: nproc stays at 32768)."""
    out = []
    for name, res, most in (
        ("nofile", resource.RLIMIT_NOFILE, 65536),
        ("nproc", resource.RLIMIT_NPROC, 32768),
    ):
        hard = resource.getrlimit(res)[1]
        value = most if hard == resource.RLIM_INFINITY else min(hard, most)
        out.append(f"--ulimit={name}={value}:{value}")
    return tuple(out)


LABEL = "io.vmguard.build"  # on everything built here: what prune_superseded may remove
BUILD_FLAGS = ("--network=host", *ulimit_flags(), "--layers", f"--label={LABEL}=1")
PRODUCT_FILES = ("pyproject.toml", "README.md", "operator")
KEEP_BUILDS = 4
"""Builds of each image kept in the store (newest first): one per checkout in use."""


def _say(msg: str) -> None:
    print(f"[images] {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    root = Path(os.environ.get("VMGUARD_CACHE_DIR") or Path.home() / ".cache" / "vmguard")
    return root / f"images-v{CACHE_VERSION}"


def podman(*args: str, capture: bool = False) -> str:
    proc = subprocess.run(
        ["podman", *PODMAN_FLAGS, *args],
        check=False,
        text=True,
        stdout=subprocess.PIPE if capture else None,
    )
    if proc.returncode != 0:
        raise SystemExit(f"[images] podman {' '.join(args[:3])} ... failed ({proc.returncode})")
    return proc.stdout or ""


def image_exists(ref: str) -> bool:
    return subprocess.run(["podman", *PODMAN_FLAGS, "image", "exists", ref]).returncode == 0


def _hash_files(h: hashlib._Hash, root: Path, rels: tuple[str, ...]) -> None:
    for rel in rels:
        top = root / rel
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            parts = path.relative_to(root).parts
            if "__pycache__" in parts or any(p.endswith(".egg-info") for p in parts):
                continue
            h.update(str(path.relative_to(root)).encode() + b"\0")
            h.update(path.read_bytes())


def base_inputs() -> str:
    h = hashlib.sha256(f"{CACHE_VERSION} {SUITE} {' '.join(BASE_PACKAGES)} merged-usr".encode())
    h.update(_base_hooks_text().encode())
    return h.hexdigest()


def _base_hooks_text() -> str:
    return json.dumps(_base_hooks())


def _base_hooks() -> list[str]:
    # Documentation, man pages and locales are not needed by a service; apt's lists are not
    # there (variant essential), the package database stays for scanners.
    return [
        f'echo "nonroot:x:{NONROOT}:{NONROOT}:nonroot:/nonexistent:/usr/sbin/nologin"'
        ' >> "$1/etc/passwd"',
        f'echo "nonroot:x:{NONROOT}:" >> "$1/etc/group"',
        'rm -rf "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/info/*'
        ' "$1"/usr/share/locale/* "$1"/var/cache/* "$1"/var/log/*',
        "rm -rf " + " ".join(f'"$1"/usr/lib/python3/dist-packages/{p}' for p in UNUSED_PYTHON),
    ]


def product_inputs(base: str) -> str:
    h = hashlib.sha256(base.encode())
    _hash_files(h, REPO, ("images/Containerfile", *PRODUCT_FILES))
    return h.hexdigest()


def lab_inputs(product: str) -> str:
    h = hashlib.sha256(product.encode())
    _hash_files(h, REPO, ("lab/image/Containerfile", "lab/python/pyproject.toml"))
    _hash_files(h, REPO, ("lab/python/vmguard_lab",))
    return h.hexdigest()


class Stamps:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, step: str, inputs: str) -> Path:
        return self.root / f"{step}-{inputs[:16]}.json"

    def fresh(self, step: str, inputs: str, refs: tuple[str, ...]) -> bool:
        try:
            done = json.loads(self._path(step, inputs).read_text()).get("inputs") == inputs
        except (OSError, ValueError):
            done = False
        return done and all(image_exists(r) for r in refs)

    def record(self, step: str, inputs: str) -> None:
        self._path(step, inputs).write_text(json.dumps({"inputs": inputs}))


def build_base(stamps: Stamps, inputs: str) -> str:
    ref = f"localhost/vmguard-base:{inputs[:12]}"
    if stamps.fresh("base", inputs, (ref,)):
        return ref
    if not shutil.which("mmdebstrap"):
        raise SystemExit("[images] mmdebstrap is needed: apt-get install mmdebstrap")
    _say(f"making the Debian {SUITE} root file system ({', '.join(BASE_PACKAGES)})")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vmguard-base-") as tmp:
        tar = Path(tmp) / "base.tar"
        cmd = [
            "mmdebstrap",
            "--quiet",
            "--mode=root",
            "--variant=essential",
            # /usr merged by mmdebstrap itself: the usrmerge package would pull in perl.
            "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
            "--include=" + ",".join(BASE_PACKAGES),
            *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "info", "locale")),
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        ]
        cmd += [f"--customize-hook={hook}" for hook in _base_hooks()]
        cmd += [SUITE, str(tar)]
        if subprocess.run(cmd).returncode != 0:
            raise SystemExit("[images] mmdebstrap failed")
        podman(
            "import",
            "--change",
            f"LABEL {LABEL}=1",
            "--change",
            f"USER {NONROOT}:{NONROOT}",
            "--change",
            "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            str(tar),
            ref,
            capture=True,
        )
    stamps.record("base", inputs)
    _say(f"base {ref} in {time.monotonic() - started:.0f}s")
    return ref


def _wheels(dest: Path, *sources: str) -> None:
    """Wheels of ``sources`` and their dependencies, and pip's own, into ``dest``."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--wheel-dir", str(dest), *sources], check=True)
    subprocess.run([*pip, "download", "--no-deps", "-d", str(dest), "pip"], check=True)


def _split_context(wheels: Path) -> None:
    """Sort ``wheels`` into the context's three directories: ``pip/`` (pip's own wheel),
    ``deps/`` (vmguard's dependencies, with ``requirements.txt`` naming each file) and
    ``app/`` (vmguard's wheel). Each is copied into the image by a step of its own, so
    that a change of vmguard's code alone rebuilds only the last, small layer (podman
    reuses the dependencies' layer: same files, same times)."""
    ctx = wheels.parent
    for sub in ("pip", "deps", "app"):
        (ctx / sub).mkdir()
    for whl in sorted(wheels.glob("*.whl")):
        name = whl.name.split("-", 1)[0].lower()
        sub = "pip" if name == "pip" else "app" if name == "vmguard" else "deps"
        whl.rename(ctx / sub / whl.name)
    (ctx / "deps" / "requirements.txt").write_text(
        "".join(f"/wheels/deps/{w.name}\n" for w in sorted((ctx / "deps").glob("*.whl")))
    )
    wheels.rmdir()
    for path in ctx.rglob("*"):
        os.utime(path, (0, 0))  # podman's layer cache compares the copied files' times too


def build_product(stamps: Stamps, base_ref: str, inputs: str, version: str) -> dict[str, str]:
    refs = {name: f"localhost/vmguard-{name}:build-{inputs[:12]}" for name in ("operator", "proxy")}
    if stamps.fresh("product", inputs, tuple(refs.values())):
        _tag_version(refs, version)
        return refs
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vmguard-images-") as tmp:
        ctx = Path(tmp)
        # The product's sources only, copied: the context never holds the lab.
        src = ctx / "src"
        src.mkdir()
        for rel in PRODUCT_FILES:
            if (REPO / rel).is_dir():
                shutil.copytree(
                    REPO / rel,
                    src / rel,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
                )
            else:
                shutil.copy2(REPO / rel, src / rel)
        _say("making wheels of vmguard and its dependencies")
        _wheels(ctx / "wheels", str(src))
        shutil.rmtree(src)
        _split_context(ctx / "wheels")
        # The dependencies' stage first, tagged, so that its layers outlive the prune
        # below and the next build of changed vmguard code finds them in the cache.
        stages = {"deps": f"localhost/vmguard-deps:build-{inputs[:12]}", **refs}
        for name, ref in stages.items():
            _say(f"building {ref}")
            podman(
                "build",
                *BUILD_FLAGS,
                "--file",
                str(REPO / "images" / "Containerfile"),
                "--build-arg",
                f"BASE={base_ref}",
                "--target",
                name,
                "--tag",
                ref,
                str(ctx),
                capture=True,
            )
    stamps.record("product", inputs)
    _tag_version(refs, version)
    _say(f"operator and proxy images in {time.monotonic() - started:.0f}s")
    return refs


def _tag_version(refs: dict[str, str], version: str) -> None:
    """Point ``vmguard-<name>:<version>`` (what ``make images`` promises, docs/install.md)
    at this checkout's build."""
    for name, ref in refs.items():
        podman("tag", ref, f"localhost/vmguard-{name}:{version}", capture=True)


LAB_REF = "localhost/vmguard-proxy:lab"


def build_lab(stamps: Stamps, proxy_ref: str, inputs: str) -> str:
    ref = f"localhost/vmguard-proxy:lab-{inputs[:12]}"
    if stamps.fresh("lab", inputs, (ref,)):
        podman("tag", ref, LAB_REF, capture=True)
        return ref
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vmguard-lab-image-") as tmp:
        ctx = Path(tmp)
        wheels = ctx / "wheels"
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
        # From a copy: setuptools would leave build/ in the checkout.
        src = ctx / "lab-src"
        shutil.copytree(
            REPO / "lab" / "python",
            src,
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"),
        )
        subprocess.run(
            [*pip, "wheel", "--no-deps", "--wheel-dir", str(wheels), str(src)], check=True
        )
        shutil.rmtree(src)
        subprocess.run([*pip, "download", "--no-deps", "-d", str(wheels), "pip"], check=True)
        podman(
            "build",
            *BUILD_FLAGS,
            "--file",
            str(REPO / "lab" / "image" / "Containerfile"),
            "--build-arg",
            f"PROXY={proxy_ref}",
            "--tag",
            ref,
            str(ctx),
            capture=True,
        )
    stamps.record("lab", inputs)
    podman("tag", ref, LAB_REF, capture=True)
    _say(f"lab layer {ref} in {time.monotonic() - started:.0f}s")
    return ref


def prune_superseded(base_ref: str) -> None:
    """Remove what earlier builds left, only images carrying :data:`LABEL` (the store may
    hold other images): bases of other inputs, builds beyond the :data:`KEEP_BUILDS`
    newest of each image, untagged images. Best effort: an image a container still uses
    (another checkout's test, say) stays until a later build."""
    images = json.loads(
        podman("images", "--filter", f"label={LABEL}", "--format", "json", capture=True) or "[]"
    )
    builds: dict[str, list[tuple[int, str]]] = {}
    old: list[str] = []
    for image in images:
        for ref in image.get("Names") or []:
            repo, _, tag = ref.rpartition(":")
            if repo == "localhost/vmguard-base" and ref != base_ref:
                old.append(ref)
            elif tag.startswith(("build-", "lab-")):
                builds.setdefault(f"{repo}:{tag.split('-')[0]}", []).append(
                    (int(image.get("Created") or 0), ref)
                )
    for listed in builds.values():
        old += [ref for _, ref in sorted(listed, reverse=True)[KEEP_BUILDS:]]
    for ref in old:
        subprocess.run(["podman", *PODMAN_FLAGS, "rmi", ref], capture_output=True, check=False)
    podman("image", "prune", "--force", "--filter", f"label={LABEL}", capture=True)


def describe(refs: dict[str, str]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for name, ref in refs.items():
        info = json.loads(podman("image", "inspect", ref, capture=True))[0]
        out[name] = {
            "ref": ref,
            "id": info["Id"],
            "digest": info["Digest"],
            "size": info["Size"],
        }
    return out


def version() -> str:
    for line in (REPO / "pyproject.toml").read_text().splitlines():
        if line.startswith("version"):
            return line.split("=", 1)[1].strip().strip('"')
    raise SystemExit("[images] no version in pyproject.toml")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="images/build.py", description=__doc__.split("\n")[0])
    parser.add_argument("--lab", action="store_true", help="also vmguard-proxy:lab (tests)")
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="also write the images' description to PATH"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("[images] run as root: mmdebstrap --mode=root and podman's root store")
    # One build at a time per cache: two (two test workers, two checkouts) would race on
    # the stamps and the tags, and prune what the other is about to use.
    with _locked(cache_dir() / "build.lock"):
        stamps = Stamps(cache_dir())
        started = time.monotonic()
        base = base_inputs()
        base_ref = build_base(stamps, base)
        product = product_inputs(base)
        refs = build_product(stamps, base_ref, product, version())
        if args.lab:
            refs["proxy-lab"] = build_lab(stamps, refs["proxy"], lab_inputs(product))
        refs["base"] = base_ref
        prune_superseded(base_ref)
        described = describe(refs)
        for out in (stamps.root / "images.json", args.json):
            if out is not None:
                out.write_text(json.dumps(described, indent=2) + "\n")
        for name, d in described.items():
            _say(f"{name:10} {d['ref']:36} {int(str(d['size'])) / 1e6:7.1f} MB  {d['digest']}")
        _say(f"done in {time.monotonic() - started:.0f}s; {stamps.root / 'images.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
