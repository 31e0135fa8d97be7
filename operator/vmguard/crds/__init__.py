"""vmguard's CustomResourceDefinitions, written once as Python data.

This package is the single source of truth for the schemas of the six kinds of
``vmguard.io/v1alpha1`` (their group, version and phases are :mod:`vmguard.api`'s);
``crds/*.yaml`` in the repository are generated from it by ``python -m vmguard.crds``
(or ``vmguard crds --write crds``) and a unit test fails when the two differ. Depends
on the standard library and :mod:`vmguard.api` only (PyYAML for rendering), so any
layer of vmguard above the API may import the kinds from here.

- :mod:`.schema` — builders for OpenAPI schemas and CEL rules;
- :mod:`.fields` — field types shared by the kinds (refs, durations, cron, globs);
- :mod:`.definition` — :class:`~.definition.Kind` and the CRD document around it;
- one module per kind; :mod:`.render` writes the YAML.
"""

from __future__ import annotations

from vmguard.crds import backup, policy, protectedvm, repository, restore, vcenter
from vmguard.crds.definition import Kind

KINDS: tuple[Kind, ...] = (
    vcenter.KIND,
    repository.KIND,
    policy.KIND,
    backup.KIND,
    protectedvm.KIND,
    restore.KIND,
)
"""The kinds in dependency order: a kind only references kinds listed before it."""

__all__ = ["KINDS", "Kind"]
