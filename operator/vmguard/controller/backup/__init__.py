"""The VMGuardBackup kind: one backup from Pending to Completed or Failed.

:mod:`.reconcile` (the state machine), :mod:`.steps` (refs, concurrency limits, guest
hooks, the snapshot cycle's blocking calls), :mod:`.builders` (the proxy Job of one
transfer attempt, pure), :mod:`.handlers` (the indexes and tasks of backups in flight
and of running verifications, the expiry loop, the phase and delete handlers).
"""
