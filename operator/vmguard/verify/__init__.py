"""Verifying restore points: file-system checks and malware scans of an archived point.

:func:`vmguard.verify.runner.verify_point` runs the checks of one point and returns
structured results (:mod:`vmguard.verify.results`); ``vmguard verify`` and the
operator's verification Jobs share it. ``docs/verification.md`` describes the checks.
"""
