"""The VMGuardRestore kind: one restore from Pending to Completed or Failed.

:mod:`.reconcile` (the state machine), :mod:`.targets` (checking and preparing the
target in vCenter before any byte moves), :mod:`.builders` (the restore's proxy Job,
pure), :mod:`.handlers` (the driver daemon).
"""
