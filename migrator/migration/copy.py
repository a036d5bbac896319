"""The copy phases: the initial sync, the delta passes, and inside the window the final sync and the delete step.

Reads the plan, the journal and the change feed; changes the bucket (through the engine), the journal and the
state's pass figures (``passes``, ``last_pass_*``, ``pass_history``, ``final_pass``, ``final_source_objects``)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from migrator.errors import InvalidInput
from migrator.layout import outermost
from migrator.migration.context import Context
from migrator.s3 import BUCKET_ERRORS, explain
from migrator.sync import PassResult
from migrator.walker import source_totals

log = logging.getLogger("migrator")

PASS_HISTORY = 100  # passes kept for the report's timeline


def initial_sync(ctx: Context) -> PassResult:
    """The first online copy: the bucket is listed once per shard, then everything missing is copied."""
    return sync_pass(ctx)


def sync_pass(ctx: Context, paths: Optional[list[str]] = None) -> PassResult:
    """A copy pass over the whole tree, or over just ``paths`` when the change feed vouches for the rest."""
    started = time.monotonic()
    started_ns = ctx.state.last_pass_started_ns = time.time_ns()
    number = ctx.state.passes + 1
    ctx.progress.pass_started(number, ctx.journal.count() or None)
    stop_counting = threading.Event()  # set at the pass's end: a count still walking stops
    if paths is None and ctx.state.passes == 0:  # the initial sync: the journal cannot say what it will walk
        threading.Thread(target=_count_source, args=(ctx, number, ctx.journal.total_bytes(), stop_counting),
                         name="count-source", daemon=True).start()
    if ctx.tracker and paths is None:
        ctx.tracker.pass_started()
    try:
        result = ctx.engine.run_pass() if paths is None else ctx.engine.sync_paths(paths)
    except BUCKET_ERRORS as exc:
        raise InvalidInput(f"copy pass failed: {explain(exc, ctx.plan.bucket.name)}") from None
    finally:
        stop_counting.set()
    if ctx.tracker and paths is None:
        ctx.tracker.pass_finished(result.source_changes, result.delete_candidates, result.first_linked)
    ctx.state.passes += 1
    ctx.state.last_pass_seconds = round(time.monotonic() - started, 3)
    ctx.state.pass_history = (ctx.state.pass_history + [{
        "pass": ctx.state.passes, "phase": ctx.bucket.counter.phase, "started_at": started_ns / 1e9,
        "seconds": ctx.state.last_pass_seconds, "files": result.source_objects, "uploaded": result.uploaded_objects,
        "delete_candidates": len(result.delete_candidates)}])[-PASS_HISTORY:]
    ctx.state.last_pass_changes = result.changes
    ctx.store.save(ctx.state)
    log.info("pass %d: %d files walked, %d uploaded (%s), %d delete candidates, %.1f s",
             ctx.state.passes, result.source_objects, result.uploaded_objects,
             ", ".join(f"{n} {r}" for r, n in result.reasons.items()) or "nothing changed",
             len(result.delete_candidates), ctx.state.last_pass_seconds)
    return result


def _count_source(ctx: Context, number: int, bytes_in_bucket: int, stop: threading.Event) -> None:
    """Tell the progress block what the initial sync will walk and (about) what it will upload: the source's files,
    and its bytes less those the bucket already holds (a resumed sync)."""
    try:
        totals = source_totals(ctx.plan.source, stop)
    except Exception as exc:  # only the block's totals are lost; the pass reports the walk's own errors
        log.debug("counting the source for the progress totals failed: %s", exc)
        return
    if totals is not None:
        files, nbytes = totals
        ctx.progress.totals(number, files, max(nbytes - bytes_in_bucket, 0))


def delta_passes(ctx: Context) -> PassResult:
    """Online passes until one finds fewer changes than the threshold: what is left for the window shrinks. The
    delete guard is asked about the last pass's candidates here, online: a mass delete the window's final pass
    would refuse is refused now (exit 3), before any flip or restart."""
    total = PassResult()
    result: Optional[PassResult] = None
    for _ in range(ctx.plan.sync.max_delta_passes):
        result = sync_pass(ctx)
        total.add(result)
        if result.changes < ctx.plan.sync.delta_stop_below:
            break
    if result is not None:
        ctx.engine.check_deletes(result, ctx.plan.sync.max_delete_fraction, ctx.options.allow_mass_delete)
    return total


def final_sync_and_delete(ctx: Context) -> PassResult:
    """The source is frozen: copy what changed since the last pass, then delete what is gone. With a change
    feed that watched the last online pass, only the paths it saw change are walked."""
    ctx.engine.prove_changes = True
    # excused online as in flight: uploaded again, so the window proves each by the bucket's answer (the
    # journal's word cannot tell a dead task's upload under a KMS ETag)
    ctx.journal.mark_unconfirmed(ctx.journal.rechecks())
    paths = ctx.tracker.final_paths() if ctx.tracker else None
    if paths is not None:  # the changes online verification excused as in flight, and interrupted ones
        paths = outermost(paths + ctx.journal.rechecks() + ctx.journal.unconfirmed())
    ctx.state.final_pass = ({"method": "change feed (fanotify)", "paths": len(paths)} if paths is not None else
                            {"method": "full walk", "why": ctx.tracker.why_not if ctx.tracker else "no feed"})
    result = sync_pass(ctx, paths)
    ctx.state.final_source_objects = result.source_objects
    result.deleted_objects = delete(ctx, result)
    return result


def delete(ctx: Context, result: PassResult) -> int:
    """The delete step: candidates reported first (dry run), then applied under the guards."""
    candidates = result.delete_candidates
    if not candidates:
        return 0
    log.info("delete step: %d candidates (%d bytes), first: %s", len(candidates), result.delete_candidate_bytes,
             ", ".join(candidates[:5]))
    ctx.engine.check_deletes(result, ctx.plan.sync.max_delete_fraction, ctx.options.allow_mass_delete)
    try:
        return ctx.engine.apply_deletes(candidates)
    except BUCKET_ERRORS as exc:
        raise InvalidInput(f"delete failed: {explain(exc, ctx.plan.bucket.name)}") from None
