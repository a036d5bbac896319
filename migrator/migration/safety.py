"""Safety: the failure path inside the window, the restore of the original config, the strand guard, the
registry's mode proven when a run resumes inside the window, rollback.

Reads the state and the bucket (what the registry may have written there); changes the registry's config (back to
the original) and the state (``reset_to_online``: what the window proved no longer holds)."""

from __future__ import annotations

import functools
import logging
import math
from contextlib import contextmanager
from typing import Iterator, NoReturn, Optional

from migrator.errors import InvalidInput, Refused, RestoreFailed, StoppedSafely
from migrator.layout import REPOSITORIES, is_uploads
from migrator.migration.context import Context
from migrator.migration.registry import PROBE_REPOSITORY, record_restart, standby_target, sweep_probe_leftovers
from migrator.s3 import BUCKET_ERRORS, explain
from migrator.state import now
from migrator.verify import file_difference

log = logging.getLogger("migrator")

CLOCK_SKEW_SECONDS = 30
KEPT_AFTER_RESTORE = ("initial_sync",)  # the copy the journal holds stays; every proof is made again


@contextmanager
def back_to_filesystem_on_failure(ctx: Context) -> Iterator[None]:
    """Inside the window no write reached the bucket: any failure returns the registry to the filesystem,
    read-write, so an outage of the bucket or a bug never leaves the registry read-only."""
    try:
        yield
    except (StoppedSafely, RestoreFailed):
        raise
    except (Exception, KeyboardInterrupt) as exc:
        if ctx.state.readonly_on_at is None or ctx.state.readonly_off_at is not None:
            raise  # the window was not open (or already closed): nothing to return
        why = "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
        log.error("%s inside the read-only window: returning the registry to the filesystem, read-write", why)
        stop_safely(ctx, f"{why} inside the read-only window")


def stop_safely(ctx: Context, problem: str) -> NoReturn:
    """Back to the filesystem, read-write (when the plan has a registry), and stop with exit 1.

    Once the registry may have taken writes on s3, it goes back only if the bucket proves it took none."""
    if ctx.registry is not None:
        refuse_to_strand_writes(ctx, problem)
        restore_original(ctx, problem)
    raise StoppedSafely(f"{problem}. The registry is back on the filesystem, read-write (a write probe was "
                        "accepted); nothing was lost")


def refuse_to_strand_writes(ctx: Context, problem: str) -> None:
    """Stop here, the registry left on s3, unless the bucket proves no push would be stranded by going back."""
    since = ctx.state.writes_on_s3_since
    if since is None:
        return
    try:
        written: Optional[int] = len(objects_written_since(ctx, since))
    except BUCKET_ERRORS as exc:
        written, why = None, f"the bucket cannot be listed to check ({explain(exc, ctx.plan.bucket.name)})"
    else:
        why = f"the bucket holds {written} objects written since the registry could write there that the filesystem lacks"
    if written == 0:
        return
    raise StoppedSafely(
        f"{problem}. {why}, so the registry is left on s3, read-write: returning it to the filesystem could "
        "strand pushes in the bucket. Check the registry, then re-run the same command to finish, or run "
        "'migrator rollback --force' to return to the filesystem without those pushes"
    )


def restore_original(ctx: Context, why: str) -> None:
    """The original config (filesystem, as it was) back in place, restarted, and writes proven accepted; the
    state then says the registry is online again. If any of that fails, ``RestoreFailed`` says what is true and
    the state keeps what ``status`` and ``rollback`` need (read-only since when, why). The restore is recorded as
    intended before its restart runs, so a run killed meanwhile is resumed by finishing it."""
    ctx.state.restore_problem = f"its restart (after: {why}) has not been proven to take writes yet"
    ctx.store.save(ctx.state)
    if ctx.front is not None:  # clients on a standby on the filesystem while the registry restarts
        try:
            ctx.front.to_standby(standby_target(ctx, on_s3=False))
        except (InvalidInput, OSError) as exc:
            log.warning("no standby for the restore's restart (%s): clients see it", exc)
    restart = ctx.managed.restore()
    record_restart(ctx, restart)
    problem = restart.problem
    status = ctx.managed.client.write_probe(PROBE_REPOSITORY) if ctx.managed.client.health() in (200, 401) else None
    if problem is None:
        if status == 401:
            log.warning("WRITE PROBE COULD NOT PROVE THE REGISTRY TAKES WRITES AGAIN: HTTP 401. Set "
                        "MIGRATOR_PROBE_USER and MIGRATOR_PROBE_PASSWORD to a user allowed to push")
        elif status != 202:
            problem = f"a write probe still gets HTTP {status}, not 202"
        else:
            log.info("write probe: HTTP 202: the registry takes writes on the filesystem again")
    elif status == 202 and not ctx.state.s3_config_written:
        log.warning("%s; but the registry answers writes: it kept running its original (filesystem) config", problem)
        problem = None
    if problem is None:
        if ctx.front is not None:  # clients back on the registry, proven read-write on the filesystem
            ctx.front.give_back()
        sweep_probe_leftovers(ctx, on_s3=False)
        reset_to_online(ctx)
        return
    ctx.state.restore_problem = problem
    ctx.store.save(ctx.state)
    raise RestoreFailed(
        f"{why}. The original config (filesystem, read-write) was written back to {ctx.managed.config.path}, "
        f"but {problem}: "
        "the registry may still refuse pushes. Fix the registry (see its log), then run 'migrator rollback PLAN', "
        "which restarts it and proves it takes writes"
    )


def reset_to_online(ctx: Context) -> None:
    """The registry is proven back on the filesystem, read-write: what the window proved no longer holds, and the
    backup is dropped (the live file is the original again: an operator's edit before the next flip is kept)."""
    ctx.managed.config.drop_backup()
    ctx.journal.close_window()
    if ctx.state.readonly_on_at is not None:  # kept for the report: the window this attempt opened and closed
        # closed now, or (a rollback after the cut-over) when writes went on on s3
        ctx.state.closed_windows.append({"on": ctx.state.readonly_on_at, "off": ctx.state.readonly_off_at or now()})
    ctx.state.restore_problem = None
    ctx.state.s3_config_written = False
    ctx.state.images = {}
    ctx.state.done = [p for p in ctx.state.done if p in KEPT_AFTER_RESTORE]
    ctx.state.readonly_on_at = None
    ctx.state.readonly_off_at = None
    ctx.state.writes_on_s3_since = None
    ctx.state.restart_seconds = 0.0
    ctx.state.pushes_refused_from = None
    ctx.state.online_verified_objects = None
    ctx.state.filesystem_proven_at = now()
    ctx.store.save(ctx.state)


def prove_mode_on_resume(ctx: Context) -> None:
    """A run resuming inside the window proves the registry's mode before any window step. A restore the last run
    started (or could not prove) is finished first; a registry that takes writes though the state says it was
    flipped read-only is online again (a restore's restart ran, or it came up late), so the window starts over
    from the flip, after delta passes that copy what was pushed meanwhile."""
    if ctx.state.readonly_on_at is None or ctx.state.readonly_off_at is not None:
        return
    if ctx.state.restore_problem is not None:
        log.warning("the last run's restore of the original config is not proven (%s): finishing it first",
                    ctx.state.restore_problem)
        problem = f"resumed after an unproven restore ({ctx.state.restore_problem})"
        refuse_to_strand_writes(ctx, problem)
        restore_original(ctx, problem)
        return
    if ctx.state.writes_on_s3_since is not None or not ctx.state.is_done("readonly_on"):
        return  # read-only off (202) or the flip (405) is redone, and proves its own mode
    status = ctx.managed.client.write_probe(PROBE_REPOSITORY)
    if status == 405:
        log.info("resuming inside the read-only window: a write probe got HTTP 405, the registry is read-only")
        return
    if status == 401:
        log.warning("WRITE PROBE COULD NOT PROVE THE REGISTRY IS STILL READ-ONLY: HTTP 401. Set MIGRATOR_PROBE_USER "
                    "and MIGRATOR_PROBE_PASSWORD to a user allowed to push")
        return
    log.warning("resuming inside the read-only window, but a write probe got HTTP %s, not 405: the registry takes "
                "writes, so the window starts over from the flip", status)
    if all(original == current for _, original, current in ctx.managed.files(None)):
        sweep_probe_leftovers(ctx, on_s3=False)  # already on the original config, proven writable: no restart
        reset_to_online(ctx)
    else:
        restore_original(ctx, f"resumed inside the read-only window with the registry taking writes (HTTP {status})")


def rollback(ctx: Context, force: bool) -> bool:
    """Restore the original config; refused after the registry took writes on s3 unless forced. Everything that
    would refuse is checked before the operator is asked (``ctx.options``); False when they decline."""
    if not ctx.managed.config.backup.exists():
        raise InvalidInput(f"no backup of the original config in {ctx.managed.config.backup_dir}: nothing to roll back to")
    since = ctx.state.writes_on_s3_since or ctx.state.readonly_off_at
    written = objects_written_since(ctx, since) if since is not None else []
    if written and not force:
        raise Refused(
            f"the bucket holds {len(written)} objects written since the cut-over that the filesystem lacks "
            f"({stranded_images(written)}); rolling back would strand those pushes in the bucket. Re-run "
            "with --force if you accept losing them"
        )
    dropped = (f"the {len(written)} objects written since the cut-over ({stranded_images(written)}) stay in the "
               "bucket only: the filesystem registry does not serve them, and the next 'migrator run' deletes them "
               "(above sync.max_delete_fraction it asks for --allow-mass-delete)") if written else ""
    question = "Restore the original registry config and restart it?" + (f" With --force, {dropped}." if dropped else "")
    if not ctx.options.yes and not ctx.options.confirm(question):
        return False
    if dropped:
        log.warning("rolling back with --force: %s", dropped)
    restore_original(ctx, "rollback requested")
    ctx.state.outcome = "rolled back"
    ctx.state.front_log_offsets = {}  # the next migration counts the front's requests from its own start
    ctx.store.save(ctx.state)
    return True


def objects_written_since(ctx: Context, since: float) -> list[str]:
    """Objects written to the bucket since ``since`` that the filesystem does not hold: what returning the
    registry to the filesystem would strand (``_uploads`` aside; the cutoff allows for LastModified's
    one-second resolution and clock skew, our own copies being told apart by their content)."""
    cutoff = math.floor(since) - CLOCK_SKEW_SECONDS
    return [item.rel for item in ctx.bucket.listing("docker/")
            if item.modified >= cutoff and not is_uploads(item.rel)
            and file_difference(item.rel, ctx.plan.source / item.rel, item.size,
                                functools.partial(ctx.bucket.content_md5, item.rel, item.etag)) is not None]


def stranded_images(rels: list[str]) -> str:
    """The tags and repositories among bucket keys the filesystem lacks, for a message: what would be lost."""
    tags: dict[str, None] = {}
    repositories: dict[str, None] = {}
    for rel in rels:
        if not rel.startswith(REPOSITORIES):
            continue
        repository, marker, tail = rel[len(REPOSITORIES):].partition("/_manifests/tags/")
        if marker:
            tags[f"{repository}:{tail.split('/', 1)[0]}"] = None
        else:
            repositories[rel[len(REPOSITORIES):].split("/_", 1)[0]] = None
    tagged = {tag.rsplit(":", 1)[0] for tag in tags}
    untagged = [repository for repository in repositories if repository not in tagged]
    named = ([f"tags {', '.join(list(tags)[:10])}"] if tags else []) + (
        [f"repositories {', '.join(untagged[:10])}"] if untagged else [])
    return "; ".join(named) or "blobs only"
