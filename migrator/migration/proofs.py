"""Proofs: online verification and the image check, the sample pulled from the s3 config before the window, and
inside it the proof of the window's changes (typed differences) and of GitLab's metadata marker.

Reads the source, the bucket, the journal and the registry's answers; changes the state's ``verification`` and
``images`` figures, and the journal's window bookkeeping (rechecks, window start). Repairs (online) copy and
delete through ``copy``; a failed proof inside the window stops safely (``safety``)."""

from __future__ import annotations

import functools
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from migrator.errors import InvalidInput, StoppedSafely
from migrator.failpoints import failpoint
from migrator.images import ImageGraph, ImageResult, RegistryResult, check_through_registry, pull_problem
from migrator.layout import FILESYSTEM_IN_USE, REPOSITORIES
from migrator.migration.context import Context
from migrator.migration.copy import delete, sync_pass
from migrator.migration.registry import target_s3
from migrator.migration.safety import stop_safely
from migrator.net import free_port
from migrator.registry_config import S3_DRIVERS, storage_driver
from migrator.s3 import BUCKET_ERRORS, explain
from migrator.sync import PassResult
from migrator.verify import Difference, Verifier, VerifyResult, file_difference

log = logging.getLogger("migrator")

FIRST_PROBLEMS = 20  # differences named in a failed window proof
PRODUCTION_TAGS = 10  # changed tags asked in the window (the sample of all was asked before it), and of production


@dataclass(frozen=True)
class ObjectDifference:
    """One key where the bucket differs from the frozen source."""

    rel: str
    kind: Difference
    bucket_size: Optional[int] = None
    source_size: Optional[int] = None

    def __str__(self) -> str:
        if self.kind is Difference.EXTRA:
            return f"{self.rel} is still in the bucket but gone from the source"
        if self.kind is Difference.MISSING:
            return f"{self.rel} missing from the bucket"
        if self.kind is Difference.SIZE:
            return f"{self.rel} has size {self.bucket_size} in the bucket, {self.source_size} in the source"
        return f"{self.rel} has other content in the bucket"


@dataclass
class WindowCheck:
    """The window's changes against the bucket: the keys that differ, and the count when it does not add up."""

    differences: list[ObjectDifference] = field(default_factory=list)
    count_problem: Optional[str] = None

    def count(self, kind: Difference) -> int:
        return sum(found.kind is kind for found in self.differences)

    def problems(self) -> list[str]:
        """The first few problems, for the operator."""
        named = [str(found) for found in self.differences] + ([self.count_problem] if self.count_problem else [])
        return named[:FIRST_PROBLEMS]


def verification_summary(result: VerifyResult, method: str) -> dict:
    """The report's verification fields (counts exclude _uploads)."""
    return {"method": method, "source_objects": result.source_objects, "bucket_objects": result.bucket_objects,
            "missing": result.missing, "extra": result.extra, "mismatched": result.mismatched}


def online_verification(ctx: Context) -> PassResult:
    """List the whole bucket against the source; repair any difference and verify again."""
    repaired = PassResult()
    for attempt in range(3):
        result = verify(ctx, online=True)
        ctx.state.verification = verification_summary(result, "full listing (online)")
        if result.ok:
            images = check_images(ctx, online=True)
            record_images(ctx, "all", images.to_json())
            if not images.ok:
                raise StoppedSafely(graph_bug(images) + ". Nothing was lost: the registry still serves from "
                                    "the filesystem")
            if images.source_broken and ctx.plan.registry and ctx.plan.registry.broken_in_source == "block":
                raise StoppedSafely(
                    f"the source itself lacks {images.source_broken} objects its images name (first: "
                    f"{', '.join(images.source_broken_keys[:3])}), and registry.broken_in_source is block. The "
                    "registry was not touched: repair those images (push them again), or set "
                    "registry.broken_in_source: report to migrate them as they are")
            # what was excused as in flight is re-checked in the window, sealed or not, walked or fed
            ctx.journal.set_rechecks(result.in_flight_keys + images.in_flight_keys)
            ctx.state.online_verified_objects = result.bucket_objects
            ctx.journal.start_window()
            return repaired
        log.warning("online verification found %d missing, %d extra, %d mismatched, %d journal differences: "
                    "repairing (attempt %d); first: %s", result.missing, result.extra, result.mismatched,
                    result.journal_mismatched, attempt + 1,
                    ", ".join((result.missing_keys + result.extra_keys + result.mismatched_keys)[:3]))
        ctx.journal.unseed()  # the journal was wrong: list the bucket again
        if ctx.tracker:
            ctx.tracker.forget_baseline()
        repair = sync_pass(ctx)
        repair.deleted_objects = delete(ctx, repair)
        repaired.add(repair)
    raise StoppedSafely("the bucket still differs from the source after 3 repairs; the registry was not touched")


def verify(ctx: Context, online: bool = False, deep: bool = False, sample: Optional[int] = None) -> VerifyResult:
    """List the whole bucket against the source (online: and against the journal, changes in flight allowed)."""
    changed_since_ns = ctx.state.last_pass_started_ns or 0
    verifier = Verifier(ctx.plan.source, ctx.bucket, ctx.plan.sync.shard_workers, ctx.plan.sync.workers,
                        deep=deep, sample=sample, journal=ctx.journal if online else None,
                        changed_since_ns=changed_since_ns, progress=ctx.progress)
    try:
        return ctx.engine.verify_online(verifier, changed_since_ns) if online else verifier.run()
    except BUCKET_ERRORS as exc:
        raise InvalidInput(f"verification failed: {explain(exc, ctx.plan.bucket.name)}") from None


def check_images(ctx: Context, online: bool = False, window: bool = False) -> ImageResult:
    """The image-level proof against the bucket: every image (the bucket's listing; ``online``: changes since
    the last pass are in flight), or inside the window the tags, manifests and layers the window changed and
    every tag's link, against the bucket's answers (HEAD where it gave none)."""
    graph = ImageGraph(ctx.plan.source, ctx.plan.state_dir, ctx.progress)
    try:
        if window:
            changes = {rel: proof for rel, _, proof in ctx.journal.window_changes()}
            graph.add_window_changes(changes)
            graph.add_every_tag_link()
            result = graph.check_answers(ctx.bucket, lambda rel: bucket_answer(ctx, rel, changes))
        else:
            graph.add_everything()
            result = graph.check_listing(ctx.bucket, ctx.state.last_pass_started_ns or 0 if online else None)
    except BUCKET_ERRORS as exc:
        raise InvalidInput(f"image check failed: {explain(exc, ctx.plan.bucket.name)}") from None
    finally:
        graph.close()
    log.info("image check (%s): %d tags, %d manifests, %d blobs; %d missing, %d in flight, %d broken in the source",
             "window" if window else "online" if online else "frozen source", result.tags, result.manifests,
             result.blobs, result.missing, result.in_flight, result.source_broken)
    if result.source_broken:
        log.warning("the source itself lacks %d objects its images name (the registry cannot serve them either), "
                    "first: %s", result.source_broken, ", ".join(result.source_broken_keys[:3]))
    return result


def bucket_answer(ctx: Context, rel: str, changes: dict) -> Optional[tuple[int, Optional[str]]]:
    """(size, md5) the bucket already answered for ``rel``: its reply to the window's write (an ETag equal to the
    MD5 of the bytes sent), or, for a key the window did not touch, the online listing that proved the journal."""
    if rel in changes:
        proof = changes[rel]
        return (proof[1], proof[2]) if proof is not None and proof[0] else None
    return ctx.journal.confirmed_facts(rel)


def record_images(ctx: Context, kind: str, figures: dict) -> None:
    """Keep an image proof's figures for the report: ``all``, ``window``, ``sample_on_s3`` or
    ``through_registry``."""
    ctx.state.images = ctx.state.images | {kind: figures}
    ctx.store.save(ctx.state)


def graph_bug(result: ImageResult) -> str:
    """A key the image graph needs is not in the bucket though the key-by-key proof passed: a bug in that proof,
    said loudly rather than repaired quietly."""
    return (f"BUG: the image graph needs {result.missing} objects the bucket lacks or holds otherwise, though the "
            f"key-by-key proof passed (first: {', '.join(result.missing_keys[:3])}). Please report it with the log file")


def verify_images(ctx: Context) -> tuple[ImageResult, Optional[RegistryResult]]:
    """``verify --images``: the whole graph against the bucket; with the registry on s3, every tag through it."""
    result = check_images(ctx)
    through = None
    if ctx.registry is not None and storage_driver(ctx.registry.config.effective_storage())[0] in S3_DRIVERS:
        graph = ImageGraph(ctx.plan.source, ctx.plan.state_dir)
        try:
            tags = [(repository, tag, digest) for repository, tag, _, digest in graph.tag_links()]
        finally:
            graph.close()
        through = check_through_registry(ctx.registry.client, tags)
    return result, through


def prove_on_s3(ctx: Context) -> None:
    """Online, before the window: the registry's own binary serves the s3 config read-only on loopback, and a
    seeded sample of every tag must pull from the bucket as online verification proved it. That proves the
    settings (credentials, region, rootdirectory, redirect) and the copy by the registry's own answers while
    clients still push, so the window asks only for what it changed. A tag moved since the last pass began is
    in flight: excused here, asked for in the window."""
    if not ctx.managed.binary():
        log.warning("no registry.binary on this host: the sample of tags is asked inside the window, from the "
                    "registry restarted read-only on s3 (a third restart)")
        return
    tags = tags_to_pull(ctx, changed=0, others=ctx.settings.image_sample)
    try:
        result, where = ask_shadow(ctx, tags)
    except InvalidInput as exc:
        raise StoppedSafely(f"{exc}. The registry was not touched") from None
    result.excuse(functools.partial(tag_changed_since_last_pass, ctx))
    record_images(ctx, "sample_on_s3", result.to_json() | {"where": where})
    log.info("asked %s before the window: %d tags (%d in flight), %d manifests, %d blobs; %d failed", where,
             result.tags, result.in_flight, result.manifests, result.blobs, len(result.failed))
    if not result.ok:
        raise StoppedSafely(f"{len(result.failed)} of {result.tags} tags do not pull from {where} (first: "
                            f"{'; '.join(result.failed[:3])}). The registry was not touched: check the s3 settings "
                            "(registry.storage, bucket.*) and the shadow registry's log in the state directory")


def ask_shadow(ctx: Context, tags: list[tuple[str, str, str]]) -> tuple[RegistryResult, str]:
    """Pull ``tags`` from the registry's own binary serving the s3 config read-only on a loopback port."""
    where = f"{ctx.managed.binary()} serving the s3 config read-only on loopback"
    with ctx.managed.shadow(target_s3(ctx, readonly=True), ctx.plan.state_dir / "shadow", free_port()) as client:
        failpoint("shadow-started")
        result = check_through_registry(client, tags)
    # production still serves the filesystem (read-write before the window, read-only in it): ask it the same
    set_aside_broken_in_source(ctx, result, lambda *tag: pull_problem(ctx.managed.client, *tag))
    return result, where


def set_aside_broken_in_source(ctx: Context, result: RegistryResult,
                               on_filesystem: Callable[[str, str, str], Optional[str]]) -> None:
    """Tags that fail from the filesystem too are broken in the source, not by the bucket or the s3 settings:
    reported by image (output, report.json), not failed (``registry.broken_in_source: block`` stops the run
    on them before the window, in the online image check). Only when the image graph found the source broken
    somewhere: otherwise a pull that fails on both is no property of the source."""
    if not (ctx.state.images.get("all") or {}).get("source_broken"):
        return
    result.set_aside_broken_in_source(on_filesystem)
    if result.broken_in_source:
        log.warning("%d images are broken in the source (the registry on the filesystem fails the same pull; the "
                    "bucket is not to blame, they are migrated as they are): %s", len(result.broken_in_source),
                    "; ".join(f"{b['image']}: {b['problem']}" for b in result.broken_in_source[:5]))


def known_broken_in_source(ctx: Context) -> Callable[[str, str, str], Optional[str]]:
    """For pulls asked once production runs on s3: what the checks before found broken in the source."""
    known = {broken["image"]: broken["problem"] for kind in ("sample_on_s3", "through_registry")
             for broken in (ctx.state.images.get(kind) or {}).get("broken_in_source", [])}
    return lambda repository, tag, digest: known.get(f"{repository}:{tag}")


def tag_moved_on_s3(ctx: Context, repository: str, tag: str, digest: str) -> bool:
    """Once writes are accepted on s3: the bucket's link for the tag no longer names the frozen source's ``digest``
    (the window proved it did), so a client pushed or deleted the tag since; its answer is no fault of the copy."""
    try:
        return ctx.bucket.get_bytes(f"{REPOSITORIES}{repository}/_manifests/tags/{tag}/current/link") != digest.encode()
    except BUCKET_ERRORS as exc:
        return getattr(exc, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404")


def tag_changed_since_last_pass(ctx: Context, repository: str, tag: str, digest: str) -> bool:
    """The source's link for the tag was written since the last pass began, or no longer names ``digest``."""
    path = ctx.plan.source / f"{REPOSITORIES}{repository}/_manifests/tags/{tag}/current/link"
    try:
        return (path.stat().st_mtime_ns >= (ctx.state.last_pass_started_ns or 0)
                or path.read_bytes().decode(errors="replace") != digest)
    except OSError:
        return True


def tags_to_pull(ctx: Context, changed: int, others: int, fill_to: int = 0) -> list[tuple[str, str, str]]:
    """(repository, tag, digest): a seeded random sample of ``changed`` tags the window changed, and of
    ``others`` tags of all, then more of all until there are ``fill_to``. Every changed tag's objects are proven
    against the bucket by the window's image check; asking the registry proves it reads them, which fails for
    a setting or an unreachable bucket, not for one object."""
    graph = ImageGraph(ctx.plan.source, ctx.plan.state_dir)
    seed = ctx.state.image_sample_seed
    try:
        if changed:
            graph.add_window_changes(rel for rel, _, _ in ctx.journal.window_changes())
        window = sorted(graph.tags)
        tags = {(repository, tag): digest for repository, tag, digest in
                random.Random(seed).sample(window, min(changed, len(window)))}
        extra = graph.sample_tags(max(others, fill_to), seed) if max(others, fill_to) else []
        for index, (repository, tag, digest) in enumerate(extra):
            if index < others or len(tags) < fill_to:
                tags.setdefault((repository, tag), digest)
    finally:
        graph.close()
    log.info("tags to pull through the registry: %d (%d of the %d the window changed, a sample of %d of all, "
             "seed %d)", len(tags), min(changed, len(window)), len(window), others, seed)
    return [(repository, tag, digest) for (repository, tag), digest in tags.items()]


def verify_window(ctx: Context) -> None:
    """Prove the window's change: each key written or deleted checked by HEAD, and the count reconciled."""
    if ctx.options.full_verify or ctx.state.online_verified_objects is None:
        result = verify(ctx)
        ctx.state.verification = verification_summary(result, "full listing (read-only)")
        problems = [] if result.ok else [f"{result.missing} missing, {result.extra} extra, {result.mismatched} mismatched"]
    else:
        problems = check_window_changes(ctx).problems()
    ctx.store.save(ctx.state)
    if problems:
        stop_safely(ctx, "verification of the read-only window failed: " + "; ".join(problems))
    window = not ctx.options.full_verify and ctx.state.online_verified_objects is not None
    images = check_images(ctx, window=window)
    record_images(ctx, "window" if window else "all", images.to_json())
    if not images.ok:
        stop_safely(ctx, graph_bug(images))


def check_window_changes(ctx: Context) -> WindowCheck:
    """Each change proven by the bucket's own answer when it gave one (PutObject ETag, DeleteObjects), else
    by a HEAD; then the count reconciled without listing the bucket."""
    check = WindowCheck()
    delta = heads = 0
    changes = ctx.journal.window_changes()
    for rel, existed, proof in changes:
        path = ctx.plan.source / rel
        delta += int(path.is_file()) - int(existed)
        if proof is not None:
            present, size, md5 = proof
            if file_difference(rel, path, size if present else None, functools.partial(_known, md5)) is None:
                continue
        heads += 1
        found = bucket_difference(ctx, rel, path)
        if found is not None:
            check.differences.append(found)
    log.info("window changes checked: %d by the bucket's own answers, %d by HEAD", len(changes) - heads, heads)
    source_count = ctx.state.final_source_objects
    expected = (ctx.state.online_verified_objects or 0) + delta
    ctx.state.verification = {
        "method": "online listing + the window's changes checked by HEAD",
        "source_objects": source_count, "bucket_objects": expected,
        "missing": check.count(Difference.MISSING), "extra": check.count(Difference.EXTRA),
        "mismatched": check.count(Difference.SIZE) + check.count(Difference.CONTENT),
    }
    if expected != source_count:
        check.count_problem = (f"count: {ctx.state.online_verified_objects} proven online + {delta} changed = "
                               f"{expected}, but the frozen source has {source_count} files (excluding _uploads)")
    return check


def _known(md5: Optional[str]) -> Optional[str]:
    return md5


def bucket_difference(ctx: Context, rel: str, path: Path) -> Optional[ObjectDifference]:
    """How the bucket's object (HEAD; its content read when the ETag is no MD5) differs from the frozen source
    file, or None."""
    head = ctx.bucket.head(rel)
    kind = file_difference(rel, path, None if head is None else head["ContentLength"],
                           lambda: ctx.bucket.head_md5(rel, head or {}))
    if kind is None:
        return None
    return ObjectDifference(rel, kind, None if head is None else head["ContentLength"],
                            path.stat().st_size if path.is_file() else None)


def prove_lockfile(ctx: Context) -> None:
    """GitLab's registry starts on an empty metadata database when the bucket lacks the filesystem-in-use
    marker the source has: it must be in the bucket, as in the source, before the registry runs on s3."""
    path = ctx.plan.source / FILESYSTEM_IN_USE
    if not path.is_file():
        return
    problem = bucket_difference(ctx, FILESYSTEM_IN_USE, path)
    if problem is not None:
        stop_safely(ctx, f"GitLab's metadata marker is not in the bucket as in the source ({problem}); on s3 the "
                         "registry would start on an empty database")
    log.info("GitLab's filesystem-in-use marker is in the bucket")
