"""The data mover's acceptance on the lab's MinIO, driven through the ``vmguard`` CLI.

Crash safety (SIGKILL at random points), corruption (flip, truncate, delete), encryption
(no plaintext window in any object; wrong key; rotation) and Object Lock (prune
reports what it may not delete and deletes nothing locked). Each test checks the
invariants of BRIEF §9 that apply: completed archives restore bit-exact, deep verify
is clean, and no secret appears in any output.

The random kills are a seeded schedule: ``pytest`` makes :data:`KILLS` of them,
``pytest --soak`` (``make soak``) :data:`SOAK_KILLS`.
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.engine.cli import Cli
from tests.engine.helpers import random_disk, sha256_file

pytestmark = pytest.mark.lab
CHUNK = 64 * 1024
KILLS = 6
"""Random kills in every test run (the first ones of the seeded schedule)."""
SOAK_KILLS = 20
"""Random kills with ``--soak``."""


def _init(cli: Cli, *extra: str) -> None:
    cli.run("repo", "init", "--chunk-size", str(CHUNK), *extra)


def _archives(cli: Cli) -> list[dict[str, Any]]:
    return list(json.loads(cli.run("repo", "ls", "--json").stdout)["archives"])


def _restore_sha(cli: Cli, archive: str, target: Path) -> str:
    cli.run("disk", "restore", archive, str(target), "--disk", "0", "--overwrite", "--quiet")
    return sha256_file(target)


def _secrets_absent(info: dict[str, Any], *outputs: str) -> None:
    for text in outputs:
        assert info["secret_key"] not in text


def _image(path: Path, seed: int, chunks: int) -> Path:
    random_disk(path, random.Random(seed), chunks * CHUNK + 4321)
    return path


def _chunk_objects(client: Any, bucket: str, prefix: str) -> int:
    return sum(1 for _ in client.list_objects(bucket, prefix=f"{prefix}/chunks/", recursive=True))


def test_backup_killed_at_random_points_leaves_nothing_or_a_whole_archive(
    s3_bucket: dict[str, Any], minio_client: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    wanted = SOAK_KILLS if request.config.getoption("soak") else KILLS
    cli = Cli.for_bucket(s3_bucket, "crash", None)
    _init(cli)
    image = _image(tmp_path / "disk.img", 11, 320)
    digest = sha256_file(image)
    backup = ("disk", "backup", str(image), "--vm", "vm-crash", "--quiet", "--workers", "3")
    started = time.monotonic()
    cli.run(*backup)  # a complete first run tells how long a run takes
    duration = time.monotonic() - started
    [first] = _archives(cli)
    rng = random.Random(2024)
    kills = attempts = 0
    while kills < wanted and attempts < 100:
        attempts += 1
        # Alternate full runs of a changed disk (uploads) with re-runs (mostly dedup).
        if attempts % 2:
            _image(image, 100 + attempts, 320)
        before = {a["archive_id"] for a in _archives(cli)}
        proc = cli.start(*backup, "--parent", "latest")
        time.sleep(rng.uniform(0.3, duration * 1.1))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        after = {a["archive_id"]: a for a in _archives(cli)}
        fresh = set(after) - before
        assert len(fresh) <= 1
        if proc.returncode == -signal.SIGKILL:
            kills += 1
        for archive in fresh:  # a visible archive is a whole one
            assert _restore_sha(cli, archive, tmp_path / "check.img") == sha256_file(image)
    assert kills >= wanted
    verify = cli.run("repo", "verify", "--deep", "--json")
    assert json.loads(verify.stdout)["ok"]
    # One more run of a changed disk, killed as soon as it has uploaded something (a
    # random kill may land before the first upload, leaving nothing to re-use). A run
    # can finish between the poll that sees its first upload and the kill; then the
    # disk changes again and the next run is killed instead (bounded).
    for attempt in range(5):
        _image(image, 999 + attempt, 320)
        stored = _chunk_objects(minio_client, s3_bucket["bucket"], "crash")
        proc = cli.start(*backup, "--parent", "latest")
        deadline = time.monotonic() + 120
        while _chunk_objects(minio_client, s3_bucket["bucket"], "crash") == stored:
            if proc.poll() is not None:
                break
            assert time.monotonic() < deadline, "the run uploaded nothing in 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        if proc.returncode == -signal.SIGKILL:
            break
        assert proc.returncode == 0
    assert proc.returncode == -signal.SIGKILL, "five runs all finished before they were killed"
    # Re-running after the last kill succeeds and re-uses what the killed runs uploaded:
    # every chunk it did not upload was already there, and it uploaded none twice.
    stored_before = _chunk_objects(minio_client, s3_bucket["bucket"], "crash")
    done = cli.run(*backup, "--json", "--parent", "latest")
    manifest = json.loads(done.stdout)
    disk = manifest["disks"][0]["stats"]
    assert disk["chunks_reused"] > 0
    assert _chunk_objects(minio_client, s3_bucket["bucket"], "crash") == (
        stored_before + disk["chunks_new"]
    )
    assert _restore_sha(cli, manifest["archive_id"], tmp_path / "final.img") == sha256_file(image)
    assert _restore_sha(cli, first["archive_id"], tmp_path / "first.img") == digest


def test_corruption_is_named_restores_fail_loudly_and_the_next_backup_repairs(
    s3_bucket: dict[str, Any], minio_client: Any, tmp_path: Path
) -> None:
    cli = Cli.for_bucket(s3_bucket, "corrupt", None)
    _init(cli)
    image = _image(tmp_path / "disk.img", 21, 24)
    digest = sha256_file(image)
    backup = ("disk", "backup", str(image), "--vm", "vm-c", "--quiet")
    cli.run(*backup)
    cli.run(*backup, "--parent", "latest")
    archives = sorted(a["archive_id"] for a in _archives(cli))
    bucket = s3_bucket["bucket"]
    chunks = sorted(
        o.object_name
        for o in minio_client.list_objects(bucket, prefix="corrupt/chunks/", recursive=True)
    )
    flipped, truncated, deleted = chunks[0], chunks[1], chunks[2]
    blob = bytearray(minio_client.get_object(bucket, flipped).read())
    blob[len(blob) // 2] ^= 0x01
    _put(minio_client, bucket, flipped, bytes(blob))
    blob = minio_client.get_object(bucket, truncated).read()
    _put(minio_client, bucket, truncated, blob[: len(blob) // 2])
    minio_client.remove_object(bucket, deleted)

    verify = cli.run("repo", "verify", "--deep", "--json", check=False)
    assert verify.returncode == 1
    problems = {p["chunk_id"]: p for p in json.loads(verify.stdout)["chunk_problems"]}
    for name in (flipped, truncated, deleted):
        assert sorted(problems[name.rsplit("/", 1)[1]]["archives"]) == archives
    text = cli.run("repo", "verify", "--deep", check=False).stdout
    assert all(name.rsplit("/", 1)[1] in text for name in (flipped, truncated, deleted))

    target = tmp_path / "restored.img"
    failed = cli.run("disk", "restore", archives[0], str(target), "--quiet", check=False)
    assert failed.returncode == 1 and "incomplete" in failed.stderr
    assert any(name.rsplit("/", 1)[1] in failed.stderr for name in (flipped, truncated, deleted))
    original, partial = image.read_bytes(), target.read_bytes()
    # Whatever was written is right; the rest reads as zeros, never wrong bytes.
    for at in range(0, len(original), CHUNK):
        got = partial[at : at + CHUNK]
        assert got in (original[at : at + CHUNK], bytes(len(got)))

    cli.run(*backup, "--parent", "latest")  # full-scan: re-uploads the damaged chunks
    assert json.loads(cli.run("repo", "verify", "--deep", "--json").stdout)["ok"]
    for archive in archives:
        assert _restore_sha(cli, archive, tmp_path / "again.img") == digest


def _put(client: Any, bucket: str, name: str, data: bytes) -> None:
    import io

    client.put_object(bucket, name, io.BytesIO(data), len(data))


def test_encrypted_repository_leaks_no_plaintext_and_survives_key_rotation(
    s3_bucket: dict[str, Any], minio_client: Any, tmp_path: Path
) -> None:
    key = tmp_path / "master.key"
    cli = Cli.for_bucket(s3_bucket, "enc", key)
    created = cli.run("repo", "init", "--chunk-size", str(CHUNK), "--encrypt")
    assert key.stat().st_mode & 0o077 == 0
    image = _image(tmp_path / "disk.img", 31, 16)
    first_digest = sha256_file(image)
    out = cli.run("disk", "backup", str(image), "--vm", "secret-vm", "--vm-name", "Payroll DB")
    first = out.stdout.strip()

    data = image.read_bytes()
    windows = {
        data[i : i + 32] for i in range(0, len(data) - 32, 32) if data[i : i + 32].strip(b"\0")
    }
    objects = list(minio_client.list_objects(s3_bucket["bucket"], recursive=True))
    assert len(objects) > 10
    for obj in objects:
        blob = minio_client.get_object(s3_bucket["bucket"], obj.object_name).read()
        # Any 64-byte plaintext window contains a 32-byte block aligned in the disk.
        assert not any(blob[i : i + 32] in windows for i in range(len(blob) - 31)), obj.object_name
        assert b"Payroll" not in blob

    wrong = tmp_path / "wrong.key"
    wrong.write_text("not the key at all, sorry")
    denied = Cli(cli.repo, cli.env, wrong).run("repo", "ls", check=False)
    assert denied.returncode == 1 and "master key does not open" in denied.stderr

    new_key = tmp_path / "new.key"
    cli.run("repo", "rotate-key", "--new-key-file", str(new_key))
    rotated = Cli(cli.repo, cli.env, new_key)
    _image(image, 32, 16)
    second = rotated.run("disk", "backup", str(image), "--vm", "secret-vm", "--parent", "latest")
    assert _restore_sha(rotated, first, tmp_path / "a.img") == first_digest
    assert _restore_sha(rotated, second.stdout.strip(), tmp_path / "b.img") == sha256_file(image)
    assert cli.run("repo", "ls", check=False).returncode == 1  # the old key is retired
    _secrets_absent(s3_bucket, created.stdout, created.stderr, out.stdout, out.stderr)


def test_prune_on_object_lock_reports_locked_archives_and_deletes_nothing(
    s3_lock_bucket: dict[str, Any], tmp_path: Path
) -> None:
    cli = Cli.for_bucket(s3_lock_bucket, "locked", None)
    _init(cli, "--lock-days", "1")
    digests = {}
    image = tmp_path / "disk.img"
    for seed in range(3):
        _image(image, 40 + seed, 6)
        archive = cli.run("disk", "backup", str(image), "--vm", "vm-l", "--quiet").stdout.strip()
        digests[archive] = sha256_file(image)
    for _ in range(2):  # a second prune says the same once more; no error, no loop
        done = cli.run("repo", "prune", "--keep-last", "1", "--json")
        report = json.loads(done.stdout)
        assert report["pruned"] == [] and len(report["locked"]) == 2
        text = cli.run("repo", "prune", "--keep-last", "1").stdout
        assert text.count("Object Lock retains it until") == 2
    gc = json.loads(cli.run("repo", "gc", "--json").stdout)
    assert gc["deleted"] == 0
    assert {a["archive_id"] for a in _archives(cli)} == set(digests)
    for archive, digest in digests.items():
        assert _restore_sha(cli, archive, tmp_path / "r.img") == digest
