"""Where the lab keeps its sources, build cache and runtime state.

Three places, kept apart on purpose:

- the *repository* holds the Go sources of lab components (``lab/<component>/``);
- the *build cache* (``$VMGUARD_CACHE_DIR/lab-v<N>``, default ``~/.cache/vmguard``) holds
  binaries built from those sources; its name carries a version so that an
  incompatible change of the build recipe never reuses an old cache;
- the *lab directory* (``$VMGUARD_LAB_DIR``, default ``<repo>/.lab``) holds the
  runtime state of one running lab: certificates, data directories, logs, pid files.
  ``vmguard-lab down`` stops its processes but keeps the directory for inspection.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vmguard.config import Settings
from vmguard_lab.errors import LabError

# Bump when the way lab components are built changes incompatibly.
CACHE_VERSION = 1


def repo_root() -> Path:
    """The source checkout the lab builds from (the lab is a development tool)."""
    env = os.environ.get("VMGUARD_REPO")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "lab").is_dir():
            return parent
    raise LabError("cannot find the vmguard source checkout; set VMGUARD_REPO")


@dataclass(frozen=True)
class LabPaths:
    repo: Path
    cache: Path
    lab: Path

    @classmethod
    def default(cls) -> LabPaths:
        repo = repo_root()
        settings = Settings.from_env()
        lab = Path(os.environ.get("VMGUARD_LAB_DIR") or repo / ".lab")
        return cls(repo=repo, cache=settings.cache_dir / f"lab-v{CACHE_VERSION}", lab=lab.resolve())

    @property
    def bin(self) -> Path:
        return self.cache / "bin"

    @property
    def run(self) -> Path:
        return self.lab / "run"

    @property
    def logs(self) -> Path:
        return self.lab / "logs"

    @property
    def pki(self) -> Path:
        return self.lab / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.lab / "kubeconfig"

    @property
    def state_file(self) -> Path:
        """Endpoints and credentials file of the running lab (mode 0600)."""
        return self.lab / "lab.json"

    def ensure(self) -> None:
        for d in (self.bin, self.run, self.logs, self.pki):
            d.mkdir(parents=True, exist_ok=True)
        self.lab.chmod(0o700)
