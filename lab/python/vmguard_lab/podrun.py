"""Exec shim for one lab container, run by the node agent inside ``unshare --mount``.

Lab only. The node agent starts ``unshare --mount --propagation private -- python -m
vmguard_lab.podrun SPEC.json``; this module, already in the pod's private mount
namespace, bind-mounts each prepared volume directory at its ``mountPath`` (read-only
where the pod asks), then replaces itself with the container's command. Mounts made
here are invisible to the host and vanish with the process.

A mount point that does not exist on the host is created as an empty directory
(directories are not namespaced); nothing else on the host is touched. A mount that
would hide what the pod itself needs (its interpreter, PYTHONPATH, working directory or
another volume — e.g. an emptyDir at ``/tmp`` when the repository lives under ``/tmp``)
is skipped with a note on stderr: the pod then uses the host's directory there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _mount(source: str, target: str, read_only: bool) -> None:
    if Path(source).is_dir():
        Path(target).mkdir(parents=True, exist_ok=True)
    else:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).touch(exist_ok=True)
    subprocess.run(["mount", "--bind", source, target], check=True)
    if read_only:
        subprocess.run(["mount", "-o", "remount,bind,ro", target], check=True)


def _hides(target: str, paths: list[str]) -> str:
    """The first of ``paths`` a mount at ``target`` would hide (this is no container: the
    pod sees the host's file system, the lab's own files included), or ""."""
    top = os.path.realpath(target)
    for path in paths:
        real = os.path.realpath(path)
        if real == top or real.startswith(top.rstrip("/") + "/"):
            return path
    return ""


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    env_paths = spec["env"].get("PYTHONPATH", "").split(os.pathsep)
    needed = [m["source"] for m in spec["mounts"]] + [spec["cwd"], spec["argv"][0], sys.executable]
    needed += [p for p in env_paths if p]
    for m in spec["mounts"]:
        hidden = _hides(m["target"], needed)
        if hidden:
            # e.g. an emptyDir at /tmp while the repository lives under /tmp: mounting it
            # would hide the interpreter or the pod's own files. The pod uses the host's.
            print(f"lab node agent: not mounting {m['target']}: it would hide {hidden}",
                  file=sys.stderr)  # fmt: skip
            continue
        _mount(m["source"], m["target"], m["readOnly"])
    os.chdir(spec["cwd"])
    args: list[str] = spec["argv"]
    env: dict[str, str] = spec["env"]
    try:
        os.execvpe(args[0], args, env)
    except OSError as exc:
        print(f"lab node agent: cannot run {args[0]!r}: {exc}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv))
