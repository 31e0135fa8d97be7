"""One vSphere VM's use cases: back up, restore, and the access to its disks they share.

- :mod:`.cycle`: the control-plane halves of a backup, *prepare* (mode decision from the
  repository, CBT, snapshot, guest hooks) and *finish* (snapshot removal) — the operator
  runs them around a proxy Job, ``vmguard vm backup`` in one process;
- :mod:`.backup`: the transfer of a snapshot into an archive, and the whole backup in
  one process (:func:`~.backup.backup_vm`);
- :mod:`.restore`: an archive back to vSphere: a new VM, in place, or one disk;
- :mod:`.access`: how disks are reached (NBD through nbdkit, hot-add) and the choice.

``vsphere`` (snapshots, CBT chain, config, restore targets, hot-add) and ``transport``
(NBD, devices) may not import each other; this package joins them, with the store, for
one VM at a time. The chunks themselves are moved by :mod:`vmguard.engine`. Callers:
the CLI (``vmguard vm``), the proxy Job (:mod:`vmguard.proxy`) and, for :mod:`.cycle`
only, the controller (which must never import the engine, transport or files: an
import-linter contract, so :mod:`.cycle` imports none of them).
"""
