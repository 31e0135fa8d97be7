"""docs/architecture.md names every package under operator/vmguard/, and only those.

The map is the first thing a newcomer reads; a package added, moved or removed without
the map following would make it lie. The check reads the "Packages" table (first column)
and compares it with the directories that hold an ``__init__.py`` and the top-level
modules (``config.py``, ``errors.py``, ``metrics.py``), which are layers of their own.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "operator" / "vmguard"
MAP = REPO / "docs" / "architecture.md"


def named_in_map() -> list[str]:
    """Names in the first column of the table under '## Packages'."""
    text = MAP.read_text()
    section = text.split("## Packages", 1)[1].split("\n## ", 1)[0]
    names = []
    for line in section.splitlines():
        found = re.match(r"\|\s*`(vmguard(?:\.\w+)+)`\s*\|", line)
        if found:
            names.append(found.group(1))
    return names


def in_tree() -> set[str]:
    packages = {
        "vmguard." + ".".join(init.parent.relative_to(PACKAGE).parts)
        for init in PACKAGE.rglob("__init__.py")
        if init.parent != PACKAGE and "__pycache__" not in init.parts
    }
    modules = {
        f"vmguard.{path.stem}" for path in PACKAGE.glob("*.py") if path.name != "__init__.py"
    }
    return packages | modules


def test_the_map_names_every_package_and_nothing_else() -> None:
    named = named_in_map()
    assert len(named) == len(set(named)), f"named twice: {sorted(named)}"
    tree = in_tree()
    assert "vmguard.store" in tree and "vmguard.config" in tree  # the walk did find them
    missing = sorted(tree - set(named))
    stale = sorted(set(named) - tree)
    assert not missing, f"docs/architecture.md does not name: {missing}"
    assert not stale, f"docs/architecture.md names what does not exist: {stale}"


def test_the_operator_registers_every_kind_package_handlers() -> None:
    """A kind's package under ``controller/`` exposes its kopf handlers in ``handlers.py``;
    they are registered only when ``controller/main.py`` imports them, so a kind whose
    handlers ``main`` forgot would never run. ``kube`` is the shared layer, not a kind."""
    from vmguard.controller import main

    controller = PACKAGE / "controller"
    kinds = {
        init.parent.name for init in controller.glob("*/__init__.py") if init.parent.name != "kube"
    }
    assert {"backup", "policy", "repository", "restore", "vcenter"} <= kinds
    with_handlers = {kind for kind in kinds if (controller / kind / "handlers.py").exists()}
    assert with_handlers == kinds, f"kinds without handlers.py: {sorted(kinds - with_handlers)}"
    wired = {module.__name__ for module in main.KINDS}
    assert wired == {f"vmguard.controller.{kind}.handlers" for kind in kinds}
