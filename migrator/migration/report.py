"""The run's report (report.json; the CLI's summary and report.html read it): built from the state alone."""

from __future__ import annotations

from typing import Any, Optional, TypedDict

from migrator.migration.context import Context


class Report(TypedDict):
    """report.json's fields (see CONTRACT.md): the window as clients saw it, each phase, the proofs."""

    outcome: Optional[str]
    stopped: Optional[dict[str, Any]]  # the last attempt's stop: {at, reason, exit_code}
    attempts: list[dict[str, Any]]  # {started_at, ended_at, outcome} of each run of the plan
    closed_windows: list[dict[str, float]]  # {on, off}: read-only windows closed by going back to the filesystem
    plan: str
    source: str
    bucket: str  # s3://bucket/prefix
    registry_config: Optional[str]
    read_only_window_seconds: Optional[float]
    restart_seconds: float
    passes: int
    final_pass: dict[str, Any]
    phases: list[dict[str, Any]]
    verification: dict[str, Any]
    images: dict[str, Any]
    readonly_on_at: Optional[float]
    readonly_off_at: Optional[float]
    pushes_refused_seconds: Optional[float]
    reads_refused_seconds: Optional[float]
    pushes_refused_from: Optional[float]
    restarts: list[dict[str, Any]]
    pass_history: list[dict[str, Any]]
    config_diff: Optional[str]
    front: Optional[dict]  # registry.front: requests nginx answered for the registry during the run, by kind


def build_report(ctx: Context) -> Report:
    state = ctx.state
    window = None
    if state.readonly_on_at and state.readonly_off_at:
        window = round(state.readonly_off_at - state.readonly_on_at, 3)
    return Report(
        outcome=state.outcome,
        stopped=state.stopped,
        attempts=state.attempts,
        closed_windows=state.closed_windows,
        plan=str(ctx.plan.path),
        source=str(ctx.plan.source),
        bucket=f"s3://{ctx.plan.bucket.name}/{ctx.plan.key_prefix}",
        registry_config=str(ctx.settings.config) if ctx.plan.registry is not None else None,
        read_only_window_seconds=window,
        restart_seconds=state.restart_seconds,
        passes=state.passes,
        final_pass=state.final_pass,
        phases=state.phases,
        verification=state.verification,
        images=images_summary(ctx),
        readonly_on_at=state.readonly_on_at,
        readonly_off_at=state.readonly_off_at,
        pushes_refused_seconds=pushes_refused_seconds(ctx),
        reads_refused_seconds=reads_refused_seconds(ctx),
        pushes_refused_from=state.pushes_refused_from,
        restarts=state.restarts,
        pass_history=state.pass_history,
        config_diff=ctx.registry.diff() if ctx.registry is not None else None,
        front=ctx.front.requests_since(state.front_log_offsets) if ctx.front is not None else None,
    )


def reads_refused_seconds(ctx: Context) -> Optional[float]:
    """How long ``GET /v2/`` got no answer during this migration's restarts (the window's and the reconfigure
    after it), as sampled every 50 ms."""
    if ctx.state.readonly_on_at is None:
        return None
    return round(sum(r.get("unanswered_seconds", 0.0) for r in ctx.state.restarts
                     if r["started_at"] >= ctx.state.readonly_on_at), 3)


def pushes_refused_seconds(ctx: Context) -> Optional[float]:
    """From the first push the read-only restart refused to the write probe accepted on s3."""
    if ctx.state.pushes_refused_from is None or ctx.state.readonly_off_at is None:
        return None
    return round(ctx.state.readonly_off_at - ctx.state.pushes_refused_from, 3)


def images_summary(ctx: Context) -> dict:
    """The report's ``images``: the whole graph's figures (online), plus the window's and the registry's."""
    images = ctx.state.images
    whole = images.get("all", {})
    summary = {name: whole.get(name, 0) for name in ("tags", "manifests", "blobs", "missing")}
    summary["missing"] += images.get("window", {}).get("missing", 0)
    summary["source_broken"] = whole.get("source_broken", 0)
    summary["window"] = images.get("window")
    summary["through_registry"] = images.get("through_registry")
    summary["sample_on_s3"] = images.get("sample_on_s3")
    summary["broken_in_source"] = sorted({broken["image"] for kind in ("sample_on_s3", "through_registry")
                                          for broken in (images.get(kind) or {}).get("broken_in_source", [])})
    return summary
