"""The sync engine: each shard is seeded, walked, diffed, copied and journaled on its own.

A pass runs ``sync_shard`` for every shard (the unit of work a cluster engine would schedule); uploads
run on the transfer pool while the walk goes on. The first pass lists the bucket once per shard to seed
the journal and runs shards in parallel; later passes compare a fresh walk with the journal only.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Optional

from migrator.errors import Refused
from migrator.failpoints import failpoint
from migrator.journal import Journal, JournalRow
from migrator.layout import Shard, canonical_link, is_blob_data, outermost, path_ranges, shards
from migrator.march import Action, Decision, Unit, decide, march_units, md5_of
from migrator.s3 import Bucket, list_shard
from migrator.transfer import Transfer
from migrator.walker import SourceFile, read_bytes, walk_path, walk_shard

if TYPE_CHECKING:
    from migrator.verify import Verifier, VerifyResult

log = logging.getLogger(__name__)

UPLOAD_CHUNK = 256
UPLOADS_IN_FLIGHT = 2 * UPLOAD_CHUNK  # queued on the transfer pool while the walk goes on
RECORD_CHUNK = 2000
FIRST_KEYS = 20
CHECKED_CHANGES = 100_000  # source changes a pass keeps by name, for checking the change feed
MULTIPART_META = "multipart_uploads_may_be_open"  # set before a large file's upload, cleared when none is left open
IN_FLIGHT_META = "dask_tasks_in_flight"  # shards a cluster task may have uploaded into without its rows recorded


@dataclass
class PassResult:
    """What one pass saw and did, summed over shards."""

    source_objects: int = 0
    source_bytes: int = 0
    uploaded_objects: int = 0
    uploaded_bytes: int = 0
    refreshed: int = 0
    reasons: Counter = field(default_factory=Counter)
    first_uploads: list = field(default_factory=list)
    delete_candidates: list = field(default_factory=list)
    delete_candidate_bytes: int = 0
    deleted_objects: int = 0
    source_changes: list = field(default_factory=list)  # keys that changed in the source (not retries), capped
    first_linked: Optional[str] = None  # a file reached through a symbolic link: the change feed cannot vouch for it

    def add(self, other: PassResult) -> None:
        self.source_objects += other.source_objects
        self.source_bytes += other.source_bytes
        self.uploaded_objects += other.uploaded_objects
        self.uploaded_bytes += other.uploaded_bytes
        self.refreshed += other.refreshed
        self.reasons.update(other.reasons)
        self.first_uploads = (self.first_uploads + other.first_uploads)[:FIRST_KEYS]
        self.delete_candidates.extend(other.delete_candidates)
        self.delete_candidate_bytes += other.delete_candidate_bytes
        self.deleted_objects += other.deleted_objects
        self.source_changes.extend(other.source_changes[: CHECKED_CHANGES - len(self.source_changes)])
        self.first_linked = self.first_linked or other.first_linked

    @property
    def changes(self) -> int:
        return self.uploaded_objects + len(self.delete_candidates)


def tasks_in_flight(journal: Journal) -> set[Shard]:
    """The shards of cluster tasks submitted whose rows were not recorded (``migrator.cluster``)."""
    return {Shard(name, prefix, tuple(excludes)) for name, prefix, excludes in
            json.loads(journal.get_meta(IN_FLIGHT_META) or "[]")}


def set_tasks_in_flight(journal: Journal, tasks: Iterable[Shard]) -> None:
    journal.set_meta(IN_FLIGHT_META, json.dumps(sorted([s.name, s.prefix, list(s.excludes)] for s in tasks)))


def _canonical(decision: Decision) -> bool:
    """A blob's data, or a digest directory's link holding the digest the directory names."""
    if is_blob_data(decision.rel):
        return True
    expected = canonical_link(decision.rel)
    return expected is not None and (decision.md5 or decision.recorded.md5) == md5_of(expected)


class Progress:
    """Callbacks the engine reports to (tqdm bars and live.json in the CLI; nothing in tests)."""

    def phase_started(self, name: str) -> None: ...
    def pass_started(self, number: int, expected_objects: Optional[int]) -> None: ...
    def totals(self, number: int, files: int, upload_bytes: int) -> None: ...
    def walked(self, count: int) -> None: ...
    def uploaded(self, count: int, nbytes: int) -> None: ...  # as the bucket stores them: parts too
    def listed(self, count: int) -> None: ...
    def checked(self, count: int) -> None: ...
    def close(self) -> None: ...


class SyncEngine:
    """Runs sync passes, the delete step and the window's spot checks against one bucket."""

    def __init__(self, source: Path, bucket: Bucket, journal: Journal, transfer: Transfer, shard_workers: int,
                 progress: Optional[Progress] = None, dry_run: bool = False):
        self.dry_run = dry_run  # decide and count, but write nothing to the bucket (the journal may be seeded)
        self.prove_changes = False  # inside the read-only window: keep the bucket's own proof of each change
        self.source = source
        self.bucket = bucket
        self.journal = journal
        self.transfer = transfer
        self.shard_workers = shard_workers
        self.progress = progress or Progress()
        self._multipart_noted = False  # MULTIPART_META set by this engine since its last clean-up
        self._claim_journal()

    def _claim_journal(self) -> None:
        """A journal describes one bucket and prefix; pointed elsewhere, it starts over."""
        identity = f"{self.bucket.settings.endpoint or 'aws'}|{self.bucket.settings.name}|{self.bucket.key_prefix}"
        known = self.journal.get_meta("bucket")
        if known != identity:
            if known is not None:
                log.warning("the plan now points at %s (journal was for %s): starting the journal over", identity, known)
                self.journal.unseed()
            self.journal.set_meta("bucket", identity)

    def seed(self, shard: Shard) -> None:
        """First contact with a shard: the journal becomes what the bucket lists (an earlier copy is reused)."""
        if self.journal.is_seeded(shard):
            return
        batch: list[JournalRow] = []
        for listed in list_shard(self.bucket, shard):
            batch.append(JournalRow(listed.rel, listed.size, listed.md5, recorded_ns=0))
            if len(batch) >= RECORD_CHUNK:
                self.journal.record(batch)
                self.progress.listed(len(batch))
                batch = []
        self.journal.record(batch)
        self.progress.listed(len(batch))
        self.journal.mark_seeded(shard)

    def sync_shard(self, shard: Shard, in_flight: Optional[deque] = None) -> PassResult:
        """Walk one seeded shard, decide every key against the journal, upload what differs, seal what is settled.

        Upload batches still running when it returns are left in ``in_flight`` when the caller passes one (the
        next shard's walk overlaps them); otherwise they are waited for."""
        units = march_units(walk_shard(self.source, shard, digest_dirs=True), self.journal.rows(shard))
        return self._sync_units(units, in_flight)

    def sync_paths(self, rels: Iterable[str]) -> PassResult:
        """Like a pass, for just these paths (a file, or everything under a directory), when nothing else can have
        changed since the last pass walked it. ``source_objects`` is still the whole source's count: the files
        under these paths plus the journal's rows everywhere else."""
        rels = outermost(rels)
        unchanged = self.journal.count() - sum(self.journal.count_in(path_ranges(rel)) for rel in rels)
        units = chain.from_iterable(
            march_units(walk_path(self.source, rel, digest_dirs=True), self.journal.rows_in(path_ranges(rel)))
            for rel in rels
        )
        result = self._sync_units(units)
        result.source_objects += unchanged
        self._abort_left_uploads()
        return result

    def _sync_units(self, units: Iterator[Unit], in_flight: Optional[deque] = None) -> PassResult:
        """Decide every unit, upload what differs, seal what is settled (see ``sync_shard``)."""
        result = PassResult()
        uploads: list[SourceFile] = []
        own_uploads = in_flight is None
        in_flight = deque() if in_flight is None else in_flight
        settled: list[JournalRow] = []  # refreshed stats and new seals, recorded in batches
        reported = 0

        def content_md5(rel: str) -> str:
            return md5_of(read_bytes(self.source, rel))

        for unit in units:
            if unit.sealed:
                result.source_objects += len(unit.sealed)
                result.source_bytes += sum(row.size for row in unit.sealed)
                continue
            decisions = []
            for src, row in unit.pairs:
                if src is not None:
                    result.source_objects += 1
                    result.source_bytes += src.size
                    if src.via_link and result.first_linked is None:
                        result.first_linked = src.rel
                    failpoint("walk")
                try:
                    decisions.append(decide(src, row, content_md5))
                except FileNotFoundError:
                    continue  # removed after the walk saw it: the next pass sees it gone
            seal = self._seal(unit, decisions)
            for decision in decisions:
                if decision.action in (Action.UPLOAD, Action.DELETE) and decision.reason != "unconfirmed" \
                        and len(result.source_changes) < CHECKED_CHANGES:
                    result.source_changes.append(decision.rel)
                if decision.action is Action.UPLOAD:
                    uploads.append(decision.file)
                    result.reasons[decision.reason] += 1
                elif decision.action is Action.REFRESH:
                    result.refreshed += 1
                    s = decision.file
                    settled.append(JournalRow(s.rel, s.size, decision.md5, s.mtime_ns, s.ctime_ns, s.ino, s.seen_ns,
                                              dir_stat=seal))
                elif decision.action is Action.KEEP and seal:
                    settled.append(decision.recorded._replace(dir_stat=seal))
                elif decision.action is Action.DELETE:
                    result.delete_candidates.append(decision.rel)
                    result.delete_candidate_bytes += max(decision.recorded.size, 0)
            if len(uploads) >= UPLOAD_CHUNK:
                self._upload(uploads, in_flight, result)
                uploads = []
            if len(settled) >= RECORD_CHUNK:
                self._settle(settled)
                settled = []
            if result.source_objects - reported >= 1000:
                self.progress.walked(result.source_objects - reported)
                reported = result.source_objects
        self._upload(uploads, in_flight, result)
        while own_uploads and in_flight:
            self._finish_uploads(in_flight.popleft(), result)
        self._settle(settled)
        self.progress.walked(result.source_objects - reported)
        return result

    def _seal(self, unit: Unit, decisions: list[Decision]) -> Optional[tuple[int, int, int]]:
        """The stat to seal a listed digest directory's rows with, if all of it is settled and canonical; None
        otherwise. Canonical: a blob's ``data``, or a link holding the digest its directory names. The registry
        rewrites links in place (the directory's stat unchanged), so only a link that already holds the one content
        the registry can write there may go unlisted."""
        directory = unit.directory
        if directory is None or not directory.sealable or self.dry_run or len(decisions) != len(unit.pairs):
            return None
        if all(decision.action in (Action.KEEP, Action.REFRESH) and _canonical(decision) for decision in decisions):
            return directory.stat
        return None

    def _settle(self, rows: list[JournalRow]) -> None:
        """Record refreshed stats and seals (the bucket is unchanged; only what we know of the source is new)."""
        if rows and not self.dry_run:
            self.journal.record(rows)

    def _upload(self, sources: list[SourceFile], in_flight: deque, result: PassResult) -> None:
        """Start a batch of uploads (intent committed first); finish the oldest batches beyond the bound."""
        if not sources:
            return
        if self.dry_run:
            result.uploaded_objects += len(sources)
            result.uploaded_bytes += sum(s.size for s in sources)
            result.first_uploads = (result.first_uploads + [s.rel for s in sources])[:FIRST_KEYS]
            return
        if any(s.size >= self.transfer.threshold for s in sources):
            self._multipart_started()
        self.journal.mark_unconfirmed(s.rel for s in sources)
        failpoint("intent-committed")
        in_flight.append([self.transfer.submit(s, self.prove_changes) for s in sources])
        while sum(map(len, in_flight)) > UPLOADS_IN_FLIGHT:
            self._finish_uploads(in_flight.popleft(), result)

    def _finish_uploads(self, futures: list[Future], result: PassResult) -> None:
        """Wait for a batch and record what the bucket now holds."""
        rows, proofs = [], []
        for future in futures:
            try:
                row, proof = future.result()
            except FileNotFoundError:
                continue  # gone since the walk; its unconfirmed row makes the next pass delete it
            rows.append(row)
            if proof:
                proofs.append(proof)
        self.journal.record(rows, proofs)
        result.uploaded_objects += len(rows)
        result.uploaded_bytes += sum(r.size for r in rows)
        result.first_uploads = (result.first_uploads + [r.rel for r in rows])[:FIRST_KEYS]

    def run_pass(self) -> PassResult:
        """One copy pass. Shards not yet seeded are seeded on the shard pool (listing waits on the network).

        A pass that seeded shards is a first copy, bound by uploads: its shards run on the shard pool. Later
        passes are bound by the walk, which is syscall-bound and holds the GIL in between: more walking threads
        make it slower (timed by hand on the bench's 400,000-object tree, nothing changed: 9.0 s on one thread,
        14.3 s on four), so they walk on one thread while uploads overlap on the transfer pool. A cluster engine
        would run ``sync_shard`` in processes: with ``sync.engine: dask`` online passes do
        (``migrator.cluster.DaskSyncEngine``); the window's pass (``prove_changes``) and dry runs stay here.
        """
        if not self.dry_run:
            self.list_unfinished_tasks()
        result = self._copy_pass()
        self._abort_left_uploads()
        return result

    def _copy_pass(self) -> PassResult:
        """The pass's walk and uploads, here on the shard pool (see ``run_pass``; Dask's engine runs them on its
        cluster)."""
        unseeded = [shard for shard in shards() if not self.journal.is_seeded(shard)]
        if unseeded and self._bucket_is_empty():  # a first copy into an empty prefix: no shard has anything to list
            self.journal.mark_seeded(*unseeded)
        total = PassResult()
        with ThreadPoolExecutor(self.shard_workers, thread_name_prefix="shard") as pool:
            for future in [pool.submit(self.seed, shard) for shard in unseeded]:
                future.result()
            if unseeded:
                for result in pool.map(self.sync_shard, shards()):
                    total.add(result)
                return total
        in_flight: deque = deque()
        for shard in shards():
            total.add(self.sync_shard(shard, in_flight))
        while in_flight:
            self._finish_uploads(in_flight.popleft(), total)
        return total

    def verify_online(self, verifier: Verifier, changed_since_ns: int) -> VerifyResult:
        """Online verification: ``verifier`` (with the journal) on this process's threads."""
        return verifier.run()

    def close(self) -> None:
        self.transfer.close()

    def _bucket_is_empty(self) -> bool:
        """Nothing under the prefix's ``docker/`` (one request instead of a listing per shard)."""
        return not self.bucket.first_keys("docker/", limit=1)

    def _multipart_started(self) -> None:
        """Note in the journal, before the first large upload, that multipart uploads may be left open (a kill)."""
        if not self._multipart_noted:
            self.journal.set_meta(MULTIPART_META, "1")
            self._multipart_noted = True

    def _abort_left_uploads(self) -> None:
        """Every upload of the pass has finished: a multipart upload still open was left by a killed run for a key no
        longer copied (or copied whole since), and is aborted (it would hold its parts' bytes in the bucket). Only
        after large uploads were started: a pass without any sends no request."""
        if self.dry_run or not self.journal.get_meta(MULTIPART_META):
            return
        aborted = self.transfer.abort_left_uploads()
        if aborted:
            log.info("aborted %d multipart uploads a previous run left open and this pass did not resume", aborted)
        self.journal.set_meta(MULTIPART_META, "")
        self._multipart_noted = False

    def list_unfinished_tasks(self) -> None:
        """Cluster tasks the journal still lists as in flight (a coordinator killed, a worker died under a task) may
        have uploaded into their shard what the journal does not say: keys it does not know, and new content under
        keys it knows (a retry that found the source back as the journal has it uploads nothing, and a KMS ETag
        cannot tell). The shard was recorded in flight before its task was submitted; now every key of it the
        bucket or the journal holds is marked unconfirmed, so this pass uploads (or deletes) each again."""
        unfinished = tasks_in_flight(self.journal)
        for shard in unfinished:
            known = {row.rel for row in self.journal.rows(shard)}
            found = [JournalRow(item.rel, item.size, item.md5, recorded_ns=0) for item in list_shard(self.bucket, shard)
                     if item.rel not in known]
            self.journal.record(found)
            self.journal.mark_unconfirmed(sorted(known | {row.rel for row in found}))
            log.warning("shard %s was in a cluster task whose answer never arrived (or whose worker died): its %d "
                        "keys are uploaded again this pass", shard.name, len(known) + len(found))
        if unfinished:
            set_tasks_in_flight(self.journal, ())

    def check_deletes(self, result: PassResult, max_fraction: float, allow_mass_delete: bool) -> None:
        """The delete guards; raises Refused (exit 3) with the reason and the override."""
        if not result.delete_candidates:
            return
        known = max(self.journal.count(), 1)
        if result.source_objects == 0:
            raise Refused(
                f"the source walk found no files but the bucket holds {known} objects: refusing to "
                f"delete {len(result.delete_candidates)} objects. Check 'source' points at the registry's rootdirectory."
            )
        if len(result.delete_candidates) > max_fraction * known and not allow_mass_delete:
            raise Refused(
                f"{len(result.delete_candidates)} delete candidates are {len(result.delete_candidates) / known:.1%} of "
                f"the {known} objects in the bucket, above sync.max_delete_fraction ({max_fraction:.0%}). Review them "
                "with 'migrator report', then re-run with --allow-mass-delete if they are meant to go."
            )

    def apply_deletes(self, rels: list[str]) -> int:
        """Delete the candidates (intent first, then DeleteObjects, then forget)."""
        for start in range(0, len(rels), RECORD_CHUNK):
            batch = rels[start : start + RECORD_CHUNK]
            self.journal.mark_unconfirmed(batch)
            deleted = self.transfer.delete(batch)
            failpoint("deleted")
            self.journal.forget(batch, deleted if self.prove_changes else ())
        return len(rels)

