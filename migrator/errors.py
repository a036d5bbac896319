"""Errors an operator sees, each carrying the contract's exit code."""

from __future__ import annotations

import errno
import os
import ssl
from typing import Optional

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


class SourceChanged(MigratorError):
    """A large file's size or mtime changed while its parts were sent: its multipart upload was aborted, so the bucket
    holds no object stitched from two versions of it."""

    exit_code = EXIT_DIFFERENCES

    def __init__(self, key: str, change: str):
        super().__init__(
            f"{key}: the source file changed while its parts were sent ({change}); its multipart upload was aborted "
            "and nothing was stored under the key. Re-run the same command to copy it again (if it keeps changing, "
            "stop what writes it during the migration)")


def describe_unexpected(exc: BaseException) -> str:
    """One line for an error no code path expected: what failed (the file, key or URL it names) and whether a re-run
    can help, with what to fix when it cannot."""
    what = f"unexpected {type(exc).__name__}: {exc}"
    notes = "; ".join(getattr(exc, "__notes__", ()))
    if notes:
        what += f" ({notes})"
    cause = _root_cause(exc)
    fix = _fix_for(cause)
    if fix is None:
        return (f"{what} (details in the log file); re-run the same command to continue where it stopped "
                "(if the same error comes back, report it with the log file)")
    return f"{what} (details in the log file); re-running will not help: {fix}"


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost error: urllib wraps an SSL error in URLError.reason, Python chains the rest."""
    seen = {id(exc)}
    while True:
        inner = getattr(exc, "reason", None) if isinstance(getattr(exc, "reason", None), BaseException) else None
        inner = inner or exc.__cause__ or exc.__context__
        if inner is None or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def _fix_for(cause: BaseException) -> Optional[str]:
    """What the operator must fix, or None when a re-run can help (a timeout, a dropped connection, a bug)."""
    if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(cause):
        return ("the server's certificate is not trusted; point bucket.ca_bundle (or AWS_CA_BUNDLE) at the PEM of the "
                "CA that signed it, or add that CA to this host's trust store")
    if isinstance(cause, UnicodeError):
        name = getattr(cause, "object", None)
        return (f"the name {os.fsencode(name)!r} is not UTF-8: rename or remove that file" if isinstance(name, str)
                else "a name or text is not UTF-8: rename or remove the file it names")
    if isinstance(cause, PermissionError):
        return (f"{cause.filename!r} is not readable by this user: give the user running migrator read access "
                "(or run it as the registry's user)")
    if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left for {cause.filename!r}: free space on that file system, then re-run"
    if isinstance(cause, OSError) and cause.errno == errno.EROFS:
        return f"{cause.filename!r} is on a read-only file system: make it writable, then re-run"
    return None
