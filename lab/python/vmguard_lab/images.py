"""The lab's disk image factory: deterministic disk images with real content, without root.

Tests and benchmarks across vmguard need disks whose every byte is known: backup/restore
bit-exactness, CBT, file-level restore from ext4/NTFS/FAT/XFS, dedup and compression.
:class:`DiskImageFactory` builds them from an :class:`ImageSpec` and a seed:

- a partition table (GPT or MBR, by sfdisk) or none;
- per partition a filesystem (ext4, NTFS, FAT, XFS) populated with a seeded directory tree,
  or a raw layout of compressible, random, repeated, zero-written and hole regions.

Invariants:

- **Deterministic**: the same spec and seed give a byte-identical image (same sha256) on
  any machine with the same tool versions. Every UUID, serial, hash seed and timestamp is
  derived from the seed or pinned; see each filesystem module for how.
- **Sparse**: holes stay holes. Filesystems are built in scratch files and copied in with
  all-zero 4 KiB blocks left out; raw ``hole`` regions are never written; ``zeros``
  regions are written (allocated zeros, for testing zero-chunk detection).
- **Honest manifests**: a partition's manifest lists exactly what is in that filesystem
  (entries a filesystem cannot hold are listed in ``omitted``), with sha256 of content.
- **No root**: nothing is mounted, no loop device, no FUSE.
- **Cached**: images are kept under ``cache_dir`` keyed by (spec, seed, factory version,
  tool versions); a second build is a reflink or sparse copy of the cached image.

Backup points: :meth:`ImageSpec.next_point` gives the spec of the same disk one
generation later (files changed, some in place, added and deleted; 1% of the raw data
blocks rewritten), so a test can build points N, N+1, N+2 with known differences
(``PartitionInfo.changes``; :func:`changed_ranges` for the block-level truth).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from vmguard.errors import ConfigError
from vmguard_lab.imaging import ext4 as ext4_fs
from vmguard_lab.imaging import fat as fat_fs
from vmguard_lab.imaging import ntfs as ntfs_fs
from vmguard_lab.imaging import table, tools
from vmguard_lab.imaging import xfs as xfs_fs
from vmguard_lab.imaging.content import Content, ContentKind, Patch, derive
from vmguard_lab.imaging.probe import FsReader
from vmguard_lab.imaging.sparse import (
    Extent,
    clone,
    copy_range,
    data_extents,
    sha256_sparse,
)
from vmguard_lab.imaging.sparse import changed_ranges as _changed_ranges
from vmguard_lab.imaging.table import FsKind, TableKind
from vmguard_lab.imaging.tree import (
    BIG_FILE,
    EPOCH,
    ManifestEntry,
    NamePolicy,
    Tree,
    TreeChange,
    TreeSpec,
    evolve,
    filter_tree,
    generate_tree,
    materialize,
)

__all__ = [
    "BIG_FILE",
    "FACTORY_VERSION",
    "DiskImage",
    "DiskImageFactory",
    "Extent",
    "ImageSpec",
    "ManifestEntry",
    "PartitionInfo",
    "PartitionSpec",
    "RawExtent",
    "RawRegion",
    "TreeSpec",
    "changed_ranges",
    "fat",
    "gpt_ext4",
    "large_ext4",
    "mbr_ntfs",
    "small_mixed",
    "xfs",
]

#: bump when the factory's output for an unchanged spec and seed changes
FACTORY_VERSION = 1

MiB = 1 << 20
GiB = 1 << 30
RawKind = Literal["compressible", "random", "repeat", "zeros", "hole"]
_RAW_CONTENT: dict[str, ContentKind] = {
    "compressible": "text",
    "random": "random",
    "repeat": "repeat",
    "zeros": "zeros",
}
_POLICIES: dict[str, NamePolicy] = {
    "ext4": ext4_fs.POLICY,
    "ntfs": ntfs_fs.POLICY,
    "fat": fat_fs.POLICY,
    "xfs": xfs_fs.POLICY,
}
_TOOLS: dict[str, tuple[str, ...]] = {
    "ext4": ext4_fs.TOOLS,
    "ntfs": ntfs_fs.TOOLS,
    "fat": fat_fs.TOOLS,
    "xfs": xfs_fs.TOOLS,
    "raw": (),
}
_CHANGE_BLOCK = 64 << 10


# -- specs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawRegion:
    """``length`` bytes of one kind; a raw partition is a sequence of these (rest: hole)."""

    kind: RawKind
    length: int


@dataclass(frozen=True)
class PartitionSpec:
    """One partition: a filesystem holding a tree, or a raw layout.

    ``size`` None takes the rest of the disk. ``generation`` counts backup points after
    the first (see :meth:`ImageSpec.next_point`).
    """

    fs: FsKind
    size: int | None = None
    tree: TreeSpec | None = None
    layout: tuple[RawRegion, ...] = ()
    label: str = ""
    fat32: bool = False
    generation: int = 0


@dataclass(frozen=True)
class ImageSpec:
    size: int
    table: TableKind | None
    partitions: tuple[PartitionSpec, ...]

    def next_point(self, steps: int = 1) -> ImageSpec:
        """The same disk ``steps`` backup points later."""
        parts = tuple(replace(p, generation=p.generation + steps) for p in self.partitions)
        return replace(self, partitions=parts)

    def key(self, seed: int) -> str:
        """Cache key of this spec and seed (factory and tool versions included)."""
        doc = {"factory": FACTORY_VERSION, "spec": asdict(self), "seed": seed}
        doc["tools"] = _tool_fingerprint(self.required_tools())
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]

    def required_tools(self) -> list[str]:
        needed = ["sfdisk"] if self.table else []
        for p in self.partitions:
            needed += _TOOLS[p.fs]
        return sorted(set(needed))


@dataclass(frozen=True)
class RawExtent:
    """Where a raw region (or a later point's rewritten block) lies on the disk."""

    offset: int
    length: int
    kind: str


@dataclass
class PartitionInfo:
    """One built partition. ``number`` is sfdisk's (1-based); 0 on a disk without table."""

    number: int
    offset: int
    length: int
    fs: str
    label: str
    manifest: dict[str, ManifestEntry] = field(default_factory=dict)
    omitted: list[str] = field(default_factory=list)
    layout: list[RawExtent] = field(default_factory=list)
    changes: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class DiskImage:
    path: Path
    size: int
    sha256: str
    table: str | None
    partitions: list[PartitionInfo]
    extents: list[Extent]
    seed: int
    key: str

    @property
    def allocated(self) -> int:
        """Bytes of the image that are data, not holes."""
        return sum(e.length for e in self.extents)

    def partition(self, number: int) -> PartitionInfo:
        for p in self.partitions:
            if p.number == number:
                return p
        raise KeyError(number)

    def reader(self, number: int) -> FsReader:
        """Read-only access to partition ``number`` through its filesystem's own tools."""
        p = self.partition(number)
        return FsReader(self.path, p.offset, p.length, p.fs)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("path")
        doc.pop("extents")
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any], path: Path) -> DiskImage:
        parts = []
        for p in doc["partitions"]:
            p = dict(p)
            p["manifest"] = {k: ManifestEntry(**v) for k, v in p["manifest"].items()}
            p["layout"] = [RawExtent(**r) for r in p["layout"]]
            parts.append(PartitionInfo(**p))
        fields = {k: v for k, v in doc.items() if k != "partitions"}
        return cls(path=path, partitions=parts, extents=data_extents(path), **fields)


def changed_ranges(a: DiskImage | Path, b: DiskImage | Path, block: int = 64 << 10) -> list[Extent]:
    """Block-aligned byte ranges where two images differ."""
    pa = a.path if isinstance(a, DiskImage) else a
    pb = b.path if isinstance(b, DiskImage) else b
    return _changed_ranges(pa, pb, block)


# -- ready-made specs -----------------------------------------------------------------------


def small_mixed(size: int = 64 * MiB) -> ImageSpec:
    """A raw disk (no table) of compressible, random, repeated, zero and hole regions."""
    layout = (
        RawRegion("compressible", 8 * MiB),
        RawRegion("hole", 8 * MiB),
        RawRegion("random", 8 * MiB),
        RawRegion("zeros", 4 * MiB),
        RawRegion("hole", 4 * MiB),
        RawRegion("repeat", 8 * MiB),
        RawRegion("compressible", 4 * MiB),
        RawRegion("hole", 8 * MiB),
        RawRegion("random", 4 * MiB),
    )
    return ImageSpec(size, None, (PartitionSpec("raw", None, layout=layout),))


def gpt_ext4(size: int = 128 * MiB, tree: TreeSpec | None = None) -> ImageSpec:
    """A Linux disk: GPT, a small FAT "EFI" partition and an ext4 root with the full tree."""
    esp_tree = TreeSpec(files=6, dirs=2, big_file_size=0, symlinks=0, sparse_files=0)
    return ImageSpec(
        size,
        "gpt",
        (
            PartitionSpec("fat", 32 * MiB, tree=esp_tree, label="EFI"),
            PartitionSpec("ext4", None, tree=tree or TreeSpec(), label="root"),
        ),
    )


def mbr_ntfs(size: int = 128 * MiB, tree: TreeSpec | None = None) -> ImageSpec:
    """A Windows-like disk: MBR, an NTFS volume with the tree, a raw recovery partition."""
    recovery = (RawRegion("compressible", 8 * MiB), RawRegion("random", 4 * MiB))
    return ImageSpec(
        size,
        "mbr",
        (
            PartitionSpec("ntfs", size - 32 * MiB, tree=tree or TreeSpec(), label="System"),
            PartitionSpec("raw", None, layout=recovery, label="Recovery"),
        ),
    )


def fat(size: int = 64 * MiB, fat32: bool = False, tree: TreeSpec | None = None) -> ImageSpec:
    """MBR with one FAT partition (FAT16 at the default size; FAT32 with ``fat32``)."""
    part = PartitionSpec("fat", None, tree=tree or TreeSpec(), label="DATA", fat32=fat32)
    return ImageSpec(size, "mbr", (part,))


def xfs(size: int = 320 * MiB, tree: TreeSpec | None = None) -> ImageSpec:
    """GPT with one XFS partition (mkfs.xfs needs 300 MiB at least)."""
    return ImageSpec(size, "gpt", (PartitionSpec("xfs", None, tree=tree or TreeSpec()),))


def large_ext4(size: int = 16 * GiB, files: int = 2000, max_file_size: int = 1 * MiB) -> ImageSpec:
    """A big sparse GPT/ext4 disk for benchmarks: ~100 KiB per file on average plus the
    10 MiB :data:`BIG_FILE`; the rest of the disk stays holes. Builds in well under a
    minute because only the data is written."""
    tree = TreeSpec(files=files, dirs=max(8, files // 50), max_file_size=max_file_size)
    return ImageSpec(size, "gpt", (PartitionSpec("ext4", None, tree=tree, label="data"),))


# -- the factory ----------------------------------------------------------------------------


class DiskImageFactory:
    """Builds images of :class:`ImageSpec` and caches them under ``cache_dir``.

    ``cache_dir`` None disables the cache: every build is a fresh build.
    """

    def __init__(self, cache_dir: Path | None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None

    def build(self, spec: ImageSpec, seed: int, out_path: Path) -> DiskImage:
        """Write the image of ``spec`` and ``seed`` to ``out_path`` and describe it."""
        tools.require(spec.required_tools())
        out_path = Path(out_path)
        key = spec.key(seed)
        if self.cache_dir is None:
            with tempfile.TemporaryDirectory(prefix="vmguard-img-", dir=out_path.parent) as w:
                doc = _build(spec, seed, key, out_path, Path(w))
            return DiskImage.from_json(doc, out_path)

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        image, meta = self.cache_dir / f"{key}.img", self.cache_dir / f"{key}.json"
        with _locked(self.cache_dir / f"{key}.lock"):
            if not meta.exists():
                with tempfile.TemporaryDirectory(prefix="build-", dir=self.cache_dir) as w:
                    part = Path(w) / "disk.img"
                    doc = _build(spec, seed, key, part, Path(w))
                    os.replace(part, image)
                # The metadata appears last: its presence marks a complete image.
                tmp = meta.with_suffix(".json.part")
                tmp.write_text(json.dumps(doc))
                os.replace(tmp, meta)
            doc = json.loads(meta.read_text())
        clone(image, out_path)
        return DiskImage.from_json(doc, out_path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _tool_fingerprint(names: Sequence[str]) -> list[str]:
    # A changed tool (a Debian update of e2fsprogs, say) may write different bytes.
    out = []
    for name in names:
        path = tools.find(name)
        if path and os.path.exists(path):
            st = os.stat(path)
            out.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    return out


def _build(spec: ImageSpec, seed: int, key: str, image: Path, work: Path) -> dict[str, Any]:
    sizes = [p.size for p in spec.partitions]
    slots = table.plan(spec.size, spec.table, sizes)
    with open(image, "wb") as f:
        f.truncate(spec.size)
    if spec.table is not None:
        kinds = [p.fs for p in spec.partitions]
        names = [p.label or p.fs for p in spec.partitions]
        table.write(image, table.script(spec.table, slots, kinds, names, seed))

    infos = []
    for i, (p, slot) in enumerate(zip(spec.partitions, slots, strict=True)):
        number = 0 if spec.table is None else i + 1
        label = p.label or f"{p.fs.upper()}{number}"
        info = PartitionInfo(number, slot.offset, slot.length, p.fs, label)
        pseed = derive(seed, "partition", i)
        if p.fs == "raw":
            info.layout = _write_raw(image, slot, p, pseed)
        else:
            _build_fs(image, slot, p, pseed, label, info, work / f"p{i}")
        infos.append(info)
    doc = {
        "size": spec.size,
        "sha256": sha256_sparse(image),
        "table": spec.table,
        "partitions": [asdict(i) for i in infos],
        "seed": seed,
        "key": key,
    }
    return doc


def _build_fs(
    image: Path,
    slot: table.Slot,
    p: PartitionSpec,
    seed: int,
    label: str,
    info: PartitionInfo,
    work: Path,
) -> None:
    """Build partition ``p`` in a scratch file and copy it into ``image`` at ``slot``.

    ext4 and NTFS reach later generations in place (``apply_change`` of their modules);
    FAT and XFS are rebuilt from the final tree, so between their backup points most
    allocated blocks move.
    """
    policy = _POLICIES[p.fs]
    full = generate_tree(p.tree or TreeSpec(), seed, 0)
    in_place = p.fs in ("ext4", "ntfs")
    base = full if in_place else generate_tree(p.tree or TreeSpec(), seed, p.generation)
    steps: list[TreeChange] = []
    for step in range(1, p.generation + 1):
        steps.append(evolve(full, seed, step))
        full = steps[-1].tree
    tree = filter_tree(full, policy)
    info.omitted = sorted(set(full.entries) - set(tree.entries))
    if steps:
        last = steps[-1]
        info.changes = {
            "added": [x for x in last.added if x in tree.entries],
            "changed": [x for x in last.changed if x in tree.entries],
            "deleted": list(last.deleted),
        }

    work.mkdir(parents=True)
    first = filter_tree(base, policy)
    tree_dir = work / "tree"
    digests = materialize(first, tree_dir)
    fs_file = work / "fs.img"
    with open(fs_file, "wb") as f:
        f.truncate(slot.length)
    now = _build_time(first)
    start = slot.offset // table.SECTOR
    if p.fs == "ext4":
        ext4_fs.build(fs_file, tree_dir, label=label, seed=seed, now=now, work=work)
    elif p.fs == "ntfs":
        ntfs_fs.build(
            fs_file, first, tree_dir, label=label, seed=seed, now=now, start_sector=start, work=work
        )
    elif p.fs == "fat":
        fat_fs.build(
            fs_file,
            tree,
            tree_dir,
            label=label,
            seed=seed,
            now=now,
            start_sector=start,
            fat32=p.fat32,
        )
    elif p.fs == "xfs":
        xfs_fs.build(fs_file, tree, tree_dir, label=label, seed=seed, now=now, work=work)
    else:  # pragma: no cover - FsKind is exhausted above
        raise ConfigError(f"unknown filesystem {p.fs!r}")
    if in_place and steps:
        apply = ext4_fs.apply_change if p.fs == "ext4" else ntfs_fs.apply_change
        old = first
        for i, change in enumerate(steps, 1):
            new = filter_tree(change.tree, policy)
            apply(fs_file, old, change, new, now=_build_time(new), work=work / f"step{i}")
            old = new
        digests = {e.path: e.content.sha256() for e in tree if e.content is not None}
    info.manifest = tree.manifest(digests)
    copy_range(fs_file, image, slot.offset, skip_zero_blocks=True)
    _remove_tree(work)


def _remove_tree(path: Path) -> None:
    # The materialized tree has read-only directories (mode 0555), whose entries only
    # root may delete: give them back to their owner first.
    for root, dirs, _files in os.walk(path):
        for d in dirs:
            p = os.path.join(root, d)
            if not os.path.islink(p):
                os.chmod(p, 0o700)
    shutil.rmtree(path)


def _build_time(tree: Tree) -> int:
    """The image's "now": no earlier than any mtime in it, so ctime >= mtime holds."""
    return max([EPOCH, tree.root_mtime, *(e.mtime for e in tree)])


def _write_raw(image: Path, slot: table.Slot, p: PartitionSpec, seed: int) -> list[RawExtent]:
    """Write the raw layout (and the block rewrites of later generations) into ``slot``."""
    regions: list[tuple[int, RawRegion]] = []
    pos = 0
    for r in p.layout:
        if r.length <= 0 or pos + r.length > slot.length:
            raise ConfigError(f"raw layout does not fit its {slot.length}-byte partition")
        regions.append((pos, r))
        pos += r.length
    if pos < slot.length:
        regions.append((pos, RawRegion("hole", slot.length - pos)))

    patches = _raw_patches(slot.length, p.generation, seed)
    extents = [RawExtent(slot.offset + off, r.length, r.kind) for off, r in regions]
    fd = os.open(image, os.O_WRONLY)
    try:
        for i, (off, r) in enumerate(regions):
            local = tuple(
                Patch(q.offset - off, q.length, q.seed)
                for q in patches
                if off <= q.offset < off + r.length
            )
            if r.kind == "hole":
                for q in local:
                    data = Content("random", q.length, q.seed).read()
                    os.pwrite(fd, data, slot.offset + off + q.offset)
                continue
            content = Content(_RAW_CONTENT[r.kind], r.length, derive(seed, "raw", i), local)
            at = slot.offset + off
            for chunk in content.chunks():
                os.pwrite(fd, chunk, at)
                at += len(chunk)
    finally:
        os.close(fd)
    extents += [RawExtent(slot.offset + q.offset, q.length, "rewritten") for q in patches]
    return sorted(extents, key=lambda e: (e.offset, e.kind))


def _raw_patches(length: int, generation: int, seed: int) -> list[Patch]:
    """Blocks rewritten by backup points 1..generation: 1% of the partition's 64 KiB blocks
    per point, anywhere (data, zeros or holes, as a guest would)."""
    blocks = length // _CHANGE_BLOCK
    out: dict[int, Patch] = {}
    for step in range(1, generation + 1):
        rng = random.Random(derive(seed, "raw-evolve", step))
        for b in rng.sample(range(blocks), max(1, blocks // 100)):
            out[b] = Patch(b * _CHANGE_BLOCK, _CHANGE_BLOCK, derive(seed, "raw-patch", step, b))
    return [out[b] for b in sorted(out)]
