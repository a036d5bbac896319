"""What the phases share about the registry: the s3 target, the record of each restart, the write probes' leftovers.

Changes ``state.restarts``/``restart_seconds``, and removes only what the write probes left (their ``_uploads``)."""

from __future__ import annotations

import contextlib
import logging
import shutil

from migrator.layout import REPOSITORIES
from migrator.managed import Restart
from migrator.migration.context import Context
from migrator.migration.standby import standby_takes_pushes
from migrator.registry_config import TargetState

log = logging.getLogger("migrator")

PROBE_REPOSITORY = "migrator-probe/readonly-check"


def target_s3(ctx: Context, readonly: bool) -> TargetState:
    """The registry on the bucket with the plan's settings (and GitLab's database as it was)."""
    return ctx.managed.target(on_s3=True, readonly=readonly, uses_database=bool(ctx.state.uses_database))


def standby_target(ctx: Context, on_s3: bool) -> TargetState:
    """What the front's standby serves while the registry restarts: the registry's storage (the filesystem, or the
    bucket), read-write when a standby may take pushes (``standby_takes_pushes``), else read-only."""
    assert ctx.front is not None
    readonly = not standby_takes_pushes(ctx.managed)
    return target_s3(ctx, readonly) if on_s3 else ctx.managed.target(on_s3=False, readonly=readonly)


def record_restart(ctx: Context, restart: Restart) -> None:
    """Keep a restart as clients saw it (and its time inside the window) for the report."""
    in_window = ctx.state.readonly_on_at is not None and ctx.state.readonly_off_at is None
    ctx.state.restarts.append(restart.to_json(in_window))
    if in_window:
        ctx.state.restart_seconds = round(ctx.state.restart_seconds + restart.seconds, 3)
    ctx.store.save(ctx.state)
    log.info("%s took %.1fs; reads got no answer for %.1fs", restart.command, restart.seconds,
             restart.unanswered_seconds)


def sweep_probe_leftovers(ctx: Context, on_s3: bool) -> None:
    """Delete what the write probes left: the registry's cancel of an upload keeps its hash state under the probe
    repository's ``_uploads``, in the bucket or on the filesystem. Nothing outside that directory is touched."""
    uploads = f"{REPOSITORIES}{PROBE_REPOSITORY}/_uploads"
    if not on_s3:
        shutil.rmtree(ctx.plan.source / uploads, ignore_errors=True)
        for empty in (PROBE_REPOSITORY, PROBE_REPOSITORY.split("/")[0]):
            with contextlib.suppress(OSError):  # left alone unless empty
                (ctx.plan.source / REPOSITORIES / empty).rmdir()
        return
    rels = [item.rel for item in ctx.bucket.listing(uploads + "/")]
    ctx.bucket.delete_keys(rels)
    if rels:
        log.info("removed %d objects the write probes left in the bucket", len(rels))
