"""vmguard: declarative protection of VMware vSphere VMs, run as a Kubernetes operator.

The package is layered (top to bottom): ``cli`` and ``lab``; ``controller`` and
``datamover``; ``vsphere``, ``transport`` and ``files``; ``store``; ``config``,
``errors`` and ``metrics``. A layer imports only from the layers below it; the
import-linter contracts in ``pyproject.toml`` enforce it.
"""

__version__ = "0.1.0"
