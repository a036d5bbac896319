"""The seed procedure's optional first step: the registry's own garbage collection, without downtime for pulls.

``collect_garbage`` flips the registry read-only (the fast path on Omnibus: one restart), proves it (405), runs
``garbage-collect`` (``registry.binary``) on the config the registry runs with, and returns it to read-write,
proven by a write probe (202). What was eligible is listed by a ``--dry-run`` first (inside the same read-only
stretch, so nothing changes in between); what was removed is then checked on disk, not taken from the output.
Locked like ``run``; killed midway, the same command finishes the job; any failure puts the original config back.
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
from dataclasses import asdict, dataclass, field

from migrator.errors import InvalidInput, StoppedSafely
from migrator.layout import BLOBS
from migrator.migration.context import Context
from migrator.migration.safety import restore_original
from migrator.migration.window import readonly_on
from migrator.state import now

log = logging.getLogger("migrator")

_ELIGIBLE_BLOB = re.compile(r"blob eligible for deletion: sha256:([0-9a-f]{64})")
_ELIGIBLE_MANIFESTS = re.compile(r"(\d+) blobs and (\d+) manifests eligible for deletion")


@dataclass
class Collection:
    """What garbage collection freed (or, on a dry run, would free)."""

    dry_run: bool
    blobs: int = 0
    bytes: int = 0
    manifests: int = 0
    seconds: float = 0.0
    read_only_seconds: float = 0.0
    first_blobs: list = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def eligible(migration: Context, delete_untagged: bool) -> tuple[dict[str, int], int]:
    """``garbage-collect --dry-run``: {digest: bytes on disk} of the blobs it would remove, and the manifest count."""
    completed = run_collector(migration, delete_untagged, dry_run=True)
    blobs = {}
    for digest in dict.fromkeys(_ELIGIBLE_BLOB.findall(completed.stdout + completed.stderr)):
        data = migration.plan.source / BLOBS / digest[:2] / digest / "data"
        blobs[digest] = data.stat().st_size if data.is_file() else 0
    summary = _ELIGIBLE_MANIFESTS.search(completed.stdout + completed.stderr)
    return blobs, int(summary.group(2)) if summary else 0


def run_collector(migration: Context, delete_untagged: bool, dry_run: bool) -> subprocess.CompletedProcess:
    completed = migration.managed.garbage_collect(delete_untagged, dry_run)
    if completed.returncode != 0:
        raise InvalidInput(f"{migration.managed.binary()} garbage-collect{' --dry-run' if dry_run else ''} failed "
                           f"(exit {completed.returncode}): {completed.stderr.strip()[-500:]}")
    return completed


def would_free(migration: Context, delete_untagged: bool = False) -> Collection:
    """What ``gc`` would remove now; changes nothing (the collector's dry run only reads)."""
    started = time.monotonic()
    blobs, manifests = eligible(migration, delete_untagged)
    return Collection(dry_run=True, blobs=len(blobs), bytes=sum(blobs.values()), manifests=manifests,
                      seconds=round(time.monotonic() - started, 3), first_blobs=list(blobs)[:20])


def collect_garbage(migration: Context, delete_untagged: bool) -> Collection:
    """Read-only on, collect, read-only off (see the module docstring)."""
    job = migration
    state = job.state
    if state.readonly_on_at is not None and state.gc_started_at is None:
        raise InvalidInput("a migration's read-only window is open (see 'migrator status'): finish it with "
                           "'migrator run' or end it with 'migrator rollback' before collecting garbage")
    if not job.managed.binary():
        raise InvalidInput(f"the registry executable {job.settings.binary or job.managed.default_binary!r} "
                           "is not on this host; set registry.binary to the registry's binary")
    if state.gc_started_at is None:
        state.gc_started_at = now()
        job.store.save(state)
    started = time.monotonic()
    readonly_on(job)
    try:
        blobs, manifests = eligible(job, delete_untagged)
        log.info("garbage collection: %d blobs (%d bytes) and %d manifests eligible", len(blobs), sum(blobs.values()),
                 manifests)
        run_collector(job, delete_untagged, dry_run=False)
    except (Exception, KeyboardInterrupt) as exc:
        restore_original(job, f"garbage collection failed: {exc}")
        state.gc_started_at = None
        job.store.save(state)
        raise StoppedSafely(f"garbage collection failed ({exc}); the registry is back to read-write on the "
                            "filesystem") from None
    removed = {digest: size for digest, size in blobs.items()
               if not (job.plan.source / BLOBS / digest[:2] / digest / "data").exists()}
    read_only_from = state.readonly_on_at
    restore_original(job, "garbage collection done")
    state.gc_started_at = None
    job.store.save(state)
    return Collection(dry_run=False, blobs=len(removed), bytes=sum(removed.values()), manifests=manifests,
                      seconds=round(time.monotonic() - started, 3),
                      read_only_seconds=round(now() - read_only_from, 3), first_blobs=list(removed)[:20])
