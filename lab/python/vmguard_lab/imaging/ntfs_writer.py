"""Write a directory tree into an NTFS volume file through libntfs-3g (no FUSE, no mount).

Run as ``python -m vmguard_lab.imaging.ntfs_writer VOLUME PLAN.json`` by
:mod:`vmguard_lab.imaging.ntfs`, in a child process with libfaketime preloaded: libntfs-3g
stamps every inode it touches with ``clock_gettime()`` (the MFT-change time cannot be set
through its API), so a frozen clock is the only way to byte-identical volumes. The child
process also keeps a crash of the C library away from the caller.

The plan is JSON: ``{"root_mtime": int, "entries": [{"path", "kind", "mtime", "source",
"target", "target_is_dir"}]}`` with parents before children; for a later backup point also
``"delete": [path]``, ``"modify": [{"path", "source", "offset", "truncate", "mtime"}]``
(in-place patches and rewrites) and ``"dir_times": {path: mtime}``. Files are created in the
POSIX namespace (no DOS 8.3 alias), as ntfs-3g does; symlinks become Windows symlink
reparse points (``IO_REPARSE_TAG_SYMLINK``, relative), the kind ``mklink`` makes.
"""

from __future__ import annotations

import ctypes
import json
import struct
import sys
from typing import Any

_S_IFDIR = 0o040000
_S_IFREG = 0o100000
_AT_DATA = 0x80
_FILE_ROOT = 5
_IO_REPARSE_TAG_SYMLINK = 0xA000000C
_SYMLINK_FLAG_RELATIVE = 1
_NTFS_EPOCH_OFFSET = 11644473600  # seconds from 1601-01-01 to 1970-01-01

_MREF_MASK = (1 << 48) - 1
_vp = ctypes.c_void_p


def _utf16(name: str) -> tuple[ctypes.Array[ctypes.c_char], int]:
    raw = name.encode("utf-16-le")
    return ctypes.create_string_buffer(raw, len(raw)), len(raw) // 2


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL("libntfs-3g.so.89", use_errno=True)
    sig: dict[str, tuple[Any, list[Any]]] = {
        "ntfs_mount": (_vp, [ctypes.c_char_p, ctypes.c_uint32]),
        "ntfs_umount": (ctypes.c_int, [_vp, ctypes.c_int]),
        "ntfs_inode_open": (_vp, [_vp, ctypes.c_uint64]),
        "ntfs_inode_close": (ctypes.c_int, [_vp]),
        "ntfs_inode_close_in_dir": (ctypes.c_int, [_vp, _vp]),
        "ntfs_inode_lookup_by_name": (ctypes.c_uint64, [_vp, _vp, ctypes.c_int]),
        "ntfs_delete": (ctypes.c_int, [_vp, ctypes.c_char_p, _vp, _vp, _vp, ctypes.c_uint8]),
        "ntfs_attr_truncate": (ctypes.c_int, [_vp, ctypes.c_int64]),
        "ntfs_create": (_vp, [_vp, ctypes.c_uint32, _vp, ctypes.c_uint8, ctypes.c_uint32]),
        "ntfs_attr_open": (_vp, [_vp, ctypes.c_uint32, _vp, ctypes.c_uint32]),
        "ntfs_attr_pwrite": (
            ctypes.c_int64,
            [_vp, ctypes.c_int64, ctypes.c_int64, ctypes.c_char_p],
        ),
        "ntfs_attr_close": (None, [_vp]),
        "ntfs_inode_set_times": (
            ctypes.c_int,
            [_vp, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int],
        ),
        "ntfs_set_ntfs_reparse_data": (
            ctypes.c_int,
            [_vp, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int],
        ),
    }
    for name, (res, args) in sig.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


class Volume:
    def __init__(self, path: str) -> None:
        self.lib = _load()
        self.vol = self.lib.ntfs_mount(path.encode(), 0)
        if not self.vol:
            raise OSError(ctypes.get_errno(), f"ntfs_mount {path}")
        self.at_unnamed = ctypes.addressof(ctypes.c_uint16.in_dll(self.lib, "AT_UNNAMED"))

    def root(self) -> int:
        return self._check(self.lib.ntfs_inode_open(self.vol, _FILE_ROOT), "open root")

    def create(self, dir_ni: int, name: str, mode: int) -> int:
        buf, n = _utf16(name)
        return self._check(self.lib.ntfs_create(dir_ni, 0, buf, n, mode), name)

    def lookup(self, dir_ni: int, name: str) -> int:
        buf, n = _utf16(name)
        mref = self.lib.ntfs_inode_lookup_by_name(dir_ni, buf, n)
        if mref == 2**64 - 1:
            raise FileNotFoundError(name)
        return self._check(self.lib.ntfs_inode_open(self.vol, mref & _MREF_MASK), name)

    def delete(self, dir_ni: int, path: str) -> None:
        """Delete the file ``path`` (its name in ``dir_ni``); libntfs-3g closes the inode."""
        name = path.rpartition("/")[2]
        ni = self.lookup(dir_ni, name)
        buf, n = _utf16(name)
        if self.lib.ntfs_delete(self.vol, ("/" + path).encode(), ni, dir_ni, buf, n):
            raise OSError(ctypes.get_errno(), f"ntfs_delete {path}")

    def write(self, ni: int, source: str, offset: int = 0, truncate: bool = False) -> None:
        na = self._check(self.lib.ntfs_attr_open(ni, _AT_DATA, self.at_unnamed, 0), source)
        try:
            if truncate and self.lib.ntfs_attr_truncate(na, 0):
                raise OSError(ctypes.get_errno(), f"ntfs_attr_truncate {source}")
            with open(source, "rb") as f:
                pos = offset
                while chunk := f.read(1 << 20):
                    if self.lib.ntfs_attr_pwrite(na, pos, len(chunk), chunk) != len(chunk):
                        raise OSError(ctypes.get_errno(), f"ntfs_attr_pwrite {source}")
                    pos += len(chunk)
        finally:
            self.lib.ntfs_attr_close(na)

    def symlink(self, ni: int, target: str) -> None:
        path = target.replace("/", "\\").encode("utf-16-le")
        body = struct.pack("<HHHHI", 0, len(path), len(path), len(path), _SYMLINK_FLAG_RELATIVE)
        data = body + path + path
        rp = struct.pack("<IHH", _IO_REPARSE_TAG_SYMLINK, len(data), 0) + data
        if self.lib.ntfs_set_ntfs_reparse_data(ni, rp, len(rp), 0):
            raise OSError(ctypes.get_errno(), f"reparse point {target}")

    def set_times(self, ni: int, mtime: int) -> None:
        t = (mtime + _NTFS_EPOCH_OFFSET) * 10_000_000
        value = struct.pack("<QQQ", t, t, t)  # creation, data change, access
        if self.lib.ntfs_inode_set_times(ni, value, len(value), 0):
            raise OSError(ctypes.get_errno(), "ntfs_inode_set_times")

    def close(self, ni: int, dir_ni: int | None) -> None:
        """Close ``ni``; its name in ``dir_ni``'s index is updated through ``dir_ni`` itself
        (opening the directory a second time would work on a stale copy of it)."""
        res = (
            self.lib.ntfs_inode_close_in_dir(ni, dir_ni)
            if dir_ni
            else self.lib.ntfs_inode_close(ni)
        )
        if res:
            raise OSError(ctypes.get_errno(), "ntfs_inode_close")

    def umount(self) -> None:
        if self.lib.ntfs_umount(self.vol, 0):
            raise OSError(ctypes.get_errno(), "ntfs_umount")

    def _check(self, ptr: int | None, what: str) -> int:
        if not ptr:
            raise OSError(ctypes.get_errno(), f"libntfs-3g failed on {what!r}")
        return ptr


class _Dirs:
    """Open directory inodes by path; each directory is opened once (a second handle on
    the same inode would work on a stale copy of its index)."""

    def __init__(self, vol: Volume, root_mtime: int) -> None:
        self.vol = vol
        self.open: dict[str, int] = {"": vol.root()}
        self.mtimes: dict[str, int] = {"": root_mtime}

    def get(self, path: str) -> int:
        if path not in self.open:
            parent, _, name = path.rpartition("/")
            self.open[path] = self.vol.lookup(self.get(parent), name)
        return self.open[path]

    def close_all(self) -> None:
        # Deepest first, root last; set the wanted times just before closing, since
        # changes to a directory's entries move its times to "now".
        for path in sorted(self.open, key=lambda p: (-p.count("/") if p else 1, p)):
            ni = self.open[path]
            if path in self.mtimes:
                self.vol.set_times(ni, self.mtimes[path])
            self.vol.close(ni, self.open[path.rpartition("/")[0]] if path else None)


def _create(vol: Volume, dirs: _Dirs, e: dict[str, Any]) -> None:
    parent, _, name = e["path"].rpartition("/")
    dir_ni = dirs.get(parent)
    if e["kind"] == "dir":
        dirs.open[e["path"]] = vol.create(dir_ni, name, _S_IFDIR)
        dirs.mtimes[e["path"]] = e["mtime"]
        return
    is_dir_link = e["kind"] == "symlink" and e["target_is_dir"]
    ni = vol.create(dir_ni, name, _S_IFDIR if is_dir_link else _S_IFREG)
    if e["kind"] == "file":
        vol.write(ni, e["source"])
    else:
        vol.symlink(ni, e["target"])
    vol.set_times(ni, e["mtime"])
    vol.close(ni, dir_ni)


def write_plan(volume_path: str, plan: dict[str, Any]) -> None:
    """Create ``plan["entries"]``; with ``"change"`` also delete, patch and rewrite files
    of an existing tree first (a later backup point, changed in place)."""
    vol = Volume(volume_path)
    dirs = _Dirs(vol, plan["root_mtime"])
    for path in plan.get("delete", []):
        vol.delete(dirs.get(path.rpartition("/")[0]), path)
    for item in plan.get("modify", []):
        parent, _, name = item["path"].rpartition("/")
        dir_ni = dirs.get(parent)
        ni = vol.lookup(dir_ni, name)
        vol.write(ni, item["source"], item["offset"], truncate=item["truncate"])
        vol.set_times(ni, item["mtime"])
        vol.close(ni, dir_ni)
    for e in plan["entries"]:
        _create(vol, dirs, e)
    for path, mtime in plan.get("dir_times", {}).items():
        dirs.get(path)
        dirs.mtimes[path] = mtime
    dirs.close_all()
    vol.umount()


def main(argv: list[str]) -> int:
    volume, plan_path = argv
    with open(plan_path, encoding="utf-8") as f:
        write_plan(volume, json.load(f))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
