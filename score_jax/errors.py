"""The family of "your input is wrong" errors: main.py prints any `UserError` as one line, exit code 2.

Each class also derives from the built-in exception a caller would expect (ValueError,
FileNotFoundError, ...), so `except ValueError` keeps working. Anything that is not a `UserError`
is a bug in score_jax and keeps its stack trace.
"""

from __future__ import annotations


class UserError(Exception):
    """Base of every error caused by the user's input (arguments, config, files, data)."""


class InvalidInputError(UserError, ValueError):
    """An argument or config value is unknown, out of range or of the wrong shape."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory the user named (or that a previous mode should have made) is absent."""


class NotWritableError(UserError, PermissionError):
    """A directory the run must write to cannot be written."""


class MissingDependencyError(UserError, ImportError):
    """An optional package needed by the requested feature is not installed."""


class SolverError(UserError, RuntimeError):
    """An ODE/SDE solve did not converge (tolerances too tight, or a diverging score)."""


class NonFiniteError(UserError, RuntimeError):
    """A loss, gradient or sample became NaN or infinite."""


class DatasetNotPreparedError(MissingFileError):
    """A data set is not on disk in a readable form; the message says how to prepare it."""
