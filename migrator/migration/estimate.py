"""The dry-run report (``migrator report``): what ``run`` would upload and delete, and how long its read-only
window will take. Reads everything, changes nothing: no bucket write, no config write, no restart (the dry run's
pass may seed the journal from the bucket's listing)."""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass
from typing import Optional

from migrator.changefeed import PassTracker
from migrator.errors import Refused
from migrator.images import ImageGraph, check_through_registry
from migrator.migration.context import Context
from migrator.migration.preflight import preflight
from migrator.migration.proofs import PRODUCTION_TAGS
from migrator.migration.registry import target_s3
from migrator.migration.standby import standby_takes_pushes
from migrator.s3 import BUCKET_ERRORS
from migrator.sync import PassResult

S3_READS_PER_REGISTRY_REQUEST = 3  # a manifest GET or blob HEAD on the s3 driver: link, then blob stat or read
SECONDS_PER_OBJECT = 0.005  # assumed before an initial sync measured it


def dry_run_report(ctx: Context) -> dict:
    """What ``run`` would do, computed without writing to the bucket, the config or the registry."""
    diagnosis = preflight(ctx, canary=False)
    started = time.monotonic()
    result = ctx.engine.run_pass()
    pass_seconds = time.monotonic() - started
    guard = "ok"
    try:
        ctx.engine.check_deletes(result, ctx.plan.sync.max_delete_fraction, ctx.options.allow_mass_delete)
    except Refused as refusal:
        guard = f"would refuse: {refusal}"
    report = {
        "dry_run": True,
        "would_upload": {"objects": result.uploaded_objects, "bytes": result.uploaded_bytes,
                         "reasons": dict(result.reasons), "first_keys": result.first_uploads},
        "would_delete": {"objects": len(result.delete_candidates), "bytes": result.delete_candidate_bytes,
                         "first_keys": result.delete_candidates[:20], "guard": guard},
        "source_objects": result.source_objects,
        "source_bytes": result.source_bytes,
        "s3_requests": sum(ctx.bucket.counter.attempts.values()),
        "doctor": diagnosis.to_json(),  # the push is left to 'migrator doctor' and run
    }
    report["estimated_read_only_window_seconds"] = estimate_window(ctx, result, pass_seconds).to_json()
    if ctx.registry is not None:
        report["hints"] = ctx.hints
        report["config_diff"] = {"read_only": ctx.registry.diff(ctx.registry.target(on_s3=False, readonly=True)),
                                 "final": ctx.registry.diff(target_s3(ctx, readonly=False))}
    return report


@dataclass(frozen=True)
class WindowEstimate:
    """What the window will take, from what was measured (see ``estimate_window``)."""

    changes: int  # left for the window: at most sync.delta_stop_below
    seconds_per_object: float
    change_feed: bool  # the final pass re-syncs what the feed saw change; else it walks the whole tree
    walk_seconds: float
    seconds_per_restart: float
    restart_measured: bool
    restarts: int
    tags_pulled: int
    tag_pull_seconds: float
    restarts_outside: bool = False  # registry.front with a standby that takes pushes: no restart inside the window
    front_would_save: Optional[float] = None  # without registry.front: the seconds a front would take off

    @property
    def final_pass(self) -> float:
        copy = self.changes * self.seconds_per_object
        return copy if self.change_feed else self.walk_seconds + copy

    @property
    def proofs(self) -> float:
        return self.changes * self.seconds_per_object

    def to_json(self) -> dict:
        restarts = 0.0 if self.restarts_outside else self.restarts * self.seconds_per_restart
        total = self.final_pass + self.proofs + self.tag_pull_seconds + restarts
        return {"total": round(total, 1), "final_pass": round(self.final_pass, 1), "proofs": round(self.proofs, 1),
                "tag_pulls": round(self.tag_pull_seconds, 1), "restarts": round(restarts, 1),
                "restarts_outside": self.restarts_outside,
                "front_would_save": None if self.front_would_save is None else round(self.front_would_save, 1),
                "assumed": {"changes_left_for_the_window": self.changes,
                            "seconds_per_object": round(self.seconds_per_object, 4), "change_feed": self.change_feed,
                            "seconds_per_restart": round(self.seconds_per_restart, 2),
                            "restart_measured": self.restart_measured, "tags_pulled": self.tags_pulled}}


def estimate_window(ctx: Context, result: PassResult, pass_seconds: float) -> WindowEstimate:
    """What ``run``'s read-only window will take, restarts included, from what can be measured without changing
    anything: the final pass (with the change feed, the change left after the delta passes, at most
    ``sync.delta_stop_below`` objects, at the cost per object the initial sync measured; without it, a walk of
    the whole tree, as this dry run's pass took), the window's proofs, the registry's answers to the tag pulls
    asked at the cut-over (timed now against the registry as it is), and the window's restarts (as measured by an
    earlier run, else ``registry.restart_seconds``)."""
    initial = next((p for p in ctx.state.phases if p["name"] == "initial_sync" and p["uploaded_objects"]), None)
    per_object = initial["seconds"] / initial["uploaded_objects"] if initial else SECONDS_PER_OBJECT
    probe = PassTracker(ctx.plan.source, ctx.plan.sync.change_feed)
    feed = probe.feed is not None and result.first_linked is None
    probe.close()
    walk = ctx.state.last_pass_seconds if ctx.state.last_pass_seconds is not None else pass_seconds
    restart, measured, restarts, pulls, pull_seconds = 0.0, False, 0, 0, 0.0
    outside, would_save = False, None
    if ctx.registry is not None:
        command = ctx.registry.restart_command
        times = [r["seconds"] for r in ctx.state.restarts if r.get("command", command) == command]
        restart = sum(times) / len(times) if times else ctx.settings.restart_seconds
        measured = bool(times)
        restarts = window_restarts(ctx)
        pulls, pull_seconds = time_tag_pulls(ctx)
        takes_pushes = standby_takes_pushes(ctx.registry)
        outside = ctx.front is not None and takes_pushes
        if ctx.front is None:  # with one, no restart is inside (a read-only standby: the two a front needs are)
            would_save = (restarts if takes_pushes else restarts - 2) * restart
    return WindowEstimate(min(result.changes, ctx.plan.sync.delta_stop_below), per_object, feed, walk, restart,
                          measured, restarts, pulls, pull_seconds, outside, would_save)


def window_restarts(ctx: Context) -> int:
    """Restarts inside the window: read-only on, and s3 read-write; a third (s3 read-only, for the cut-over
    check) when the registry's binary cannot serve that check on loopback."""
    return 2 if ctx.managed.binary() else 3


def time_tag_pulls(ctx: Context) -> tuple[int, float]:
    """How long the window's tag pulls will take (a few changed tags and a few others; the whole sample
    without ``registry.binary``): timed now through the registry as it is (reads change nothing),
    plus what each request will cost once it reads from the bucket (about ``S3_READS_PER_REGISTRY_REQUEST``
    bucket reads each, at the latency of a HEAD timed now)."""
    count = PRODUCTION_TAGS if ctx.managed.binary() else 2 * ctx.settings.image_sample
    graph = ImageGraph(ctx.plan.source, ctx.plan.state_dir)
    try:
        tags = graph.sample_tags(count, ctx.state.image_sample_seed)
    finally:
        graph.close()
    started = time.monotonic()
    pulled = check_through_registry(ctx.managed.client, tags)
    on_filesystem = time.monotonic() - started
    requests = pulled.tags + pulled.manifests + pulled.blobs
    return len(tags), on_filesystem + requests * S3_READS_PER_REGISTRY_REQUEST * bucket_latency(ctx)


def bucket_latency(ctx: Context, samples: int = 16) -> float:
    """Seconds one small read from the bucket takes (HEAD of keys the journal knows, or of the prefix)."""
    rels = [row.rel for row in itertools.islice(ctx.journal.rows_in([("docker/", "docker0")]), samples)]
    started = time.monotonic()
    for rel in rels or ["docker/"] * 4:
        with contextlib.suppress(*BUCKET_ERRORS):
            ctx.bucket.head(rel)
    return (time.monotonic() - started) / max(len(rels), 4)
