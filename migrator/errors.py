"""Errors an operator sees, each carrying the contract's exit code."""

EXIT_OK = 0
EXIT_DIFFERENCES = 1
EXIT_INVALID = 2
EXIT_REFUSED = 3


class MigratorError(Exception):
    """Base error: the message names the problem and the fix."""

    exit_code = EXIT_INVALID


class InvalidInput(MigratorError):
    """Bad plan, paths, credentials, bucket or registry: nothing was changed."""

    exit_code = EXIT_INVALID


class Refused(MigratorError):
    """Refused for safety (mass delete, lock held, ...)."""

    exit_code = EXIT_REFUSED


class StoppedSafely(MigratorError):
    """The run stopped without finishing; the registry is left serving from the filesystem."""

    exit_code = EXIT_DIFFERENCES
