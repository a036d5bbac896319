"""The seed procedure's optional first step: the registry's own garbage collection, without downtime for pulls.

``collect_garbage`` flips the registry read-only (the fast path on Omnibus: one restart), proves it (405), runs
``garbage-collect`` (``registry.binary``) on the config the registry runs with, and returns it to read-write,
proven by a write probe (202). What was eligible is listed by a ``--dry-run`` first (inside the same read-only
stretch, so nothing changes in between); what was removed is then checked on disk, not taken from the output.
Locked like ``run``; killed midway, the same command finishes the job; any failure puts the original config back.

Distribution 2.8's ``--delete-untagged`` counts the children of a multi-arch image (an OCI index, a manifest list)
as untagged and removes them with their layers. So what the dry run would delete is intersected with what every
tagged image needs (the image graph, read from the source): if a tagged image needs any of it, nothing is collected
(``Refused``, naming the images). After collecting, every tagged image is pulled through the registry, index
children included.
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
from dataclasses import asdict, dataclass, field

from migrator.errors import InvalidInput, Refused, StoppedSafely
from migrator.images import ImageGraph, check_through_registry, tag_needs
from migrator.layout import BLOBS
from migrator.migration.context import Context
from migrator.migration.safety import restore_original
from migrator.migration.window import ask_before_readonly, readonly_on
from migrator.state import now

log = logging.getLogger("migrator")

_ELIGIBLE_BLOB = re.compile(r"blob eligible for deletion: sha256:([0-9a-f]{64})")
_ELIGIBLE_MANIFESTS = re.compile(r"(\d+) blobs and (\d+) manifests eligible for deletion")
_ELIGIBLE_MANIFEST = re.compile(r"manifest eligible for deletion: .*?sha256:([0-9a-f]{64})")


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
    endangered: list = field(default_factory=list)  # "repository:tag" of tagged images the collection would break
    images_pulled: int = 0  # tagged images pulled through the registry after collecting

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Eligible:
    """What ``garbage-collect --dry-run`` would remove."""

    blobs: dict  # {hex digest: bytes on disk}
    manifests: int
    manifest_digests: set  # "sha256:..." of the manifests it names (in whichever repository)


def eligible(migration: Context, delete_untagged: bool) -> Eligible:
    """``garbage-collect --dry-run``, read from its output."""
    completed = run_collector(migration, delete_untagged, dry_run=True)
    output = completed.stdout + completed.stderr
    blobs = {}
    for digest in dict.fromkeys(_ELIGIBLE_BLOB.findall(output)):
        data = migration.plan.source / BLOBS / digest[:2] / digest / "data"
        blobs[digest] = data.stat().st_size if data.is_file() else 0
    summary = _ELIGIBLE_MANIFESTS.search(output)
    return Eligible(blobs, int(summary.group(2)) if summary else 0,
                    {"sha256:" + digest for digest in _ELIGIBLE_MANIFEST.findall(output)})


def tagged_images(migration: Context) -> list[tuple[str, str, str]]:
    """(repository, tag, digest) of every tag in the source."""
    graph = ImageGraph(migration.plan.source, migration.plan.state_dir)
    try:
        return [(repository, tag, digest) for repository, tag, _, digest in graph.tag_links()]
    finally:
        graph.close()


def endangered(migration: Context, tags: list[tuple[str, str, str]], doomed: Eligible) -> list[str]:
    """"repository:tag" of every tagged image that needs a manifest or blob the collection would remove. A manifest
    digest counts in every repository (the dry run does not say which it means): refusing too often is safe."""
    broken = []
    for repository, tag, digest in tags:
        manifests, blobs = tag_needs(migration.plan.source, digest)
        if manifests & doomed.manifest_digests or {blob[7:] for blob in blobs | manifests} & doomed.blobs.keys():
            broken.append(f"{repository}:{tag}")
    return broken


def run_collector(migration: Context, delete_untagged: bool, dry_run: bool) -> subprocess.CompletedProcess:
    completed = migration.managed.garbage_collect(delete_untagged, dry_run)
    if completed.returncode != 0:
        raise InvalidInput(f"{migration.managed.binary()} garbage-collect{' --dry-run' if dry_run else ''} failed "
                           f"(exit {completed.returncode}): {completed.stderr.strip()[-500:]}")
    return completed


def would_free(migration: Context, delete_untagged: bool = False) -> Collection:
    """What ``gc`` would remove now; changes nothing (the collector's dry run only reads)."""
    started = time.monotonic()
    doomed = eligible(migration, delete_untagged)
    return Collection(dry_run=True, blobs=len(doomed.blobs), bytes=sum(doomed.blobs.values()),
                      manifests=doomed.manifests, seconds=round(time.monotonic() - started, 3),
                      first_blobs=list(doomed.blobs)[:20],
                      endangered=endangered(migration, tagged_images(migration), doomed))


def collect_garbage(migration: Context, delete_untagged: bool) -> Collection:
    """Read-only on, collect, read-only off (see the module docstring)."""
    job = migration
    state = job.state
    if state.readonly_on_at is not None and state.gc_started_at is None:
        raise InvalidInput("a migration's read-only window is open (see 'migrator status'): finish it with "
                           "'migrator run' or end it with 'migrator rollback' before collecting garbage")
    job.managed.executable()  # before the flip: without it nothing can be collected
    ask_before_readonly(job, "Pushes are refused while the garbage is collected")
    if state.gc_started_at is None:
        state.gc_started_at = now()
        job.store.save(state)
    started = time.monotonic()
    readonly_on(job)
    read_only_from = state.readonly_on_at
    assert read_only_from is not None, "readonly_on records when the window opened"
    broken: list[str] = []
    try:
        doomed = eligible(job, delete_untagged)
        blobs = doomed.blobs
        log.info("garbage collection: %d blobs (%d bytes) and %d manifests eligible", len(blobs), sum(blobs.values()),
                 doomed.manifests)
        tags = tagged_images(job)
        broken = endangered(job, tags, doomed)
        if not broken:
            run_collector(job, delete_untagged, dry_run=False)
            pulled = check_through_registry(job.managed.client, tags)
    except (Exception, KeyboardInterrupt) as exc:
        _read_write(job, f"garbage collection failed: {exc}")
        raise StoppedSafely(f"garbage collection failed ({exc}); the registry is back to read-write on the "
                            "filesystem") from None
    if broken:
        _read_write(job, "garbage collection refused")
        raise Refused(f"garbage-collect{' --delete-untagged' if delete_untagged else ''} would remove what "
                      f"{len(broken)} tagged images need ({', '.join(broken[:10])}"
                      f"{' and more' if len(broken) > 10 else ''}); nothing was removed and the registry is back "
                      "to read-write. Distribution's collector counts the platform manifests of a multi-arch image "
                      "(an OCI index or manifest list) as untagged: run 'migrator gc' without --delete-untagged")
    removed = {digest: size for digest, size in blobs.items()
               if not (job.plan.source / BLOBS / digest[:2] / digest / "data").exists()}
    _read_write(job, "garbage collection done")
    if not pulled.ok:
        raise StoppedSafely(f"after garbage collection {len(pulled.failed)} tagged images no longer pull: "
                            f"{'; '.join(pulled.failed[:10])}. Restore them from a backup or push them again")
    return Collection(dry_run=False, blobs=len(removed), bytes=sum(removed.values()), manifests=doomed.manifests,
                      seconds=round(time.monotonic() - started, 3),
                      read_only_seconds=round(now() - read_only_from, 3), first_blobs=list(removed)[:20],
                      images_pulled=pulled.tags)


def _read_write(job: Context, why: str) -> None:
    """The registry back on its original config (read-write, proven) and the state out of gc."""
    restore_original(job, why)
    job.state.gc_started_at = None
    job.store.save(job.state)
