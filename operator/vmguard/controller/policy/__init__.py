"""The VMProtectionPolicy kind: its judgement and status, its runs, the fail-safe, retention.

:mod:`.judgement` (is the policy fit to act; conditions and status), :mod:`.runs` (the
scheduler: one VMGuardBackup per VM at each scheduled time), :mod:`.failsafe` (a VM never
backed up gets one after a sweep), :mod:`.retention` (which archives a policy keeps),
:mod:`.builders` (the VMGuardBackup objects a policy creates, pure), :mod:`.history` (a
policy's backups as the rules read them), :mod:`.handlers`.
"""
