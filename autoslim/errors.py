"""Errors that autoslim turns into a one-line message and exit status 2."""

from __future__ import annotations


class AutoslimError(Exception):
    """A user-facing problem: bad input, an unknown name, an impossible request.

    The CLI prints ``error: <message>`` and exits with status 2; no traceback.
    """


class TrialFailed(AutoslimError):
    """A trial that cannot produce valid objectives (NaN loss, crash, OOM).

    The study records it as failed with this message and goes on.
    """
