"""Run ``vmguard`` as a separate process against a repository, as a user (or a proxy) would."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Cli:
    """The CLI pointed at one repository; S3 credentials travel in the environment only."""

    repo: str
    env: dict[str, str] = field(default_factory=dict)
    key_file: Path | None = None

    @classmethod
    def for_bucket(cls, info: dict[str, Any], prefix: str, key_file: Path | None) -> Cli:
        env = {
            "VMGUARD_S3_ACCESS_KEY": info["access_key"],
            "VMGUARD_S3_SECRET_KEY": info["secret_key"],
        }
        return cls(f"s3+http://{info['endpoint']}/{info['bucket']}/{prefix}", env, key_file)

    def argv(self, *args: str) -> list[str]:
        argv = [sys.executable, "-m", "vmguard.cli", *args, "--repo", self.repo]
        if self.key_file is not None:
            argv += ["--key-file", str(self.key_file)]
        return argv

    def environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VMGUARD_S3", "AWS_"))}
        env.update(self.env)
        env.pop("VMGUARD_KEY", None)
        return env

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.argv(*args), env=self.environ(), capture_output=True, text=True, timeout=300
        )
        if check and done.returncode != 0:
            raise AssertionError(f"vmguard {' '.join(args)} failed: {done.stderr[-2000:]}")
        return done

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            env=self.environ(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
