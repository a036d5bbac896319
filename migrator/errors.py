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


class RestoreFailed(MigratorError):
    """The original config was written back, but the registry was not proven to take writes again."""

    exit_code = EXIT_DIFFERENCES


class DeleteFailed(MigratorError):
    """DeleteObjects answered with per-key errors (Object Lock, a policy denying one key, ...)."""

    exit_code = EXIT_DIFFERENCES

    def __init__(self, bucket: str, errors: list):
        self.keys = [error.get("Key") for error in errors]
        named = "; ".join(f"{error.get('Key')} ({error.get('Code')}: {error.get('Message')})" for error in errors[:5])
        more = f" and {len(errors) - 5} more" if len(errors) > 5 else ""
        super().__init__(
            f"bucket {bucket!r} refused to delete {len(errors)} keys: {named}{more}. Object Lock retention, a legal "
            "hold or a policy denying s3:DeleteObject protects them: lift that (or remove them by hand), then re-run"
        )
