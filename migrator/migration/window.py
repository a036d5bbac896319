"""The window: the read-only flip, the cut-over to s3, back to read-write on s3 (and Omnibus's reconfigure after).

Reads the state and the registry's answers; changes the registry's config (each change restarts it) and the
state's window figures (``readonly_on_at``, ``pushes_refused_from``, ``writes_on_s3_since``, ``readonly_off_at``).
Any proof that fails stops safely (``safety``): back to the filesystem, read-write."""

from __future__ import annotations

import functools
import logging

from migrator.errors import InvalidInput, StoppedSafely
from migrator.failpoints import failpoint
from migrator.images import check_through_registry
from migrator.managed import Restart
from migrator.migration.context import Context
from migrator.migration.estimate import estimate_window
from migrator.migration.proofs import (
    PRODUCTION_TAGS,
    ask_shadow,
    known_broken_in_source,
    prove_lockfile,
    record_images,
    set_aside_broken_in_source,
    tag_moved_on_s3,
    tags_to_pull,
)
from migrator.migration.registry import (
    PROBE_REPOSITORY,
    record_restart,
    standby_target,
    sweep_probe_leftovers,
    target_s3,
)
from migrator.migration.safety import restore_original, stop_safely
from migrator.registry_config import TargetState
from migrator.state import now
from migrator.sync import PassResult

log = logging.getLogger("migrator")


def ask_before_readonly(ctx: Context, consequence: str) -> None:
    """The operator's yes before the flip (not asked with ``--yes``, nor when the registry is read-only already);
    asked outside any phase, so the time the question waits is no phase's work."""
    if ctx.state.readonly_on_at is not None or ctx.options.yes:
        return
    if not ctx.options.confirm(f"Put the registry at {ctx.settings.url} in read-only mode now? {consequence}"):
        raise StoppedSafely("read-only flip declined; the registry was not touched (re-run to continue)")


def ask_before_the_window(ctx: Context) -> None:
    """``run``'s question before ``readonly_on``: how long pushes are refused (the window's estimate, from the last
    pass) and what Ctrl-C does."""
    if ctx.state.readonly_on_at is not None or ctx.options.yes:
        return
    last = PassResult(uploaded_objects=ctx.state.last_pass_changes or 0)
    estimate = estimate_window(ctx, last, ctx.state.last_pass_seconds or 0.0)
    if estimate.restarts_outside:
        restarts = "no restart inside: clients are on registry.front's standby while the registry restarts"
    elif estimate.restart_measured:
        restarts = "restarts included"
    else:
        restarts = (f"restarts included: {estimate.restarts} of {estimate.seconds_per_restart:g} s each assumed, "
                    "registry.restart_seconds")
    total = estimate.to_json()["total"]
    how_long = f"for about {total:.0f} s" if total >= 1 else "for under a second"
    ask_before_readonly(ctx, f"Pushes are refused {how_long} ({restarts}). Ctrl-C "
                             "or N now: nothing changes; Ctrl-C inside the window: back to the filesystem, read-write")


def readonly_on(ctx: Context) -> None:
    """Back up the config, flip to read-only, restart, and prove it: a write must get 405. Pushes are refused
    from the first moment the restart left the registry without an answer (or, if none was seen, the 405). The
    operator was asked before (``ask_before_the_window``, ``gc``'s own question).

    With a front, clients are on a standby while the registry restarts (it takes their pushes when it may), and
    come back to the registry once it is proven read-only: pushes are refused from that reload on, and the final
    delta waits only for the pushes still on the standby, not for the pulls."""
    if ctx.state.readonly_on_at is None:  # the registry runs on the live file: it is the original, edits included
        ctx.managed.config.drop_backup()
    ctx.managed.take_backup()
    if ctx.state.readonly_on_at is None:
        ctx.state.readonly_on_at = now()
        ctx.store.save(ctx.state)
    standby = None
    if ctx.front is not None:
        standby = standby_target(ctx, on_s3=False)
        if standby.readonly:  # nginx's new workers send pushes to a read-only standby from its reload on
            mark_pushes_refused(ctx, now())
        ctx.front.to_standby(standby)
        prove_through_front(ctx, expect=405 if standby.readonly else 202)
    restart = apply(ctx, ctx.managed.target(on_s3=False, readonly=True), on_failure="restore")
    prove_writes(ctx, expect=405)
    if ctx.front is not None and standby is not None:
        refused_from = now()  # before the reload: from here new requests reach the read-only registry
        # the writes standby stopped once its requests are answered: no push reaches the filesystem from here, so
        # the final pass sees every one; pulls under way go on on the reads standby
        ctx.front.give_back(wait_for_reads=False)
        prove_through_front(ctx, expect=405)
        mark_pushes_refused(ctx, refused_from)
    mark_pushes_refused(ctx, restart.unanswered[0][0] if restart.unanswered else now())


def mark_pushes_refused(ctx: Context, since: float) -> None:
    """Record the moment pushes started being refused, once (a resumed run keeps the first)."""
    if ctx.state.pushes_refused_from is None:
        ctx.state.pushes_refused_from = since
        ctx.store.save(ctx.state)


def cutover(ctx: Context) -> None:
    """Ask the registry on s3 before any client does: GitLab's filesystem-in-use marker must be in the bucket,
    then a seeded ten of the tags the window changed (others of all when it changed fewer: the bucket must
    answer now) must pull (manifest by tag and digest, every blob; the sample of all was asked before), from
    the registry's own binary serving the s3 config read-only on loopback: production restarts once more only
    (read-write on s3). Without that binary, production is
    restarted read-only on s3 and asked for the whole sample and as many changed tags (a third restart)."""
    prove_lockfile(ctx)
    shadow = ctx.managed.binary() is not None
    sample = ctx.settings.image_sample
    tags = (tags_to_pull(ctx, changed=PRODUCTION_TAGS, others=0, fill_to=PRODUCTION_TAGS) if shadow
            else tags_to_pull(ctx, sample, sample))
    if shadow:
        try:
            result, where = ask_shadow(ctx, tags)
        except InvalidInput as exc:
            stop_safely(ctx, str(exc))
    else:
        where = "the registry restarted read-only on s3 (no registry.binary on this host)"
        apply(ctx, target_s3(ctx, readonly=True), on_failure="rollback")
        result = check_through_registry(ctx.managed.client, tags)
        set_aside_broken_in_source(ctx, result, known_broken_in_source(ctx))
    record_images(ctx, "through_registry", result.to_json() | {"where": where})
    log.info("asked %s: %d tags, %d manifests, %d blobs; %d failed", where, result.tags, result.manifests,
             result.blobs, len(result.failed))
    if not tags:
        log.info("the window changed no tag: nothing more to ask of the registry on s3" if shadow else
                 "no tag to pull through the registry: the source has no tagged image")
    if not result.ok:
        stop_safely(ctx, f"{len(result.failed)} of {result.tags} tags do not pull from the registry on s3 "
                         f"(first: {'; '.join(result.failed[:3])})")


def readonly_off(ctx: Context) -> None:
    """Production on s3, read-write, in one restart: the window ends when a write probe gets 202. Before that
    moment is recorded, production must answer a few tags as the cut-over check did and say it runs with or
    without GitLab's metadata database as before; otherwise it goes back (unless a push reached the bucket).

    With a front, clients are on a standby on s3 while the registry restarts: when it takes pushes, the window
    ends at the reload that sends clients to it; nginx is given back once the registry is proven on s3."""
    if ctx.state.writes_on_s3_since is None:  # a resumed run keeps the first moment pushes could reach s3
        ctx.state.writes_on_s3_since = now()
        ctx.store.save(ctx.state)
    target = target_s3(ctx, readonly=False)
    accepted_at = None
    standby = None
    if ctx.front is not None:
        standby = standby_target(ctx, on_s3=True)
        ctx.front.to_standby(standby)
        if not standby.readonly:  # pushes land on s3 through the standby from nginx's reload on
            prove_through_front(ctx, expect=202)
            accepted_at = ctx.front.nginx.reloaded_at or now()
    apply(ctx, target, on_failure="rollback")
    prove_writes(ctx, expect=202)
    accepted_at = accepted_at or now()
    failpoint("writes-accepted")
    check_database_header(ctx)
    tags = tags_to_pull(ctx, changed=0, others=PRODUCTION_TAGS)
    result = check_through_registry(ctx.managed.client, tags)
    result.excuse(functools.partial(tag_moved_on_s3, ctx))  # clients push from the 202 on
    set_aside_broken_in_source(ctx, result, known_broken_in_source(ctx))
    if not result.ok:
        stop_safely(ctx, f"{len(result.failed)} of {result.tags} tags do not pull from the production registry on "
                         f"s3 (first: {'; '.join(result.failed[:3])})")
    sweep_probe_leftovers(ctx, on_s3=True)
    if ctx.front is not None and standby is not None:  # clients back on the registry, now on s3
        ctx.front.give_back()
        prove_through_front(ctx, expect=202)
        sweep_probe_leftovers(ctx, on_s3=True)
        if standby.readonly:  # pushes land from here
            accepted_at = now()
    ctx.state.readonly_off_at = accepted_at
    ctx.store.save(ctx.state)


def reconfigure(ctx: Context) -> None:
    """Omnibus, after the window: one ``gitlab-ctl reconfigure`` must keep s3, read-write, and a healthy
    registry that takes writes."""
    front_before = ctx.front.nginx.settings.nginx.read_bytes() if ctx.front is not None else None
    restart = ctx.managed.after_window(target_s3(ctx, readonly=False))
    if restart is None:
        return  # this registry needs nothing after the window
    record_restart(ctx, restart)
    if ctx.front is not None and ctx.front.nginx.settings.nginx.read_bytes() != front_before:
        log.warning("gitlab-ctl reconfigure rendered %s differently from the file nginx had (gitlab.rb changed since "
                    "the last reconfigure before the run): Omnibus restarted nginx, cutting requests in flight. Run "
                    "'gitlab-ctl reconfigure' before a migration with registry.front", ctx.front.nginx.settings.nginx)
    if restart.problem:
        raise StoppedSafely(f"the registry runs on s3, read-write, and takes pushes; but {restart.problem}. Keep "
                            "the migrator block in gitlab.rb, fix what the message says, then re-run the same "
                            "command to finish")
    prove_writes(ctx, expect=202)
    check_database_header(ctx)
    sweep_probe_leftovers(ctx, on_s3=True)


def check_database_header(ctx: Context) -> None:
    """GitLab's fork says on GET /v2/ whether it runs with its metadata database: it must say what it said
    before the migration (on a bucket without the marker, 'true' would mean an empty database)."""
    header = ctx.managed.database_header()
    if header is None:
        return
    expected = "true" if ctx.state.uses_database else "false"
    if header.lower() != expected:
        stop_safely(ctx, f"the registry on s3 answers Gitlab-Container-Registry-Database-Enabled: {header}, "
                         f"expected {expected}: its metadata database does not hold the migrated images")


def apply(ctx: Context, target: TargetState, on_failure: str) -> Restart:
    """Write the config for ``target`` (atomic), restart, wait for health, check the effective config."""
    if target.s3 is not None and not ctx.state.s3_config_written:
        ctx.state.s3_config_written = True
        ctx.store.save(ctx.state)
    restart = ctx.managed.apply(target)
    record_restart(ctx, restart)
    if restart.problem is None:
        return restart
    if on_failure == "restore":
        restore_original(ctx, restart.problem)
        raise InvalidInput(f"{restart.problem}; the original config was restored and the registry takes writes again")
    stop_safely(ctx, restart.problem)


def prove_through_front(ctx: Context, expect: int) -> None:
    """A write probe through the front gets ``expect``: 405 while nginx sends clients to a read-only registry or
    standby, 202 while it sends them to one that takes pushes (a writable standby, the registry on s3)."""
    assert ctx.front is not None
    status = ctx.front.client().write_probe(PROBE_REPOSITORY)
    if status == expect or status == 401:  # 401: token auth, as prove_writes says
        log.info("write probe through the front: HTTP %d", status)
        return
    stop_safely(ctx, f"a write probe through the front ({ctx.front.nginx.url()}) got HTTP {status}, not {expect}")


def prove_writes(ctx: Context, expect: int) -> None:
    status = ctx.managed.client.write_probe(PROBE_REPOSITORY)
    if status == expect:
        log.info("write probe: HTTP %d as expected", status)
        return
    if status == 401:
        log.warning("WRITE PROBE COULD NOT PROVE THE REGISTRY STATE: HTTP 401 (token auth). Set MIGRATOR_PROBE_USER "
                    "and MIGRATOR_PROBE_PASSWORD to a user allowed to push")
        return
    if expect == 405:
        problem = f"write probe got HTTP {status}, not 405: the registry is not read-only"
        restore_original(ctx, problem)
        raise StoppedSafely(f"{problem}; original config restored, the registry takes writes")
    stop_safely(ctx, f"write probe got HTTP {status}, not 202, after read-only off")


