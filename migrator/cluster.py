"""Online passes on Dask: shards run as tasks on a cluster, the coordinator stays the journal's only writer.

``sync.engine: dask`` runs each online pass (initial and delta) as one task per shard on a Dask distributed cluster:
an embedded ``LocalCluster`` of worker processes on this host (``sync.dask.scheduler: null``), or the operator's own
(``tcp://host:8786``; every worker mounts the registry at the same path). A task gets its shard's journal rows and
the plan's settings, never credentials (each worker uses its own AWS chain); it walks, decides (the same
``SyncEngine`` code as the threads engine), uploads on a thread pool of its own and returns the rows to record.
Blob shards with many entries are split by the third hex digit so a task takes seconds. A worker runs a few tasks at
once (``sync.shard_workers`` threads in a local cluster; ``dask worker --nthreads`` elsewhere), their uploads on one
pool of ``sync.workers`` threads; at most two tasks per worker thread are in flight.

Faults: a worker that dies mid-task has its task run again elsewhere by the scheduler. The dead attempt may have
uploaded keys the journal will never hear of (a file deleted before the retry walks): every task is logged in the
journal as in flight before it is submitted and cleared once its rows are recorded, unless the scheduler saw a worker
die while it ran. What is left (a killed coordinator, a suspect task) is listed from the bucket before the next pass
(``SyncEngine.list_unfinished_tasks``, whatever the engine then), so every key the bucket holds is known to the
journal and the walk finds what must go. The read-only window's final pass, verification and dry runs stay local.
"""

from __future__ import annotations

import json
import logging
import os
import resource
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from migrator.errors import InvalidInput
from migrator.journal import Journal, JournalRow
from migrator.layout import BLOBS, Shard, shard_named, shards
from migrator.plan import BucketSettings, SyncSettings
from migrator.s3 import BUCKET_ERRORS, explain, open_bucket
from migrator.sync import IN_FLIGHT_META, PassResult, SyncEngine, tasks_in_flight
from migrator.transfer import Transfer
from migrator.walker import walk_shard

log = logging.getLogger(__name__)

SPLIT_ABOVE = 4096  # entries in a blob shard's directory above which its tasks are split by the third hex digit
TASKS_PER_THREAD = 2  # tasks in flight per worker thread
SAMPLE_FILES = 32


@dataclass(frozen=True)
class Job:
    """What every task of a run shares: settings only, no credentials."""

    source: str
    bucket: BucketSettings
    sync: SyncSettings
    key_prefix: str
    extra_args: tuple
    etags_are_md5: bool = True  # preflight's finding (bucket encryption): listed ETags seed md5s only if true

    @property
    def cache_key(self) -> str:
        return repr(self)


@dataclass
class Outcome:
    """A task's answer: the rows to record (last word per key) and what it saw and did."""

    rows: list[JournalRow]
    result: PassResult
    requests: tuple[int, int] = (0, 0)  # S3 attempts and calls the task made, for the coordinator's report


class TaskJournal:
    """The journal as a task sees it: its shard's rows in, every row it would write kept to be sent back."""

    def __init__(self, rows: list[JournalRow], seeded: bool):
        self._rows = {row.rel: row for row in rows}
        self._seeded = seeded
        self.written: dict[str, JournalRow] = {}

    def get_meta(self, key: str) -> Optional[str]:
        return None

    def set_meta(self, key: str, value: str) -> None:
        pass

    def is_seeded(self, shard: Shard) -> bool:
        return self._seeded

    def mark_seeded(self, shard: Shard) -> None:
        self._seeded = True

    def rows(self, shard: Shard):
        return iter(sorted((row for row in self._rows.values() if shard.contains(row.rel)), key=lambda r: r.rel))

    def record(self, rows, proofs=()) -> None:
        for row in rows:
            self._rows[row.rel] = self.written[row.rel] = row

    def mark_unconfirmed(self, rels) -> None:
        self.record(self._rows[rel]._replace(confirmed=False) if rel in self._rows
                    else JournalRow(rel, -1, confirmed=False) for rel in list(rels))


_WORKER_STATE: dict[str, tuple] = {}  # per worker process: the bucket client and transfer pool of a job


def _worker_transfer(job: Job) -> tuple:
    state = _WORKER_STATE.get(job.cache_key)
    if state is None:
        bucket = open_bucket(job.bucket, job.sync, job.key_prefix)
        bucket.etags_are_md5 = job.etags_are_md5
        state = _WORKER_STATE[job.cache_key] = (bucket, Transfer(bucket, Path(job.source), job.sync,
                                                                  dict(job.extra_args)))
    return state


def run_shard(job: Job, shard: Shard, rows: list[JournalRow], seeded: bool) -> Outcome:
    """On a worker: seed the shard from the bucket if needed, walk it, decide, upload; the rows to record."""
    bucket, transfer = _worker_transfer(job)
    counter = bucket.counter
    before = sum(counter.attempts.values()), sum(counter.calls.values())
    journal = TaskJournal(rows, seeded)
    engine = SyncEngine(Path(job.source), bucket, journal, transfer, shard_workers=1)
    engine.seed(shard)
    result = engine.sync_shard(shard)
    requests = sum(counter.attempts.values()) - before[0], sum(counter.calls.values()) - before[1]
    return Outcome(list(journal.written.values()), result, requests)


def check_worker(job: Job, sample: list[tuple[str, int, int]]) -> Optional[str]:
    """On a worker, before its first task: the same source (its layout, a sample of files with the coordinator's
    sizes and mtimes) and a bucket its own credentials reach. None, or what is wrong."""
    source = Path(job.source)
    if not (source / "docker/registry/v2").is_dir():
        return f"it does not see the registry: {source}/docker/registry/v2 is not a directory there"
    for rel, size, mtime_ns in sample:
        try:
            stat = os.stat(source / rel)
        except OSError as exc:
            return f"it does not see {source / rel} ({exc.strerror})"
        if (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns):
            return (f"its {source / rel} is not the coordinator's (size {stat.st_size}, mtime_ns {stat.st_mtime_ns}; "
                    f"coordinator: {size}, {mtime_ns})")
    try:
        bucket = open_bucket(job.bucket, job.sync, job.key_prefix, max_attempts=2)
        bucket.client.head_bucket(Bucket=job.bucket.name)
    except BUCKET_ERRORS as exc:
        return f"it cannot reach the bucket with its own credentials: {explain(exc, job.bucket.name)}"
    except InvalidInput as exc:
        return str(exc)
    return None


def task_shards(source: Path, shard: Shard, journal: Optional[Journal] = None) -> list[Shard]:
    """The shard, or its 16 sub-shards by the third hex digit when it is a large blob shard: by the journal's count
    once it is seeded, else by the entries of its directory."""
    if not shard.prefix.startswith(BLOBS):
        return [shard]
    known = journal.count_in(shard.ranges()) if journal is not None and journal.is_seeded(shard) else None
    if known is None:
        try:
            known = sum(1 for _ in os.scandir(source / shard.prefix))
        except OSError:
            return [shard]
    if known <= SPLIT_ABOVE:
        return [shard]
    return [shard_named(f"{shard.name}{digit}") for digit in "0123456789abcdef"]


def source_sample(source: Path) -> list[tuple[str, int, int]]:
    """A few files from across the tree with their size and mtime, for workers to compare with theirs."""
    sample = []
    for shard in shards()[:: max(1, len(shards()) // SAMPLE_FILES)]:
        for found in walk_shard(source, shard):
            sample.append((found.rel, found.size, found.mtime_ns))
            break
    return sample[:SAMPLE_FILES]


def _usage() -> tuple[float, float]:
    """This process's CPU seconds (user + system) and peak RSS in MB."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def _suspicious(dask_scheduler, key: str) -> int:  # noqa: ANN001 - run on the scheduler
    task = dask_scheduler.tasks.get(key)
    return task.suspicious if task is not None else 0


@dataclass
class DaskEngine:
    """Runs a pass's shards on a Dask cluster; the caller's journal records what the tasks return."""

    job: Job
    scheduler: Optional[str] = None
    processes: Optional[int] = None
    client: object = None
    cluster: object = None

    def start(self) -> None:
        from distributed import Client, LocalCluster

        if self.client is not None:
            return
        if self.scheduler:
            try:
                self.client = Client(self.scheduler, timeout=30)
            except OSError as exc:
                raise InvalidInput(f"cannot reach the Dask scheduler at {self.scheduler} ({exc}); check "
                                   "sync.dask.scheduler and that 'dask scheduler' runs there") from None
        else:
            self.cluster = LocalCluster(n_workers=self.processes or os.cpu_count() or 1,
                                        threads_per_worker=self.job.sync.shard_workers, processes=True,
                                        dashboard_address=None)
            self.client = Client(self.cluster)
        workers = self.client.scheduler_info()["workers"]
        if not workers:
            raise InvalidInput(f"the Dask cluster at {self.scheduler} has no workers; start 'dask worker "
                               f"{self.scheduler}' on hosts that mount the registry at {self.job.source}")
        log.info("dask: %d workers (%s)", len(workers), self.scheduler or "local cluster")

    def _worker_names(self) -> dict:
        return {address: info.get("name") for address, info in self.client.scheduler_info()["workers"].items()}

    def check_workers(self) -> None:
        """Every worker proves it sees the same source and reaches the bucket; exit 2 naming any that does not,
        before a task of the pass runs."""
        answers = self.client.run(check_worker, self.job, source_sample(Path(self.job.source)))
        names = self._worker_names()
        problems = {f"{names.get(address)} ({address})" if names.get(address) not in (None, address) else address:
                    problem for address, problem in answers.items() if problem}
        if problems:
            raise InvalidInput("Dask workers that cannot copy: " + "; ".join(
                f"worker {worker}: {problem}" for worker, problem in sorted(problems.items())) +
                f". Every worker must mount the registry at {self.job.source} and have AWS credentials; stop or fix "
                "those workers and re-run")

    def run_pass(self, engine: SyncEngine) -> PassResult:
        """One online pass over every shard as tasks; rows recorded in the coordinator's journal as tasks end."""
        from distributed import as_completed

        self.job = replace(self.job, etags_are_md5=engine.bucket.etags_are_md5)
        self.start()
        self.check_workers()
        journal: Journal = engine.journal
        total = PassResult()
        unseeded = {}  # parent shard name -> the shard, while its tasks seed it (it is seeded when all are recorded)
        remaining = {}  # parent shard name -> its tasks not recorded yet
        tasks = []
        for shard in shards():
            subs = task_shards(Path(self.job.source), shard, journal)
            if not journal.is_seeded(shard):
                unseeded[shard.name] = shard
            remaining[shard.name] = len(subs)
            tasks += [(shard.name, sub) for sub in subs]
        limit = TASKS_PER_THREAD * max(1, sum(self.client.nthreads().values()))
        queue = iter(tasks)
        in_flight = set(tasks_in_flight(journal))
        futures = as_completed()
        owners = {}

        def submit_next() -> bool:
            item = next(queue, None)
            if item is None:
                return False
            parent, sub = item
            in_flight.add(sub.name)
            journal.set_meta(IN_FLIGHT_META, json.dumps(sorted(in_flight)))
            future = self.client.submit(run_shard, self.job, sub, list(journal.rows(sub)), parent not in unseeded,
                                        pure=False)
            owners[future.key] = (parent, sub)
            futures.add(future)
            return True

        for _ in range(limit):
            if not submit_next():
                break
        for future in futures:
            parent, sub = owners.pop(future.key)
            outcome: Outcome = future.result()
            journal.record(outcome.rows)
            engine.bucket.counter.add(*outcome.requests)
            total.add(outcome.result)
            engine.progress.walked(outcome.result.source_objects)
            engine.progress.uploaded(outcome.result.uploaded_objects, outcome.result.uploaded_bytes)
            if self.client.run_on_scheduler(_suspicious, key=future.key):
                log.warning("dask: a worker died while running shard %s; its prefix is listed again before the next "
                            "pass", sub.name)
            else:
                in_flight.discard(sub.name)  # written with the next submission (or the pass's end)
            future.release()
            remaining[parent] -= 1
            if remaining[parent] == 0 and parent in unseeded:
                journal.mark_seeded(unseeded[parent])
            submit_next()
        journal.set_meta(IN_FLIGHT_META, json.dumps(sorted(in_flight)))
        return total

    def log_usage(self) -> None:
        """Each worker's CPU seconds and peak RSS (and the coordinator's peak RSS), for operators and the bench."""
        try:
            usage = self.client.run(_usage)
            names = self._worker_names()
        except (OSError, ValueError) as exc:
            log.debug("dask: worker usage not available (%s)", exc)
            return
        for address, (cpu, rss_mb) in sorted(usage.items()):
            log.info("dask worker %s: %.1f s CPU, peak RSS %.0f MB", names.get(address, address), cpu, rss_mb)
        log.info("dask coordinator: peak RSS %.0f MB", _usage()[1])

    def close(self) -> None:
        if self.client is not None:
            self.log_usage()
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None
