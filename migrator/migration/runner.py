"""The phase table, written once, and the runner: ``run`` goes through ``PHASES`` in order, skips what the state
says is done, records each phase's figures, and inside the read-only window sends any failure down the failure path
(``safety.back_to_filesystem_on_failure``). ``planned_phases`` (what ``status`` lists) reads the same table.

    preflight (resuming inside the window: the registry's mode proven) → initial sync → delta passes
    → online verification → proof on s3
    → read-only on → final sync + delete → verify the window's change
    → cut-over to s3 → read-only off → (Omnibus: reconfigure) → done
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from migrator.changefeed import PassTracker
from migrator.console import human_bytes
from migrator.errors import InvalidInput
from migrator.failpoints import failpoint
from migrator.html_report import write_html
from migrator.migration import copy, proofs, window
from migrator.migration.context import Context
from migrator.migration.preflight import preflight
from migrator.migration.report import Report, build_report
from migrator.migration.safety import back_to_filesystem_on_failure, prove_mode_on_resume
from migrator.plan import Plan
from migrator.state import now
from migrator.sync import PassResult

log = logging.getLogger("migrator")


def has_registry(plan: Plan) -> bool:
    return plan.registry is not None


def omnibus_fast_path(plan: Plan) -> bool:
    """GitLab Omnibus without ``registry.restart``: both files written in the window, one reconfigure after it."""
    return plan.registry is not None and plan.registry.format == "omnibus" and not plan.registry.restart


def always(plan: Plan) -> bool:
    return True


@dataclass(frozen=True)
class Phase:
    """One step of ``run``: idempotent, marked done in the state when it finishes.

    ``online``: runs while the registry takes writes; ``proof``: what it proved online may be stale when a run
    resumes before the window, so it runs again; ``window``: inside the read-only window, where any failure
    returns the registry to the filesystem (from the moment ``readonly_on`` recorded it open); ``when``: whether the
    plan has this phase at all; ``ask``: the operator's yes before it starts, asked outside any phase."""

    name: str
    work: Callable[[Context], Optional[PassResult]]
    online: bool = False
    proof: bool = False
    window: bool = False
    when: Callable[[Plan], bool] = always
    ask: Optional[Callable[[Context], None]] = None


PHASES: tuple[Phase, ...] = (
    Phase("initial_sync", copy.initial_sync, online=True),
    Phase("delta_passes", copy.delta_passes, online=True, proof=True),
    Phase("online_verification", proofs.online_verification, online=True, proof=True),
    Phase("prove_on_s3", proofs.prove_on_s3, online=True, proof=True, when=has_registry),
    Phase("readonly_on", window.readonly_on, window=True, when=has_registry, ask=window.ask_before_the_window),
    Phase("final_sync", copy.final_sync_and_delete, window=True),
    Phase("verify_window", proofs.verify_window, window=True),
    Phase("cutover", window.cutover, window=True, when=has_registry),
    Phase("readonly_off", window.readonly_off, window=True, when=has_registry),
    Phase("reconfigure", window.reconfigure, when=omnibus_fast_path),
)


def phases_for(plan: Plan) -> list[Phase]:
    """The phases ``run`` goes through for this plan, in order."""
    return [phase for phase in PHASES if phase.when(plan)]


def planned_phases(plan: Plan) -> list[str]:
    return [phase.name for phase in phases_for(plan)]


def run(ctx: Context) -> Report:
    """Everything, resumable. Returns the final report."""
    if ctx.state.gc_started_at is not None:
        raise InvalidInput("'migrator gc' did not finish (the registry may be read-only): re-run 'migrator gc' "
                           "to finish it first")
    preflight(ctx, canary=True)
    if ctx.registry is not None:
        prove_mode_on_resume(ctx)
    ctx.tracker = PassTracker(ctx.plan.source, ctx.plan.sync.change_feed)
    phases = phases_for(ctx.plan)
    if ctx.state.readonly_on_at is None:  # still online: what was proven online may be stale
        stale = {phase.name for phase in PHASES if phase.proof}
        ctx.state.done = [name for name in ctx.state.done if name not in stale]
    if ctx.registry is None:
        log.warning("NO REGISTRY IN THE PLAN: synced, deleted and verified only; no read-only flip, no cut-over")
    for phase in phases:
        if phase.ask is not None and not ctx.state.is_done(phase.name):
            phase.ask(ctx)
        if phase.window and ctx.registry is not None:
            with back_to_filesystem_on_failure(ctx):
                run_phase(ctx, phase)
        else:
            run_phase(ctx, phase)
    return finish(ctx)


def run_phase(ctx: Context, phase: Phase) -> None:
    """Run a phase unless done; record its report entry and mark it done (fsync + rename)."""
    name = phase.name
    if ctx.state.is_done(name):
        log.info("phase %s: already done", name)
        return
    log.info("phase %s: starting", name)
    ctx.progress.phase_started(name)
    started = time.monotonic()
    started_at = now()
    with ctx.bucket.counter.phase_scope(name):
        result = phase.work(ctx)
    failpoint(f"before-done:{name}")
    entry: dict[str, Any] = {
        "name": name,
        "started_at": started_at,
        "seconds": round(time.monotonic() - started, 3),
        "uploaded_objects": result.uploaded_objects if result else 0,
        "uploaded_bytes": result.uploaded_bytes if result else 0,
        "deleted_objects": result.deleted_objects if result else 0,
        "s3_requests": ctx.bucket.counter.attempts[name],
        "s3_retries": ctx.bucket.counter.retries(name),
    }
    ctx.state.phases = [p for p in ctx.state.phases if p["name"] != name] + [entry]
    ctx.state.done.append(name)
    ctx.store.save(ctx.state)
    log.info(
        "phase %s: done in %.1f s, %d objects (%s) uploaded, %d deleted, %d S3 requests (%d retries)",
        name, entry["seconds"], entry["uploaded_objects"], human_bytes(entry["uploaded_bytes"]),
        entry["deleted_objects"], entry["s3_requests"], entry["s3_retries"],
    )


def finish(ctx: Context) -> Report:
    """The window closed in the journal, the outcome recorded, report.json and report.html written."""
    ctx.journal.close_window()
    ctx.state.outcome = "done"
    ctx.store.save(ctx.state)
    report = build_report(ctx)
    ctx.store.write_json("report.json", report)
    write_html(ctx.plan.state_dir / "report.html", report)
    return report


def sync_once(ctx: Context) -> tuple[PassResult, int]:
    """``migrator sync``: preflight, then one online copy pass outside the phases; its result and S3 requests."""
    preflight(ctx, canary=True)
    ctx.progress.phase_started("sync")
    with ctx.bucket.counter.phase_scope("sync"):
        result = copy.sync_pass(ctx)
    return result, ctx.bucket.counter.attempts["sync"]
