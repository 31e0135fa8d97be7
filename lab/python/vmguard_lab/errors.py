"""The lab's own error: a failure to build, start or stop the lab, or to make an image.

A :class:`~vmguard.errors.VmguardError`, so ``vmguard-lab`` reports it as a message and
a non-zero exit code, as ``vmguard`` does with the product's errors.
"""

from __future__ import annotations

from vmguard.errors import VmguardError


class LabError(VmguardError):
    """The local lab could not be built, started or stopped."""
