"""tests/distribute.py: in a distributed run (``pytest -n 2``, as ``make test`` runs), the
tests that read the whole session start only after every other test has finished, all on
one worker; a module's tests stay on one worker.

A small suite of its own is run by a pytest subprocess with the suite's hooks: each test
appends its id and worker to a log as its last act, and the held tests assert on that log
what they would read (every other test done, the other held test on the same worker).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]

CONFTEST = """
import os
import pytest
from tests import distribute
from tests.distribute import pytest_xdist_make_scheduler  # noqa: F401

def pytest_collection_modifyitems(config, items):
    distribute.order(config, items)

@pytest.fixture
def record(request):
    def done():
        with open(os.environ["DIST_LOG"], "a") as f:
            f.write(f"{request.node.nodeid} {os.environ.get('PYTEST_XDIST_WORKER')}\\n")
    return done
"""

PLAIN = """
import pytest

@pytest.mark.parametrize("n", range({count}))
def test_plain(n, record):
    sum(range(20000 * (n + 1)))  # some work, so that the workers overlap
    record()
"""

HELD = """
import os
import pytest

pytestmark = pytest.mark.after_all
PLAIN = {plain}

def _log():
    with open(os.environ["DIST_LOG"]) as f:
        return [line.split() for line in f.read().splitlines()]

def test_reads_the_session_first(record):
    done = [nodeid for nodeid, _ in _log() if "test_plain" in nodeid]
    assert len(done) == PLAIN, done
    record()

def test_reads_the_session_second(record):
    log = _log()
    first = [w for nodeid, w in log if "first" in nodeid]
    assert first == [os.environ["PYTEST_XDIST_WORKER"]], log
    record()
"""


def test_held_tests_run_last_on_one_worker_after_every_other_test(tmp_path: Path) -> None:
    files = {"test_a.py": 12, "test_b.py": 12, "test_c.py": 12}
    for name, count in files.items():
        (tmp_path / name).write_text(PLAIN.format(count=count))
    (tmp_path / "test_held.py").write_text(HELD.format(plain=sum(files.values())))
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    after_all: last\n")
    log = tmp_path / "dist.log"
    env = {**os.environ, "DIST_LOG": str(log), "PYTHONPATH": str(REPO)}
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_XDIST_WORKER_COUNT", None)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider", "-q",
         "--basetemp", str(tmp_path / "base")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "38 passed" in run.stdout, run.stdout
    lines = [line.split() for line in log.read_text().splitlines()]
    workers = {w for _, w in lines}
    assert workers == {"gw0", "gw1"}, lines  # the run was really shared out
    # A file's tests on one worker each.
    for name in files:
        assert len({w for nodeid, w in lines if nodeid.startswith(name)}) == 1, name
    assert [nodeid.split("::")[1] for nodeid, _ in lines[-2:]] == [
        "test_reads_the_session_first",
        "test_reads_the_session_second",
    ]
