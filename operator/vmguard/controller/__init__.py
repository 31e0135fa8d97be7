"""Kubernetes control plane (kopf). Never touches disk data.

One package per kind, each with its kopf handlers in ``handlers.py``: ``vcenter``
(sweeps, VM lists, orphan snapshots), ``policy`` (schedules, fail-safe, retention),
``backup`` (one VMGuardBackup's phases), ``restore`` (one VMGuardRestore's phases) and
``repository`` (reachability, GC, verify, catalog sync). Kinds never import each other:
what more than one uses lives in ``kube`` (API access, connections from Secrets, proxy
Job pieces, conditions, the clock, cron, the latest sweeps), which imports no kind.
``main.py`` wires them: it imports every kind's handlers and fills kopf's memo.
"""
