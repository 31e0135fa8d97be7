"""vmguard: declarative protection of VMware vSphere VMs, run as a Kubernetes operator.

The package is layered (top to bottom): ``cli``; ``controller`` and ``proxy``; ``vm``;
``engine`` and ``files``; ``vsphere`` and ``transport``; ``store``; ``config``,
``errors``, ``crds``, ``metrics`` and ``hooks``. A layer imports only from the layers
below it; the import-linter contracts in ``pyproject.toml`` enforce it, and
``docs/architecture.md`` is the map. The lab (``vmguard_lab``, lab/python) is a separate
distribution this package never imports.
"""

__version__ = "0.1.0"
