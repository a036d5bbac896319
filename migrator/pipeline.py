"""The zero-downtime migration as one resumable pipeline.

Read ``Migration.run`` top to bottom: each phase is idempotent and recorded in the state directory
when it finishes, so after a crash the same command continues where it stopped.

    preflight → initial sync → delta passes → online verification
    → read-only on → final sync + delete → verify the window's change
    → cut-over to s3 → read-only off → done
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
import math
import os
import random
import shutil
import time
import urllib.parse
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from migrator.changefeed import PassTracker
from migrator.cluster import SPLIT_ABOVE, DaskEngine, Job
from migrator.errors import InvalidInput, Refused, RestoreFailed, StoppedSafely
from migrator.failpoints import failpoint
from migrator.html_report import write_html
from migrator.images import ImageGraph, ImageResult, RegistryResult, check_through_registry, pull_problem
from migrator.journal import Journal
from migrator.layout import FILESYSTEM_IN_USE, REPOSITORIES, is_blob_data, is_uploads, outermost
from migrator.local import free_port
from migrator.managed import ManagedRegistry, Restart, open_registry, restart_command_problem
from migrator.march import md5_of
from migrator.plan import Plan
from migrator.registry_config import S3_DRIVERS, TargetState, filesystem_root, storage_driver
from migrator.s3 import BUCKET_ERRORS, Bucket, explain, list_pages, open_bucket
from migrator.state import RunState, StateStore, now
from migrator.sync import PassResult, Progress, SyncEngine
from migrator.transfer import Transfer, s3_extra_args
from migrator.verify import Verifier, VerifyResult

log = logging.getLogger("migrator")

PROBE_REPOSITORY = "migrator-probe/readonly-check"
CLOCK_SKEW_SECONDS = 30
ONLINE_PHASES = ("delta_passes", "online_verification", "prove_on_s3")
PASS_HISTORY = 100  # passes kept for the report's timeline
S3_READS_PER_REGISTRY_REQUEST = 3  # a manifest GET or blob HEAD on the s3 driver: link, then blob stat or read
PRODUCTION_TAGS = 10  # changed tags asked in the window (the sample of all was asked before it), and of production


@dataclass
class Options:
    yes: bool = False
    allow_mass_delete: bool = False
    full_verify: bool = False
    confirm: Callable[[str], bool] = lambda question: False


class Migration:
    """One plan's bucket, journal, registry config and state, and the phases that use them."""

    def __init__(self, plan: Plan, progress: Optional[Progress] = None, options: Optional[Options] = None,
                 dry_run: bool = False):
        self.plan = plan
        self.dry_run = dry_run
        self.options = options or Options()
        self.progress = progress or Progress()
        self.store = StateStore(plan.state_dir)
        self.state = RunState()
        self.bucket: Optional[Bucket] = None
        self.engine: Optional[SyncEngine] = None
        self.journal: Optional[Journal] = None
        self.registry: Optional[ManagedRegistry] = None
        self.tracker: Optional[PassTracker] = None  # set by ``run``: the change feed the final pass may use
        self.hints: list[str] = []  # set by preflight: settings worth changing (``report`` lists them)

    # --- the pipeline ----------------------------------------------------------------------

    def run(self) -> dict:
        """Everything, resumable. Returns the final report."""
        if self.state.gc_started_at is not None:
            raise InvalidInput("'migrator gc' did not finish (the registry may be read-only): re-run 'migrator gc' "
                               "to finish it first")
        self.preflight(canary=True)
        if self.registry is not None:
            self.prove_mode_on_resume()
        self.tracker = PassTracker(self.plan.source, self.plan.sync.change_feed)
        if self.state.readonly_on_at is None:  # still online: what was proven online may be stale
            self.state.done = [p for p in self.state.done if p not in ONLINE_PHASES]
        self.phase("initial_sync", self.initial_sync)
        self.phase("delta_passes", self.delta_passes)
        self.phase("online_verification", self.online_verification)
        if self.plan.registry is None:
            log.warning("NO REGISTRY IN THE PLAN: synced, deleted and verified only; no read-only flip, no cut-over")
            self.phase("final_sync", self.final_sync_and_delete)
            self.phase("verify_window", self.verify_window)
            return self.finish()
        self.phase("prove_on_s3", self.prove_on_s3)
        self.phase("readonly_on", self.readonly_on)
        with self.back_to_filesystem_on_failure():
            self.phase("final_sync", self.final_sync_and_delete)
            self.phase("verify_window", self.verify_window)
            self.phase("cutover", self.cutover)
            self.phase("readonly_off", self.readonly_off)
        if self.registry.reconfigures_after_window:
            self.phase("reconfigure", self.reconfigure)
        return self.finish()

    def prove_mode_on_resume(self) -> None:
        """A run resuming inside the window proves the registry's mode before any window step. A restore the last run
        started (or could not prove) is finished first; a registry that takes writes though the state says it was
        flipped read-only is online again (a restore's restart ran, or it came up late), so the window starts over
        from the flip, after delta passes that copy what was pushed meanwhile."""
        if self.state.readonly_on_at is None or self.state.readonly_off_at is not None:
            return
        if self.state.restore_problem is not None:
            log.warning("the last run's restore of the original config is not proven (%s): finishing it first",
                        self.state.restore_problem)
            problem = f"resumed after an unproven restore ({self.state.restore_problem})"
            self.refuse_to_strand_writes(problem)
            self.restore_original(problem)
            return
        if self.state.writes_on_s3_since is not None or not self.state.is_done("readonly_on"):
            return  # read-only off (202) or the flip (405) is redone, and proves its own mode
        status = self.registry.client.write_probe(PROBE_REPOSITORY)
        if status == 405:
            log.info("resuming inside the read-only window: a write probe got HTTP 405, the registry is read-only")
            return
        if status == 401:
            log.warning("WRITE PROBE COULD NOT PROVE THE REGISTRY IS STILL READ-ONLY: HTTP 401. Set MIGRATOR_PROBE_USER "
                        "and MIGRATOR_PROBE_PASSWORD to a user allowed to push")
            return
        log.warning("resuming inside the read-only window, but a write probe got HTTP %s, not 405: the registry takes "
                    "writes, so the window starts over from the flip", status)
        if all(original == current for _, original, current in self.registry.files(None)):
            self.sweep_probe_leftovers(on_s3=False)  # already on the original config, proven writable: no restart
            self.reset_to_online()
        else:
            self.restore_original(f"resumed inside the read-only window with the registry taking writes (HTTP {status})")

    @contextmanager
    def back_to_filesystem_on_failure(self) -> Iterator[None]:
        """Inside the window no write reached the bucket: any failure returns the registry to the filesystem,
        read-write, so an outage of the bucket or a bug never leaves the registry read-only."""
        try:
            yield
        except (StoppedSafely, RestoreFailed):
            raise
        except (Exception, KeyboardInterrupt) as exc:
            if self.state.readonly_off_at is not None:
                raise
            log.error("failure inside the read-only window (%s): returning the registry to the filesystem", exc)
            self.stop_safely(f"stopped inside the read-only window: {exc}")

    # --- set-up ----------------------------------------------------------------------------

    def open(self, lock: bool) -> None:
        """State directory (locked for runs that change things), journal, bucket client, engine."""
        self.store.ensure_directory()
        if lock:
            self.store.lock()
        self.state = self.store.load()
        self.journal = Journal(self.plan.state_dir / "journal.sqlite")
        self.bucket = open_bucket(self.plan.bucket, self.plan.sync, self.plan.key_prefix)
        storage = self.plan.registry.storage if self.plan.registry else {}
        transfer = Transfer(self.bucket, self.plan.source, self.plan.sync, s3_extra_args(storage))
        self.engine = SyncEngine(self.plan.source, self.bucket, self.journal, transfer,
                                 self.plan.sync.shard_workers, self.progress, dry_run=self.dry_run)
        if self.plan.sync.engine == "dask":
            self.engine.cluster = DaskEngine(
                Job(str(self.plan.source), self.plan.bucket, self.plan.sync, self.plan.key_prefix,
                    tuple(transfer.extra_args.items()), split_above=self.plan.sync.dask.get("split_above", SPLIT_ABOVE)),
                self.plan.sync.dask.get("scheduler"), self.plan.sync.dask.get("processes"))
        if self.plan.registry:
            self.registry = open_registry(self.plan.registry, self.plan.bucket, self.plan.key_prefix,
                                          self.plan.state_dir / "config-backup")

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
        if self.engine is not None:
            self.engine.transfer.close()
            if self.engine.cluster is not None:
                self.engine.cluster.close()
        self.store.unlock()

    def preflight(self, canary: bool) -> None:
        """Everything checked before anything changes; any failure is exit 2 with nothing changed."""
        with self.bucket.counter.phase_scope("preflight"):
            self.check_bucket(canary)
        if self.plan.registry is not None:
            self.check_registry()

    def check_registry(self) -> None:
        """The registry's config, restart command, credentials and answers: what every registry change relies on."""
        self.check_registry_config()
        if self.plan.registry.write_credentials and not (
            os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")
        ):
            raise InvalidInput("registry.write_credentials is true but AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not set")
        command = self.registry.restart_command
        problem = restart_command_problem(command)
        if problem:
            key = "registry.restart" if self.plan.registry.restart else "registry.gitlab_ctl"
            raise InvalidInput(f"the restart command {command!r} {problem}; fix {key}")
        self.warn_about_redirects()
        self.advise_on_registry_settings()
        resuming = bool(self.state.done) and self.state.outcome is None
        wait = self.plan.registry.health_timeout_seconds if resuming else 5  # a crash may have left a restart running
        if not self.registry.client.wait_healthy(wait):
            raise InvalidInput(
                f"the registry at {self.plan.registry.url} does not answer GET /v2/ with 200 or 401; "
                "check registry.url and that the registry is running"
            )
        if self.state.uses_database is None:
            self.state.uses_database = self.source_uses_database()
        if self.registry.client.health() == 401:
            given = "rejects MIGRATOR_PROBE_USER's credentials" if self.registry.client.user else "asks for credentials"
            raise InvalidInput(
                f"the registry at {self.plan.registry.url} {given} (HTTP 401), so its read-only state and the image "
                "pulls after the cut-over cannot be proven: set MIGRATOR_PROBE_USER and MIGRATOR_PROBE_PASSWORD to a "
                "user allowed to push and pull"
            )

    def source_uses_database(self) -> bool:
        """Whether GitLab's registry runs with its metadata database now: its answer to GET /v2/ when it gives one,
        else the original config's ``database.enabled`` (true only; 'prefer' without the database is off)."""
        header = self.registry.database_header()
        if header is not None:
            return header.lower() == "true"
        database = self.registry.config.original_running().get("database") or {}
        return database.get("enabled") in (True, "true")

    def advise_on_registry_settings(self) -> None:
        """Hints for settings that make restarts or the bucket harder on clients than they need to be (logged, and
        kept for ``report``)."""
        self.hints = []
        if self.registry.draintimeout() is None:
            self.hints.append("http.draintimeout is unset (0) in the registry config, so each restart cuts requests "
                              "in flight; e.g. 'draintimeout: 10s' under http lets them finish (it lengthens a restart)")
        storage = self.plan.registry.storage
        gitlab = self.plan.registry.format == "omnibus" or self.plan.bucket.driver == "s3_v2"
        if gitlab and self.plan.bucket.endpoint:
            missing = [key for key in ("pathstyle", "checksum_disabled") if key not in storage]
            if missing:
                self.hints.append("an S3-compatible endpoint with GitLab's registry: its s3_v2 driver (GitLab 19 runs "
                                  "s3 as s3_v2) sends CRC64NVME checksums and path-style requests unless told; set "
                                  f"{' and '.join(f'{k}: true' for k in missing)} under registry.storage if the store "
                                  "needs it")
        if self.plan.bucket.ca_bundle and "skipverify" not in storage:
            self.hints.append("bucket.ca_bundle is set, but the registry's s3 driver takes no CA bundle: it trusts its "
                              "host's CAs. Add the certificate to the registry host's trust store, or set "
                              "skipverify: true under registry.storage (the check on s3 before the window fails "
                              "otherwise)")
        for hint in self.hints:
            log.info("hint: %s", hint)
        if gitlab and storage.get("v4auth") is False:
            raise InvalidInput("registry.storage.v4auth is false, but GitLab's registry removed SigV2 in 18.0: remove "
                               "v4auth from registry.storage")

    def warn_about_redirects(self) -> None:
        """After the cut-over the registry answers blob pulls with a 307 to the bucket's endpoint, unless
        ``registry.redirect.disable``: say so, loudly when clients elsewhere cannot reach that endpoint."""
        if self.plan.registry.redirect.get("disable"):
            return
        endpoint = self.plan.bucket.endpoint
        host = urllib.parse.urlparse(endpoint).hostname if endpoint else None
        try:
            private = host is not None and (host == "localhost" or ipaddress.ip_address(host).is_private
                                            or ipaddress.ip_address(host).is_loopback)
        except ValueError:
            private = False
        where = endpoint or f"S3 in {self.plan.bucket.region}"
        if private:
            log.warning("AFTER THE CUT-OVER, BLOB PULLS ARE REDIRECTED (307) TO %s, a loopback or private address that "
                        "clients on other hosts may not reach. Set registry.redirect: {disable: true} to have the "
                        "registry serve blobs itself, or use an endpoint clients reach", where)
        else:
            log.info("after the cut-over, blob pulls are redirected (307) to %s: clients must reach it "
                     "(registry.redirect: {disable: true} makes the registry serve blobs itself)", where)

    def check_bucket(self, canary: bool) -> None:
        """The bucket answers with these credentials; the canary proves put/get/list/delete on the prefix."""
        client = open_bucket(self.plan.bucket, self.plan.sync, self.plan.key_prefix, max_attempts=2).client
        name = self.plan.bucket.name
        key = f"{self.plan.key_prefix}.migrator-canary/{uuid.uuid4()}"
        try:
            client.head_bucket(Bucket=name)
            self.bucket.check_etags(self.engine.transfer.extra_args)
            if not canary:
                client.list_objects_v2(Bucket=name, Prefix=self.plan.key_prefix + "docker/", MaxKeys=1)
                return
            body = b"migrator canary " + key.encode()
            keys = [key, key + "-multipart"]  # the copy's two upload paths, with its headers and checksum setting
            try:
                if self.engine.transfer.put(key, body).strip('"') != md5_of(body):
                    self.bucket.etags_are_md5 = False  # this store's ETags are no MD5s: content is read to prove it
                self.engine.transfer.put_multipart(keys[1], body)
                for stored in keys:
                    if client.get_object(Bucket=name, Key=stored)["Body"].read() != body:
                        raise InvalidInput(f"bucket {name!r} returned other bytes for the canary object {stored}; "
                                           "check bucket.endpoint")
                listed = client.list_objects_v2(Bucket=name, Prefix=key).get("KeyCount", 0)
                if listed != len(keys):
                    raise InvalidInput(f"bucket {name!r} does not list the canary objects it just stored")
            finally:  # DeleteObjects, as the delete step sends it
                client.delete_objects(Bucket=name, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
            canaries = f"{self.plan.key_prefix}.migrator-canary/"
            for leftover in client.list_objects_v2(Bucket=name, Prefix=canaries).get("Contents", []):
                client.delete_object(Bucket=name, Key=leftover["Key"])  # from a run killed mid-preflight
        except BUCKET_ERRORS as exc:
            raise InvalidInput(explain(exc, name)) from None

    def check_registry_config(self) -> None:
        storage = self.registry.config.effective_storage()
        driver, _ = storage_driver(storage)
        if self.state.is_done("cutover"):
            return  # resuming after the cut-over: the registry is on s3 by our hand
        if self.state.readonly_on_at is not None:  # mid-migration: the file holds our edit, judge the original
            storage = self.registry.config.original_storage()
            driver, _ = storage_driver(storage)
        if driver != "filesystem":
            hint = "already migrated? see 'migrator status'" if driver in S3_DRIVERS else "only filesystem storage is migrated"
            raise InvalidInput(f"the registry config {self.registry.config.path} uses the {driver} driver, not "
                               f"filesystem ({hint})")
        root = Path(filesystem_root(storage)).resolve()
        if root != self.plan.source:
            raise InvalidInput(
                f"registry.config ({self.registry.config.running_path}) has storage.filesystem.rootdirectory {root}, "
                f"but the plan's source is {self.plan.source}: they must be the same directory. Set 'source' to "
                f"{root}, or registry.config to the config of the registry that serves {self.plan.source}"
            )

    # --- phases ----------------------------------------------------------------------------

    def phase(self, name: str, work: Callable[[], Optional[PassResult]]) -> None:
        """Run a phase unless done; record its report entry and mark it done (fsync + rename)."""
        if self.state.is_done(name):
            log.info("phase %s: already done", name)
            return
        log.info("phase %s: starting", name)
        self.progress.phase_started(name)
        started = time.monotonic()
        started_at = now()
        with self.bucket.counter.phase_scope(name):
            result = work()
        failpoint(f"before-done:{name}")
        entry = {
            "name": name,
            "started_at": started_at,
            "seconds": round(time.monotonic() - started, 3),
            "uploaded_objects": result.uploaded_objects if result else 0,
            "uploaded_bytes": result.uploaded_bytes if result else 0,
            "deleted_objects": result.deleted_objects if result else 0,
            "s3_requests": self.bucket.counter.attempts[name],
            "s3_retries": self.bucket.counter.retries(name),
        }
        self.state.phases = [p for p in self.state.phases if p["name"] != name] + [entry]
        self.state.done.append(name)
        self.store.save(self.state)
        log.info(
            "phase %s: done in %.1fs, %d objects / %d bytes uploaded, %d deleted, %d S3 requests (%d retries)",
            name, entry["seconds"], entry["uploaded_objects"], entry["uploaded_bytes"], entry["deleted_objects"],
            entry["s3_requests"], entry["s3_retries"],
        )

    def initial_sync(self) -> PassResult:
        """The first online copy: the bucket is listed once per shard, then everything missing is copied."""
        return self.sync_pass()

    def sync_pass(self, paths: Optional[list[str]] = None) -> PassResult:
        """A copy pass over the whole tree, or over just ``paths`` when the change feed vouches for the rest."""
        started = time.monotonic()
        self.state.last_pass_started_ns = time.time_ns()
        self.progress.pass_started(self.state.passes + 1, self.journal.count())
        if self.tracker and paths is None:
            self.tracker.pass_started()
        try:
            result = self.engine.run_pass() if paths is None else self.engine.sync_paths(paths)
        except BUCKET_ERRORS as exc:
            raise InvalidInput(f"copy pass failed: {explain(exc, self.plan.bucket.name)}") from None
        if self.tracker and paths is None:
            self.tracker.pass_finished(result.source_changes, result.delete_candidates, result.first_linked)
        self.state.passes += 1
        self.state.last_pass_seconds = round(time.monotonic() - started, 3)
        self.state.pass_history = (self.state.pass_history + [{
            "pass": self.state.passes, "phase": self.bucket.counter.phase, "started_at": self.state.last_pass_started_ns / 1e9,
            "seconds": self.state.last_pass_seconds, "files": result.source_objects, "uploaded": result.uploaded_objects,
            "delete_candidates": len(result.delete_candidates)}])[-PASS_HISTORY:]
        self.state.last_pass_changes = result.changes
        self.store.save(self.state)
        log.info("pass %d: %d files walked, %d uploaded (%s), %d delete candidates, %.1fs",
                 self.state.passes, result.source_objects, result.uploaded_objects,
                 ", ".join(f"{n} {r}" for r, n in result.reasons.items()) or "nothing changed",
                 len(result.delete_candidates), self.state.last_pass_seconds)
        return result

    def delta_passes(self) -> PassResult:
        """Online passes until one finds fewer changes than the threshold: what is left for the window shrinks. The
        delete guard is asked about the last pass's candidates here, online: a mass delete the window's final pass
        would refuse is refused now (exit 3), before any flip or restart."""
        total = PassResult()
        result = None
        for _ in range(self.plan.sync.max_delta_passes):
            result = self.sync_pass()
            total.add(result)
            if result.changes < self.plan.sync.delta_stop_below:
                break
        if result is not None:
            self.engine.check_deletes(result, self.plan.sync.max_delete_fraction, self.options.allow_mass_delete)
        return total

    def online_verification(self) -> PassResult:
        """List the whole bucket against the source; repair any difference and verify again."""
        repaired = PassResult()
        for attempt in range(3):
            result = self.verify(online=True)
            self.state.verification = verification_summary(result, "full listing (online)")
            if result.ok:
                images = self.check_images(online=True)
                self.record_images("all", images.to_json())
                if not images.ok:
                    raise StoppedSafely(self.graph_bug(images) + ". Nothing was lost: the registry still serves from "
                                        "the filesystem")
                if images.source_broken and self.plan.registry and self.plan.registry.broken_in_source == "block":
                    raise StoppedSafely(
                        f"the source itself lacks {images.source_broken} objects its images name (first: "
                        f"{', '.join(images.source_broken_keys[:3])}), and registry.broken_in_source is block. The "
                        "registry was not touched: repair those images (push them again), or set "
                        "registry.broken_in_source: report to migrate them as they are")
                # what was excused as in flight is re-checked in the window, sealed or not, walked or fed
                self.journal.set_rechecks(result.in_flight_keys + images.in_flight_keys)
                self.state.online_verified_objects = result.bucket_objects
                self.journal.start_window()
                return repaired
            log.warning("online verification found %d missing, %d extra, %d mismatched, %d journal differences: "
                        "repairing (attempt %d); first: %s", result.missing, result.extra, result.mismatched,
                        result.journal_mismatched, attempt + 1,
                        ", ".join((result.missing_keys + result.extra_keys + result.mismatched_keys)[:3]))
            self.journal.unseed()  # the journal was wrong: list the bucket again
            if self.tracker:
                self.tracker.forget_baseline()
            result = self.sync_pass()
            result.deleted_objects = self.delete(result)
            repaired.add(result)
        raise StoppedSafely("the bucket still differs from the source after 3 repairs; the registry was not touched")

    def check_images(self, online: bool = False, window: bool = False) -> ImageResult:
        """The image-level proof against the bucket: every image (the bucket's listing; ``online``: changes since
        the last pass are in flight), or inside the window the tags, manifests and layers the window changed and
        every tag's link, against the bucket's answers (HEAD where it gave none)."""
        graph = ImageGraph(self.plan.source, self.plan.state_dir, self.progress)
        try:
            if window:
                changes = {rel: proof for rel, _, proof in self.journal.window_changes()}
                graph.add_window_changes(changes)
                graph.add_every_tag_link()
                result = graph.check_answers(self.bucket, lambda rel: self.bucket_answer(rel, changes))
            else:
                graph.add_everything()
                result = graph.check_listing(self.bucket, self.state.last_pass_started_ns or 0 if online else None)
        except BUCKET_ERRORS as exc:
            raise InvalidInput(f"image check failed: {explain(exc, self.plan.bucket.name)}") from None
        finally:
            graph.close()
        log.info("image check (%s): %d tags, %d manifests, %d blobs; %d missing, %d in flight, %d broken in the source",
                 "window" if window else "online" if online else "frozen source", result.tags, result.manifests,
                 result.blobs, result.missing, result.in_flight, result.source_broken)
        if result.source_broken:
            log.warning("the source itself lacks %d objects its images name (the registry cannot serve them either), "
                        "first: %s", result.source_broken, ", ".join(result.source_broken_keys[:3]))
        return result

    def bucket_answer(self, rel: str, changes: dict) -> Optional[tuple[int, Optional[str]]]:
        """(size, md5) the bucket already answered for ``rel``: its reply to the window's write (an ETag equal to the
        MD5 of the bytes sent), or, for a key the window did not touch, the online listing that proved the journal."""
        if rel in changes:
            proof = changes[rel]
            return (proof[1], proof[2]) if proof is not None and proof[0] else None
        return self.journal.confirmed_facts(rel)

    def record_images(self, kind: str, figures: dict) -> None:
        """Keep an image proof's figures for the report: ``all``, ``window``, ``sample_on_s3`` or
        ``through_registry``."""
        self.state.images = self.state.images | {kind: figures}
        self.store.save(self.state)

    def graph_bug(self, result: ImageResult) -> str:
        """A key the image graph needs is not in the bucket though the key-by-key proof passed: a bug in that proof,
        said loudly rather than repaired quietly."""
        return (f"BUG: the image graph needs {result.missing} objects the bucket lacks or holds otherwise, though the "
                f"key-by-key proof passed (first: {', '.join(result.missing_keys[:3])}). Please report it with the log file")

    def verify_images(self) -> tuple[ImageResult, Optional[RegistryResult]]:
        """``verify --images``: the whole graph against the bucket; with the registry on s3, every tag through it."""
        result = self.check_images()
        through = None
        if self.registry is not None and storage_driver(self.registry.config.effective_storage())[0] in S3_DRIVERS:
            graph = ImageGraph(self.plan.source, self.plan.state_dir)
            try:
                tags = [(repository, tag, digest) for repository, tag, _, digest in graph.tag_links()]
            finally:
                graph.close()
            through = check_through_registry(self.registry.client, tags)
        return result, through

    def verify(self, online: bool = False, deep: bool = False, sample: Optional[int] = None) -> VerifyResult:
        """List the whole bucket against the source (online: and against the journal, changes in flight allowed)."""
        changed_since_ns = self.state.last_pass_started_ns or 0
        verifier = Verifier(self.plan.source, self.bucket, self.plan.sync.shard_workers, self.plan.sync.workers,
                            deep=deep, sample=sample, journal=self.journal if online else None,
                            changed_since_ns=changed_since_ns, progress=self.progress)
        try:
            if online and self.engine.cluster is not None:
                return self.engine.cluster.verify(self.engine, changed_since_ns, self.progress)
            return verifier.run()
        except BUCKET_ERRORS as exc:
            raise InvalidInput(f"verification failed: {explain(exc, self.plan.bucket.name)}") from None

    def prove_on_s3(self) -> None:
        """Online, before the window: the registry's own binary serves the s3 config read-only on loopback, and a
        seeded sample of every tag must pull from the bucket as online verification proved it. That proves the
        settings (credentials, region, rootdirectory, redirect) and the copy by the registry's own answers while
        clients still push, so the window asks only for what it changed. A tag moved since the last pass began is
        in flight: excused here, asked for in the window."""
        if not self.registry.binary():
            log.warning("no registry.binary on this host: the sample of tags is asked inside the window, from the "
                        "registry restarted read-only on s3 (a third restart)")
            return
        tags = self.tags_to_pull(changed=0, others=self.plan.registry.image_sample)
        try:
            result, where = self.ask_shadow(tags)
        except InvalidInput as exc:
            raise StoppedSafely(f"{exc}. The registry was not touched") from None
        result.excuse(self.tag_changed_since_last_pass)
        self.record_images("sample_on_s3", result.to_json() | {"where": where})
        log.info("asked %s before the window: %d tags (%d in flight), %d manifests, %d blobs; %d failed", where,
                 result.tags, result.in_flight, result.manifests, result.blobs, len(result.failed))
        if not result.ok:
            raise StoppedSafely(f"{len(result.failed)} of {result.tags} tags do not pull from {where} (first: "
                                f"{'; '.join(result.failed[:3])}). The registry was not touched: check the s3 settings "
                                "(registry.storage, bucket.*) and the shadow registry's log in the state directory")

    def ask_shadow(self, tags: list[tuple[str, str, str]]) -> tuple[RegistryResult, str]:
        """Pull ``tags`` from the registry's own binary serving the s3 config read-only on a loopback port."""
        where = f"{self.registry.binary()} serving the s3 config read-only on loopback"
        with self.registry.shadow(self.target_s3(readonly=True), self.plan.state_dir / "shadow", free_port()) as client:
            failpoint("shadow-started")
            result = check_through_registry(client, tags)
        # production still serves the filesystem (read-write before the window, read-only in it): ask it the same
        self.set_aside_broken_in_source(result, lambda *tag: pull_problem(self.registry.client, *tag))
        return result, where

    def set_aside_broken_in_source(self, result: RegistryResult, on_filesystem: Callable[[str, str, str], Optional[str]]
                                   ) -> None:
        """Tags that fail from the filesystem too are broken in the source, not by the bucket or the s3 settings:
        reported by image (output, report.json), not failed (``registry.broken_in_source: block`` stops the run
        on them before the window, in the online image check). Only when the image graph found the source broken
        somewhere: otherwise a pull that fails on both is no property of the source."""
        if not (self.state.images.get("all") or {}).get("source_broken"):
            return
        result.set_aside_broken_in_source(on_filesystem)
        if result.broken_in_source:
            log.warning("%d images are broken in the source (the registry on the filesystem fails the same pull; the "
                        "bucket is not to blame, they are migrated as they are): %s", len(result.broken_in_source),
                        "; ".join(f"{b['image']}: {b['problem']}" for b in result.broken_in_source[:5]))

    def known_broken_in_source(self) -> Callable[[str, str, str], Optional[str]]:
        """For pulls asked once production runs on s3: what the checks before found broken in the source."""
        known = {broken["image"]: broken["problem"] for kind in ("sample_on_s3", "through_registry")
                 for broken in (self.state.images.get(kind) or {}).get("broken_in_source", [])}
        return lambda repository, tag, digest: known.get(f"{repository}:{tag}")

    def tag_changed_since_last_pass(self, repository: str, tag: str, digest: str) -> bool:
        """The source's link for the tag was written since the last pass began, or no longer names ``digest``."""
        path = self.plan.source / f"{REPOSITORIES}{repository}/_manifests/tags/{tag}/current/link"
        try:
            return (path.stat().st_mtime_ns >= (self.state.last_pass_started_ns or 0)
                    or path.read_bytes().decode(errors="replace") != digest)
        except OSError:
            return True

    def readonly_on(self) -> None:
        """Back up the config, flip to read-only, restart, and prove it: a write must get 405. Pushes are refused
        from the first moment the restart left the registry without an answer (or, if none was seen, the 405)."""
        if self.state.readonly_on_at is None and not self.options.yes:
            if not self.options.confirm(f"Put the registry at {self.plan.registry.url} in read-only mode now?"):
                raise StoppedSafely("read-only flip declined; the registry was not touched (re-run to continue)")
        if self.state.readonly_on_at is None:  # the registry runs on the live file: it is the original, edits included
            self.registry.config.drop_backup()
        self.registry.take_backup()
        if self.state.readonly_on_at is None:
            self.state.readonly_on_at = now()
            self.store.save(self.state)
        restart = self.apply(self.registry.target(on_s3=False, readonly=True), on_failure="restore")
        self.prove_writes(expect=405)
        if self.state.pushes_refused_from is None:
            self.state.pushes_refused_from = restart.unanswered[0][0] if restart.unanswered else now()
            self.store.save(self.state)

    def final_sync_and_delete(self) -> PassResult:
        """The source is frozen: copy what changed since the last pass, then delete what is gone. With a change
        feed that watched the last online pass, only the paths it saw change are walked."""
        self.engine.prove_changes = True
        paths = self.tracker.final_paths() if self.tracker else None
        if paths is not None:  # the changes online verification excused as in flight, and interrupted ones
            paths = outermost(paths + self.journal.rechecks() + self.journal.unconfirmed())
        self.state.final_pass = ({"method": "change feed (fanotify)", "paths": len(paths)} if paths is not None else
                                 {"method": "full walk", "why": self.tracker.why_not if self.tracker else "no feed"})
        result = self.sync_pass(paths)
        self.state.final_source_objects = result.source_objects
        result.deleted_objects = self.delete(result)
        return result

    def delete(self, result: PassResult) -> int:
        """The delete step: candidates reported first (dry run), then applied under the guards."""
        candidates = result.delete_candidates
        if not candidates:
            return 0
        log.info("delete step: %d candidates (%d bytes), first: %s", len(candidates), result.delete_candidate_bytes,
                 ", ".join(candidates[:5]))
        self.engine.check_deletes(result, self.plan.sync.max_delete_fraction, self.options.allow_mass_delete)
        try:
            return self.engine.apply_deletes(candidates)
        except BUCKET_ERRORS as exc:
            raise InvalidInput(f"delete failed: {explain(exc, self.plan.bucket.name)}") from None

    def verify_window(self) -> None:
        """Prove the window's change: each key written or deleted checked by HEAD, and the count reconciled."""
        if self.options.full_verify or self.state.online_verified_objects is None:
            result = self.verify()
            self.state.verification = verification_summary(result, "full listing (read-only)")
            problems = [] if result.ok else [f"{result.missing} missing, {result.extra} extra, {result.mismatched} mismatched"]
        else:
            problems = self.check_window_changes()
        self.store.save(self.state)
        if problems:
            self.stop_safely("verification of the read-only window failed: " + "; ".join(problems))
        window = not self.options.full_verify and self.state.online_verified_objects is not None
        images = self.check_images(window=window)
        self.record_images("window" if window else "all", images.to_json())
        if not images.ok:
            self.stop_safely(self.graph_bug(images))

    def check_window_changes(self) -> list[str]:
        """Each change proven by the bucket's own answer when it gave one (PutObject ETag, DeleteObjects), else
        by a HEAD; then the count reconciled without listing the bucket."""
        problems: list[str] = []
        delta = heads = 0
        changes = self.journal.window_changes()
        for rel, existed, proof in changes:
            path = self.plan.source / rel
            in_source = path.is_file()
            delta += int(in_source) - int(existed)
            if proof is not None and _proof_matches(proof, rel, path, in_source):
                continue
            heads += 1
            problem = self.bucket_differs(rel, path, in_source)
            if problem:
                problems.append(problem)
        log.info("window changes checked: %d by the bucket's own answers, %d by HEAD", len(changes) - heads, heads)
        source_count = self.state.final_source_objects
        expected = self.state.online_verified_objects + delta
        self.state.verification = {
            "method": "online listing + the window's changes checked by HEAD",
            "source_objects": source_count, "bucket_objects": expected,
            "missing": sum("missing" in p for p in problems), "extra": sum("still in the bucket" in p for p in problems),
            "mismatched": sum("size" in p or "content" in p for p in problems),
        }
        if expected != source_count:
            problems.append(f"count: {self.state.online_verified_objects} proven online + {delta} changed = {expected}, "
                            f"but the frozen source has {source_count} files (excluding _uploads)")
        return problems[:20]

    def bucket_differs(self, rel: str, path: Path, in_source: bool) -> Optional[str]:
        """What differs between the bucket's object (HEAD; its content read when the ETag is no MD5) and the frozen
        source file, or None."""
        head = self.bucket.head(rel)
        if not in_source:
            return None if head is None else f"{rel} is still in the bucket but gone from the source"
        if head is None:
            return f"{rel} missing from the bucket"
        size = path.stat().st_size
        if head["ContentLength"] != size:
            return f"{rel} has size {head['ContentLength']} in the bucket, {size} in the source"
        if is_blob_data(rel):
            return None
        held = self.bucket.head_md5(rel, head)
        return None if held == md5_of(path.read_bytes()) else f"{rel} has other content in the bucket"

    def cutover(self) -> None:
        """Ask the registry on s3 before any client does: GitLab's filesystem-in-use marker must be in the bucket,
        then a seeded ten of the tags the window changed (others of all when it changed fewer: the bucket must
        answer now) must pull (manifest by tag and digest, every blob; the sample of all was asked before), from
        the registry's own binary serving the s3 config read-only on loopback: production restarts once more only
        (read-write on s3). Without that binary, production is
        restarted read-only on s3 and asked for the whole sample and as many changed tags (a third restart)."""
        self.prove_lockfile()
        shadow = self.registry.binary() is not None
        sample = self.plan.registry.image_sample
        tags = (self.tags_to_pull(changed=PRODUCTION_TAGS, others=0, fill_to=PRODUCTION_TAGS) if shadow
                else self.tags_to_pull(sample, sample))
        if shadow:
            try:
                result, where = self.ask_shadow(tags)
            except InvalidInput as exc:
                self.stop_safely(str(exc))
        else:
            where = "the registry restarted read-only on s3 (no registry.binary on this host)"
            self.apply(self.target_s3(readonly=True), on_failure="rollback")
            result = check_through_registry(self.registry.client, tags)
            self.set_aside_broken_in_source(result, self.known_broken_in_source())
        self.record_images("through_registry", result.to_json() | {"where": where})
        log.info("asked %s: %d tags, %d manifests, %d blobs; %d failed", where, result.tags, result.manifests,
                 result.blobs, len(result.failed))
        if not tags:
            log.info("the window changed no tag: nothing more to ask of the registry on s3" if shadow else
                     "no tag to pull through the registry: the source has no tagged image")
        if not result.ok:
            self.stop_safely(f"{len(result.failed)} of {result.tags} tags do not pull from the registry on s3 "
                             f"(first: {'; '.join(result.failed[:3])})")

    def prove_lockfile(self) -> None:
        """GitLab's registry starts on an empty metadata database when the bucket lacks the filesystem-in-use
        marker the source has: it must be in the bucket, as in the source, before the registry runs on s3."""
        path = self.plan.source / FILESYSTEM_IN_USE
        if not path.is_file():
            return
        problem = self.bucket_differs(FILESYSTEM_IN_USE, path, in_source=True)
        if problem:
            self.stop_safely(f"GitLab's metadata marker is not in the bucket as in the source ({problem}); on s3 the "
                             "registry would start on an empty database")
        log.info("GitLab's filesystem-in-use marker is in the bucket")

    def tags_to_pull(self, changed: int, others: int, fill_to: int = 0) -> list[tuple[str, str, str]]:
        """(repository, tag, digest): a seeded random sample of ``changed`` tags the window changed, and of
        ``others`` tags of all, then more of all until there are ``fill_to``. Every changed tag's objects are proven
        against the bucket by the window's image check; asking the registry proves it reads them, which fails for
        a setting or an unreachable bucket, not for one object."""
        graph = ImageGraph(self.plan.source, self.plan.state_dir)
        seed = self.state.image_sample_seed
        try:
            if changed:
                graph.add_window_changes(rel for rel, _, _ in self.journal.window_changes())
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

    def readonly_off(self) -> None:
        """Production on s3, read-write, in one restart: the window ends when a write probe gets 202. Before that
        moment is recorded, production must answer a few tags as the cut-over check did and say it runs with or
        without GitLab's metadata database as before; otherwise it goes back (unless a push reached the bucket)."""
        if self.state.writes_on_s3_since is None:  # a resumed run keeps the first moment pushes could reach s3
            self.state.writes_on_s3_since = now()
            self.store.save(self.state)
        target = self.target_s3(readonly=False)
        self.apply(target, on_failure="rollback")
        self.prove_writes(expect=202)
        accepted_at = now()
        failpoint("writes-accepted")
        self.check_database_header()
        tags = self.tags_to_pull(changed=0, others=PRODUCTION_TAGS)
        result = check_through_registry(self.registry.client, tags)
        self.set_aside_broken_in_source(result, self.known_broken_in_source())
        if not result.ok:
            self.stop_safely(f"{len(result.failed)} of {result.tags} tags do not pull from the production registry on "
                             f"s3 (first: {'; '.join(result.failed[:3])})")
        self.sweep_probe_leftovers(on_s3=True)
        self.state.readonly_off_at = accepted_at
        self.store.save(self.state)

    def reconfigure(self) -> None:
        """Omnibus, after the window: one ``gitlab-ctl reconfigure`` must keep s3, read-write, and a healthy
        registry that takes writes."""
        restart = self.registry.after_window(self.target_s3(readonly=False))
        self.record_restart(restart)
        if restart.problem:
            raise StoppedSafely(f"the registry runs on s3, read-write, and takes pushes; but {restart.problem}. Keep "
                                "the migrator block in gitlab.rb, fix what the message says, then re-run the same "
                                "command to finish")
        self.prove_writes(expect=202)
        self.check_database_header()
        self.sweep_probe_leftovers(on_s3=True)

    def check_database_header(self) -> None:
        """GitLab's fork says on GET /v2/ whether it runs with its metadata database: it must say what it said
        before the migration (on a bucket without the marker, 'true' would mean an empty database)."""
        header = self.registry.database_header()
        if header is None:
            return
        expected = "true" if self.state.uses_database else "false"
        if header.lower() != expected:
            self.stop_safely(f"the registry on s3 answers Gitlab-Container-Registry-Database-Enabled: {header}, "
                             f"expected {expected}: its metadata database does not hold the migrated images")

    def finish(self) -> dict:
        self.journal.close_window()
        self.state.outcome = "done"
        self.store.save(self.state)
        report = self.report()
        self.store.write_json("report.json", report)
        write_html(self.plan.state_dir / "report.html", report)
        return report

    # --- registry actions ------------------------------------------------------------------

    def target_s3(self, readonly: bool) -> TargetState:
        """The registry on the bucket with the plan's settings (and GitLab's database as it was)."""
        return self.registry.target(on_s3=True, readonly=readonly, uses_database=bool(self.state.uses_database))

    def apply(self, target: TargetState, on_failure: str) -> Restart:
        """Write the config for ``target`` (atomic), restart, wait for health, check the effective config."""
        if target.s3 is not None and not self.state.s3_config_written:
            self.state.s3_config_written = True
            self.store.save(self.state)
        restart = self.registry.apply(target)
        self.record_restart(restart)
        if restart.problem is None:
            return restart
        if on_failure == "restore":
            self.restore_original(restart.problem)
            raise InvalidInput(f"{restart.problem}; the original config was restored and the registry takes writes again")
        self.stop_safely(restart.problem)

    def record_restart(self, restart: Restart) -> None:
        """Keep a restart as clients saw it (and its time inside the window) for the report."""
        in_window = self.state.readonly_on_at is not None and self.state.readonly_off_at is None
        self.state.restarts.append(restart.to_json(in_window))
        if in_window:
            self.state.restart_seconds = round(self.state.restart_seconds + restart.seconds, 3)
        self.store.save(self.state)
        log.info("%s took %.1fs; reads got no answer for %.1fs", restart.command, restart.seconds,
                 restart.unanswered_seconds)

    def prove_writes(self, expect: int) -> None:
        status = self.registry.client.write_probe(PROBE_REPOSITORY)
        if status == expect:
            log.info("write probe: HTTP %d as expected", status)
            return
        if status == 401:
            log.warning("WRITE PROBE COULD NOT PROVE THE REGISTRY STATE: HTTP 401 (token auth). Set MIGRATOR_PROBE_USER "
                        "and MIGRATOR_PROBE_PASSWORD to a user allowed to push")
            return
        if expect == 405:
            problem = f"write probe got HTTP {status}, not 405: the registry is not read-only"
            self.restore_original(problem)
            raise StoppedSafely(f"{problem}; original config restored, the registry takes writes")
        self.stop_safely(f"write probe got HTTP {status}, not 202, after read-only off")

    def sweep_probe_leftovers(self, on_s3: bool) -> None:
        """Delete what the write probes left: the registry's cancel of an upload keeps its hash state under the probe
        repository's ``_uploads``, in the bucket or on the filesystem. Nothing outside that directory is touched."""
        uploads = f"{REPOSITORIES}{PROBE_REPOSITORY}/_uploads"
        if not on_s3:
            shutil.rmtree(self.plan.source / uploads, ignore_errors=True)
            for empty in (PROBE_REPOSITORY, PROBE_REPOSITORY.split("/")[0]):
                with contextlib.suppress(OSError):  # left alone unless empty
                    (self.plan.source / REPOSITORIES / empty).rmdir()
            return
        keys = [item["Key"] for page in list_pages(self.bucket, uploads + "/") for item in page.get("Contents", ())]
        for start in range(0, len(keys), 1000):
            self.bucket.client.delete_objects(Bucket=self.plan.bucket.name, Delete={
                "Objects": [{"Key": key} for key in keys[start:start + 1000]], "Quiet": True})
        if keys:
            log.info("removed %d objects the write probes left in the bucket", len(keys))

    def restore_original(self, why: str) -> None:
        """The original config (filesystem, as it was) back in place, restarted, and writes proven accepted; the
        state then says the registry is online again. If any of that fails, ``RestoreFailed`` says what is true and
        the state keeps what ``status`` and ``rollback`` need (read-only since when, why). The restore is recorded as
        intended before its restart runs, so a run killed meanwhile is resumed by finishing it."""
        self.state.restore_problem = f"its restart (after: {why}) has not been proven to take writes yet"
        self.store.save(self.state)
        restart = self.registry.restore()
        self.record_restart(restart)
        problem = restart.problem
        status = self.registry.client.write_probe(PROBE_REPOSITORY) if self.registry.client.health() in (200, 401) else None
        if problem is None:
            if status == 401:
                log.warning("WRITE PROBE COULD NOT PROVE THE REGISTRY TAKES WRITES AGAIN: HTTP 401. Set "
                            "MIGRATOR_PROBE_USER and MIGRATOR_PROBE_PASSWORD to a user allowed to push")
            elif status != 202:
                problem = f"a write probe still gets HTTP {status}, not 202"
        elif status == 202 and not self.state.s3_config_written:
            log.warning("%s; but the registry answers writes: it kept running its original (filesystem) config", problem)
            problem = None
        if problem is None:
            self.sweep_probe_leftovers(on_s3=False)
            self.reset_to_online()
            return
        self.state.restore_problem = problem
        self.store.save(self.state)
        raise RestoreFailed(
            f"{why}. The original config (filesystem, read-write) was written back to {self.registry.config.path}, "
            f"but {problem}: "
            "the registry may still refuse pushes. Fix the registry (see its log), then run 'migrator rollback PLAN', "
            "which restarts it and proves it takes writes"
        )

    def stop_safely(self, problem: str) -> None:
        """Back to the filesystem, read-write (when the plan has a registry), and stop with exit 1.

        Once the registry may have taken writes on s3, it goes back only if the bucket proves it took none."""
        if self.registry is not None:
            self.refuse_to_strand_writes(problem)
            self.restore_original(problem)
        raise StoppedSafely(f"{problem}. The registry is back on the filesystem, read-write (a write probe was "
                            "accepted); nothing was lost")

    def refuse_to_strand_writes(self, problem: str) -> None:
        """Stop here, the registry left on s3, unless the bucket proves no push would be stranded by going back."""
        since = self.state.writes_on_s3_since
        if since is None:
            return
        try:
            written = len(self.objects_written_since(since))
        except BUCKET_ERRORS as exc:
            written, why = None, f"the bucket cannot be listed to check ({explain(exc, self.plan.bucket.name)})"
        else:
            why = f"the bucket holds {written} objects written since the registry could write there that the filesystem lacks"
        if written == 0:
            return
        raise StoppedSafely(
            f"{problem}. {why}, so the registry is left on s3, read-write: returning it to the filesystem could "
            "strand pushes in the bucket. Check the registry, then re-run the same command to finish, or run "
            "'migrator rollback --force' to return to the filesystem without those pushes"
        )

    def reset_to_online(self) -> None:
        """The registry is proven back on the filesystem, read-write: what the window proved no longer holds, and the
        backup is dropped (the live file is the original again: an operator's edit before the next flip is kept)."""
        self.registry.config.drop_backup()
        self.journal.close_window()
        self.state.restore_problem = None
        self.state.s3_config_written = False
        self.state.images = {}
        self.state.done = [p for p in self.state.done if p == "initial_sync"]
        self.state.readonly_on_at = None
        self.state.readonly_off_at = None
        self.state.writes_on_s3_since = None
        self.state.restart_seconds = 0.0
        self.state.pushes_refused_from = None
        self.state.online_verified_objects = None
        self.store.save(self.state)

    # --- rollback, status, report ----------------------------------------------------------

    def rollback(self, force: bool) -> bool:
        """Restore the original config; refused after the registry took writes on s3 unless forced. Everything that
        would refuse is checked before the operator is asked (``options``); False when they decline."""
        if not self.registry.config.backup.exists():
            raise InvalidInput(f"no backup of the original config in {self.registry.config.backup_dir}: nothing to roll back to")
        since = self.state.writes_on_s3_since or self.state.readonly_off_at
        if since is not None and not force:
            written = self.objects_written_since(since)
            if written:
                raise Refused(
                    f"the bucket holds {len(written)} objects written since the cut-over that the filesystem lacks "
                    f"({stranded_images(written)}); rolling back would strand those pushes in the bucket. Re-run "
                    "with --force if you accept losing them"
                )
        if not self.options.yes and not self.options.confirm("Restore the original registry config and restart it?"):
            return False
        self.restore_original("rollback requested")
        self.state.outcome = "rolled back"
        self.store.save(self.state)
        return True

    def objects_written_since(self, since: float) -> list[str]:
        """Objects written to the bucket since ``since`` that the filesystem does not hold: what returning the
        registry to the filesystem would strand (``_uploads`` aside; the cutoff allows for LastModified's
        one-second resolution and clock skew, our own copies being told apart by their content)."""
        cutoff = math.floor(since) - CLOCK_SKEW_SECONDS
        paginator = self.bucket.client.get_paginator("list_objects_v2")
        written = []
        for page in paginator.paginate(Bucket=self.plan.bucket.name, Prefix=self.bucket.key("docker/")):
            for item in page.get("Contents", ()):
                rel = self.bucket.rel(item["Key"])
                if item["LastModified"].timestamp() < cutoff or is_uploads(rel):
                    continue
                path = self.plan.source / rel
                if (not path.is_file() or path.stat().st_size != item["Size"] or not is_blob_data(rel)
                        and self.bucket.content_md5(rel, item["ETag"]) != md5_of(path.read_bytes())):
                    written.append(rel)
        return written

    def dry_run_report(self) -> dict:
        """What ``run`` would do, computed without writing to the bucket, the config or the registry."""
        self.preflight(canary=False)
        started = time.monotonic()
        result = self.engine.run_pass()
        pass_seconds = time.monotonic() - started
        guard = "ok"
        try:
            self.engine.check_deletes(result, self.plan.sync.max_delete_fraction, self.options.allow_mass_delete)
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
            "s3_requests": sum(self.bucket.counter.attempts.values()),
        }
        report["estimated_read_only_window_seconds"] = self.estimate_window(result, pass_seconds)
        if self.registry is not None:
            report["hints"] = self.hints
            report["config_diff"] = {"read_only": self.registry.diff(self.registry.target(on_s3=False, readonly=True)),
                                     "final": self.registry.diff(self.target_s3(readonly=False))}
        return report

    def estimate_window(self, result: PassResult, pass_seconds: float) -> dict:
        """What ``run``'s read-only window will take, restarts included, from what can be measured without changing
        anything: the final pass (with the change feed, the change left after the delta passes, at most
        ``sync.delta_stop_below`` objects, at the cost per object the initial sync measured; without it, a walk of
        the whole tree, as this dry run's pass took), the window's proofs, the registry's answers to the tag pulls
        asked at the cut-over (timed now against the registry as it is), and the window's restarts (as measured by an
        earlier run, else ``registry.restart_seconds``)."""
        initial = next((p for p in self.state.phases if p["name"] == "initial_sync" and p["uploaded_objects"]), None)
        per_object = initial["seconds"] / initial["uploaded_objects"] if initial else 0.005
        changes = min(result.changes, self.plan.sync.delta_stop_below)
        probe = PassTracker(self.plan.source, self.plan.sync.change_feed)
        feed = probe.feed is not None and result.first_linked is None
        probe.close()
        walk = self.state.last_pass_seconds if self.state.last_pass_seconds is not None else pass_seconds
        final_pass = changes * per_object if feed else walk + changes * per_object
        restart = restarts = 0.0
        measured = []
        if self.plan.registry:
            command = self.registry.restart_command
            measured = [r["seconds"] for r in self.state.restarts if r.get("command", command) == command]
            restart = sum(measured) / len(measured) if measured else self.plan.registry.restart_seconds
            restarts = self.window_restarts() * restart
        pulls, pull_seconds = self.time_tag_pulls() if self.plan.registry else (0, 0.0)
        total = final_pass + changes * per_object + pull_seconds + restarts
        return {"total": round(total, 1), "final_pass": round(final_pass, 1), "proofs": round(changes * per_object, 1),
                "tag_pulls": round(pull_seconds, 1), "restarts": round(restarts, 1),
                "assumed": {"changes_left_for_the_window": changes, "seconds_per_object": round(per_object, 4),
                            "change_feed": feed, "seconds_per_restart": round(restart, 2),
                            "restart_measured": bool(measured), "tags_pulled": pulls}}

    def window_restarts(self) -> int:
        """Restarts inside the window: read-only on, and s3 read-write; a third (s3 read-only, for the cut-over
        check) when the registry's binary cannot serve that check on loopback."""
        return 2 if self.registry.binary() else 3

    def time_tag_pulls(self) -> tuple[int, float]:
        """How long the window's tag pulls will take (a few changed tags and a few others; the whole sample
        without ``registry.binary``): timed now through the registry as it is (reads change nothing),
        plus what each request will cost once it reads from the bucket (about ``S3_READS_PER_REGISTRY_REQUEST``
        bucket reads each, at the latency of a HEAD timed now)."""
        count = PRODUCTION_TAGS if self.registry.binary() else 2 * self.plan.registry.image_sample
        graph = ImageGraph(self.plan.source, self.plan.state_dir)
        try:
            tags = graph.sample_tags(count, self.state.image_sample_seed)
        finally:
            graph.close()
        started = time.monotonic()
        pulled = check_through_registry(self.registry.client, tags)
        on_filesystem = time.monotonic() - started
        requests = pulled.tags + pulled.manifests + pulled.blobs
        return len(tags), on_filesystem + requests * S3_READS_PER_REGISTRY_REQUEST * self.bucket_latency()

    def bucket_latency(self, samples: int = 16) -> float:
        """Seconds one small read from the bucket takes (HEAD of keys the journal knows, or of the prefix)."""
        rels = [row.rel for row in itertools.islice(self.journal.rows_in([("docker/", "docker0")]), samples)]
        started = time.monotonic()
        for rel in rels or ["docker/"] * 4:
            with contextlib.suppress(*BUCKET_ERRORS):
                self.bucket.head(rel)
        return (time.monotonic() - started) / max(len(rels), 4)

    def report(self) -> dict:
        window = None
        if self.state.readonly_on_at and self.state.readonly_off_at:
            window = round(self.state.readonly_off_at - self.state.readonly_on_at, 3)
        return {
            "outcome": self.state.outcome,
            "read_only_window_seconds": window,
            "restart_seconds": self.state.restart_seconds,
            "passes": self.state.passes,
            "final_pass": self.state.final_pass,
            "phases": self.state.phases,
            "verification": self.state.verification,
            "images": self.images_summary(),
            "readonly_on_at": self.state.readonly_on_at,
            "readonly_off_at": self.state.readonly_off_at,
            "pushes_refused_seconds": self.pushes_refused_seconds(),
            "reads_refused_seconds": self.reads_refused_seconds(),
            "pushes_refused_from": self.state.pushes_refused_from,
            "restarts": self.state.restarts,
            "pass_history": self.state.pass_history,
            "config_diff": self.registry.diff() if self.registry is not None else None,
        }

    def reads_refused_seconds(self) -> Optional[float]:
        """How long ``GET /v2/`` got no answer during this migration's restarts (the window's and the reconfigure
        after it), as sampled every 50 ms."""
        if self.state.readonly_on_at is None:
            return None
        return round(sum(r.get("unanswered_seconds", 0.0) for r in self.state.restarts
                         if r["started_at"] >= self.state.readonly_on_at), 3)

    def pushes_refused_seconds(self) -> Optional[float]:
        """From the first push the read-only restart refused to the write probe accepted on s3."""
        if self.state.pushes_refused_from is None or self.state.readonly_off_at is None:
            return None
        return round(self.state.readonly_off_at - self.state.pushes_refused_from, 3)

    def images_summary(self) -> dict:
        """The report's ``images``: the whole graph's figures (online), plus the window's and the registry's."""
        images = self.state.images
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


ALL_PHASES = ("initial_sync", "delta_passes", "online_verification", "prove_on_s3", "readonly_on", "final_sync", "verify_window",
              "cutover", "readonly_off", "reconfigure")


def planned_phases(plan: Plan) -> list[str]:
    """The phases ``run`` goes through for this plan, in order (``reconfigure``: the Omnibus fast path only)."""
    omnibus_fast = plan.registry is not None and plan.registry.format == "omnibus" and not plan.registry.restart
    return [p for p in ALL_PHASES if p != "reconfigure" or omnibus_fast]


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


def verification_summary(result: VerifyResult, method: str) -> dict:
    """The report's verification fields (counts exclude _uploads)."""
    return {"method": method, "source_objects": result.source_objects, "bucket_objects": result.bucket_objects,
            "missing": result.missing, "extra": result.extra, "mismatched": result.mismatched}


def _proof_matches(proof: tuple, rel: str, path: Path, in_source: bool) -> bool:
    """The bucket's own answer agrees with the frozen source: same presence, size and (non-blob) md5."""
    present, size, md5 = proof
    if not present or not in_source:
        return present == in_source
    if path.stat().st_size != size:
        return False
    return is_blob_data(rel) or md5_of(path.read_bytes()) == md5


@contextmanager
def migration(plan: Plan, progress: Optional[Progress] = None, options: Optional[Options] = None,
              lock: bool = True, dry_run: bool = False) -> Iterator[Migration]:
    """An opened Migration (state directory locked when ``lock``), closed afterwards."""
    job = Migration(plan, progress, options, dry_run=dry_run)
    try:
        job.open(lock=lock)
        yield job
    finally:
        job.close()
