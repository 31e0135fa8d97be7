"""The one exception hierarchy of vmguard.

Every error we raise on purpose derives from :class:`VmguardError`. The split that
matters to callers is *retryable* (a peer is down or slow: try again later) versus
*permanent* (the input is wrong: say so and wait for a new input). The operator maps
the first to ``kopf.TemporaryError`` and the second to ``kopf.PermanentError`` plus a
status condition; the CLI prints the message and exits non-zero.

Messages never contain secret values: they name the Secret, never its content.
"""

from __future__ import annotations


class VmguardError(Exception):
    """Base of every error vmguard raises on purpose."""

    retryable: bool = False


class RetryableError(VmguardError):
    """A peer (vCenter, S3, the apiserver) failed in a way that may pass."""

    retryable = True


class PermanentError(VmguardError):
    """The request cannot succeed as given; retrying changes nothing."""


class ConfigError(PermanentError):
    """Configuration or input is invalid."""


class LabError(VmguardError):
    """The local lab could not be built, started or stopped."""
