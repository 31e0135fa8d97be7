"""The VMGuardRepository kind: the repository's health, GC and verify, and catalog sync.

:mod:`.watch` (reachability, creation from the spec, stats, scheduled GC and verify),
:mod:`.catalog` (the namespace's VMGuardBackups agree with the repository's archives),
:mod:`.handlers` (a daemon for each).
"""
