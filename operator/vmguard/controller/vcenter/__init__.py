"""The VCenter kind: sweep the inventory, give every VM its policy, find our escaped snapshots.

:mod:`.sweeper` (one sweep and its status), :mod:`.vmlist` (the compact per-VM list in
status, read by ``vmguard coverage`` too), :mod:`.orphans` (snapshots of ours that a
backup left behind), :mod:`.handlers` (the sweeper daemon).
"""
