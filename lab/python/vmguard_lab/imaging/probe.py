"""Read files back out of a partition of a disk image with each filesystem's own tools.

This is the independent check on what the factory (or a restore) put on a disk: ext4
through ``debugfs`` (reading the image at an offset), NTFS through ``ntfscat``, FAT through
``mcopy`` (``image@@offset``), XFS through ``xfs_db`` (block map of the inode, then the
blocks themselves). Nothing is mounted and nothing is written; NTFS and XFS tools take no
offset, so those partitions are first copied (sparsely) into a scratch file.
"""

from __future__ import annotations

import re
import shutil
import struct
import tempfile
from pathlib import Path
from types import TracebackType

from vmguard_lab.errors import LabError
from vmguard_lab.imaging import xfs
from vmguard_lab.imaging.fat import _env as _mtools_env
from vmguard_lab.imaging.sparse import copy_range
from vmguard_lab.imaging.tools import run, run_capture

_IO_REPARSE_TAG_SYMLINK = 0xA000000C
# "ls -p" prints /ino/mode/uid/gid/name/size/ per entry; a name may hold a newline.
_DEBUGFS_ENTRY = re.compile(rb"^/(\d+)/(\d+)/\d+/\d+/(.*?)/\d*/$", re.M | re.S)


class FsReader:
    """Read-only access to one filesystem at ``[offset, offset + length)`` of ``image``."""

    def __init__(self, image: Path, offset: int, length: int, fs: str) -> None:
        self.image, self.offset, self.length, self.fs = image, offset, length, fs
        self._scratch: Path | None = None
        self._xfs_inodes: dict[str, int] | None = None

    def __enter__(self) -> FsReader:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch.parent, ignore_errors=True)
            self._scratch = None

    def _extracted(self) -> Path:
        if self._scratch is None:
            d = Path(tempfile.mkdtemp(prefix="vmguard-probe-"))
            self._scratch = d / "fs.img"
            with open(self._scratch, "wb") as f:
                f.truncate(self.length)
            copy_range(
                self.image,
                self._scratch,
                0,
                src_offset=self.offset,
                length=self.length,
                skip_zero_blocks=False,
            )
        return self._scratch

    # -- files -----------------------------------------------------------------------

    def read(self, path: str) -> bytes:
        """Content of the regular file at ``path`` (relative, ``/``-separated)."""
        if self.fs == "ext4":
            return self._debugfs(f"cat {self._ext4_ref(path)}")
        if self.fs == "ntfs":
            return run(["ntfscat", self._extracted(), "/" + path])
        if self.fs == "fat":
            with tempfile.TemporaryDirectory(prefix="vmguard-probe-") as d:
                out = Path(d) / "out"
                dev = f"{self.image}@@{self.offset}"
                # mtools expands * ? [ ] in source names; a backslash quotes them.
                quoted = re.sub(r"([*?\[\]])", r"\\\1", path)
                run(["mcopy", "-n", "-i", dev, f"::/{quoted}", out], env=_mtools_env(0))
                return out.read_bytes()
        if self.fs == "xfs":
            return self._xfs_read(path)
        raise LabError(f"no reader for filesystem {self.fs!r}")

    def readlink(self, path: str) -> str:
        """Target of the symlink at ``path``."""
        if self.fs == "ext4":
            ref = self._ext4_ref(path)
            stat = self._debugfs(f"stat {ref}").decode()
            m = re.search(r'Fast link dest: "(.*)"', stat, re.S)
            if m:
                return m.group(1)
            return self._debugfs(f"cat {ref}").decode()
        if self.fs == "xfs":
            ino = self._xfs_inode(path)
            text = run(
                ["xfs_db", "-r", "-f", "-c", f"inode {ino}", "-c", "print", self._extracted()]
            )
            link = re.search(rb'symlink = "(.*)"', text)
            if link:
                return link.group(1).decode()
            return self._xfs_read(path).decode()
        if self.fs == "ntfs":
            # The $REPARSE_POINT attribute (0xC0) of a Windows symlink: tag, lengths, flags,
            # then substitute and print names in UTF-16.
            rp = run(["ntfscat", "-a", "0xc0", self._extracted(), "/" + path])
            tag, _, _, sub_off, sub_len = struct.unpack_from("<IHHHH", rp)
            if tag != _IO_REPARSE_TAG_SYMLINK:
                raise LabError(f"{path!r} is no symlink (reparse tag {tag:#x})")
            name = rp[20 + sub_off : 20 + sub_off + sub_len].decode("utf-16-le")
            return name.replace("\\", "/")
        raise LabError(f"{self.fs} has no symlinks")

    # -- ext4 ------------------------------------------------------------------------

    def _ext4_dev(self) -> str:
        return f"{self.image}?offset={self.offset}"

    def _debugfs(self, request: str) -> bytes:
        out, err = run_capture(["debugfs", "-R", request, self._ext4_dev()])
        # debugfs exits 0 even when the request fails; only its banner is no error.
        problems = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
        problems = [ln for ln in problems if not ln.startswith("debugfs ")]
        if problems:
            raise LabError(f"debugfs {request!r}: {problems[0]}")
        return out

    def _ext4_ref(self, path: str) -> str:
        if '"' not in path:
            return f'"/{path}"'
        # debugfs cannot quote a double quote: walk the directories by inode instead.
        ino = 2
        for name in path.split("/"):
            listing = self._debugfs(f"ls -p <{ino}>")
            found = [m for m in _DEBUGFS_ENTRY.finditer(listing) if m.group(3) == name.encode()]
            if not found:
                raise LabError(f"ext4 has no {path!r}")
            ino = int(found[0].group(1))
        return f"<{ino}>"

    # -- xfs -------------------------------------------------------------------------

    def _xfs_inode(self, path: str) -> int:
        if self._xfs_inodes is None:
            self._xfs_inodes = xfs.inode_paths(self._extracted())
        try:
            return self._xfs_inodes[path]
        except KeyError:
            raise LabError(f"xfs has no {path!r}") from None

    def _xfs_read(self, path: str) -> bytes:
        dev = self._extracted()
        ino = self._xfs_inode(path)
        sb = run(["xfs_db", "-r", "-f", "-c", "sb 0", "-c", "print blocksize agblocks", dev])
        bs, agblocks = (int(v) for v in re.findall(rb"=\s*(\d+)", sb))
        out = run(
            ["xfs_db", "-r", "-f", "-c", f"inode {ino}", "-c", "print core.size", "-c", "bmap", dev]
        )
        size = int(re.search(rb"core.size = (\d+)", out).group(1))  # type: ignore[union-attr]
        data = bytearray(size)
        pattern = rb"data offset (\d+) startblock \d+ \((\d+)/(\d+)\) count (\d+) flag (\d)"
        with open(dev, "rb") as f:
            for m in re.finditer(pattern, out):
                off, agno, agbno, count, flag = (int(g) for g in m.groups())
                if flag:  # unwritten extent: reads as zeros
                    continue
                f.seek((agno * agblocks + agbno) * bs)
                chunk = f.read(count * bs)
                data[off * bs : off * bs + len(chunk)] = chunk
        return bytes(data[:size])
