"""Process-wide settings, loaded once from the environment into one typed object.

Nothing here is mutable after load; callers receive the settings object explicitly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


@dataclass(frozen=True)
class Settings:
    """Settings shared by the CLI, the operator and the proxy."""

    cache_dir: Path
    log_level: str

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            cache_dir=Path(os.environ.get("VMGUARD_CACHE_DIR") or _cache_home() / "vmguard"),
            log_level=os.environ.get("VMGUARD_LOG_LEVEL", "INFO"),
        )
