"""Online passes on Dask: shards run as tasks on a cluster, the coordinator stays the journal's only writer.

``sync.engine: dask`` runs each online pass (initial and delta) as one task per shard on a Dask distributed cluster:
an embedded ``LocalCluster`` of worker processes on this host (``sync.dask.scheduler: null``), or the operator's own
(``tcp://host:8786``; every worker mounts the registry at the same path). A task gets its shard's journal rows and
the plan's settings, never credentials (each worker uses its own AWS chain); it walks, decides (the same
``SyncEngine`` code as the threads engine), uploads on a thread pool of its own and returns the rows to record.
A shard with more than ``sync.dask.split_above`` files is split by the next character of its keys (``blobs/ab`` by
the digest's third hex digit, ``repositories/a`` by the name's next character; again while a child is too large) so a
task takes seconds: by the journal's count once the shard is seeded; a first task on a shard counts its files and
answers with the children instead when they are too many. Online verification runs the same tasks with
``Verifier``. A worker runs a few tasks at
once (``sync.shard_workers`` threads in a local cluster; ``dask worker --nthreads`` elsewhere), their uploads on one
pool of ``sync.workers`` threads; at most two tasks per worker thread are in flight.

Faults: a worker that dies mid-task has its task run again elsewhere by the scheduler. The dead attempt may have
uploaded keys the journal will never hear of (a file deleted before the retry walks): every task is logged in the
journal as in flight before it is submitted and cleared once its rows are recorded, unless the scheduler saw a worker
die while it ran. What is left (a killed coordinator, a suspect task) is listed from the bucket before the next pass
(``SyncEngine.list_unfinished_tasks``, whatever the engine then), so every key the bucket holds is known to the
journal and the walk finds what must go. Every worker proves it sees the coordinator's source and reaches the bucket
before a pass's tasks run, and a worker that joins later before its first task. The read-only window's final pass,
verification outside online verification and dry runs stay local.
"""

from __future__ import annotations

import heapq
import logging
import os
import pickle
import resource
import socket
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Iterator, Optional, TypeVar

from migrator.errors import InvalidInput
from migrator.images import ImageGraph
from migrator.journal import Journal, JournalRow
from migrator.layout import BLOBS, Shard, shards, split
from migrator.plan import BucketSettings, SyncSettings
from migrator.s3 import BUCKET_ERRORS, RequestCounter, explain, open_bucket
from migrator.sync import PassResult, Progress, SyncEngine, set_tasks_in_flight, tasks_in_flight
from migrator.transfer import Transfer
from migrator.verify import Verifier, VerifyResult
from migrator.walker import branching, walk_shard

log = logging.getLogger(__name__)

SPLIT_ABOVE = 4096  # entries above which a shard's work is split into tasks by the next character of its keys
TASKS_PER_THREAD = 2  # tasks in flight per worker thread
SAMPLE_FILES = 32
CONNECT_SECONDS = 10  # to reach sync.dask.scheduler: a scheduler that runs answers in milliseconds
RECENT_LINKS = 16  # tag links written last: what a lagging view of the source gets wrong
SETTLE_NS = 60 * 10**9  # links written in the last minute are left out: an NFS client's attribute cache may lag so
DASK_CONFIG = {  # for this process, and the local cluster's workers (the operator's: README, "Many processes")
    # every batched stream keeps its last N messages for debugging; a task's message carries its journal rows: with
    # the default 1000 the coordinator held 795 MB in a delta pass over 1 M objects (bench run 20261127-190308)
    "distributed.admin.low-level-log-length": 10,
    # the stack sampler walks every thread's stack each 10 ms, and a worker runs an upload pool
    "distributed.worker.profile.enabled": False,
}


@dataclass(frozen=True)
class Job:
    """What every task of a run shares: settings and the coordinator's sample of the source, no credentials."""

    source: str
    bucket: BucketSettings
    sync: SyncSettings
    key_prefix: str
    extra_args: tuple
    etags_are_md5: bool = True  # preflight's finding (bucket encryption): listed ETags seed md5s only if true
    part_checksum: Optional[str] = None  # the checksum multipart uploads are created with (open_bucket's or the canary's)
    split_above: int = SPLIT_ABOVE
    sample: tuple = ()  # (rel, size, mtime_ns) of blobs across the tree: a worker must see the same
    recent: tuple = ()  # (rel, size, mtime_ns, digest) of the tag links written last (each pass's): the same too

    @property
    def cache_key(self) -> str:
        return repr(replace(self, recent=()))  # one bucket client and transfer pool per worker for the whole run


Result = TypeVar("Result", PassResult, VerifyResult)


@dataclass
class Outcome(Generic[Result]):
    """A task's answer: the rows to record (last word per key), the keys to forget, what it saw and did; or, for a
    shard too large for one task, its children (nothing done)."""

    rows: list[JournalRow]
    result: Result
    requests: tuple[int, int] = (0, 0)  # S3 attempts and calls the task made, for the coordinator's report
    forgotten: list[str] = field(default_factory=list)
    split: list[Shard] = field(default_factory=list)


class TaskJournal:
    """The journal as a task sees it: its shard's rows in, every row it would write (or forget) kept to be sent
    back."""

    def __init__(self, rows: list[JournalRow], seeded: bool):
        self._rows = {row.rel: row for row in rows}
        self._seeded = seeded
        self.written: dict[str, JournalRow] = {}
        self.forgotten: list[str] = []

    def get_meta(self, key: str) -> Optional[str]:
        return None

    def set_meta(self, key: str, value: str) -> None:
        pass

    def is_seeded(self, shard: Shard) -> bool:
        return self._seeded

    def mark_seeded(self, shard: Shard) -> None:
        self._seeded = True

    def rows(self, shard: Shard) -> Iterator[JournalRow]:
        return iter(sorted((row for row in self._rows.values() if shard.contains(row.rel)), key=lambda r: r.rel))

    def record(self, rows: Iterable[JournalRow], proofs: Iterable[tuple[str, int, str]] = ()) -> None:
        for row in rows:
            self._rows[row.rel] = self.written[row.rel] = row

    def forget(self, rels: Iterable[str], proven: Iterable[str] = ()) -> None:
        for rel in rels:
            self._rows.pop(rel, None)
            self.written.pop(rel, None)
            self.forgotten.append(rel)

    def mark_unconfirmed(self, rels: Iterable[str]) -> None:
        self.record(self._rows[rel]._replace(confirmed=False) if rel in self._rows
                    else JournalRow(rel, -1, confirmed=False) for rel in list(rels))


_WORKER_STATE: dict[str, tuple] = {}  # per worker process: the bucket client and transfer pool of a job


def _this_worker() -> str:
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return socket.gethostname()
    return f"{worker.name} ({worker.address})" if worker.name not in (None, worker.address) else worker.address


def _prepared(job: Job) -> tuple:
    """This worker's bucket client and transfer pool for the job, after its first task proved the worker (a worker
    that joined after the pass's check is checked here)."""
    state = _WORKER_STATE.get(job.cache_key)
    if state is None:
        problem = check_worker(job)
        if problem:
            raise InvalidInput(refusal({_this_worker(): problem}, job.source))
        bucket = open_bucket(job.bucket, job.sync, job.key_prefix)
        bucket.etags_are_md5, bucket.part_checksum = job.etags_are_md5, job.part_checksum
        state = _WORKER_STATE[job.cache_key] = (bucket, Transfer(bucket, Path(job.source), job.sync,
                                                                  dict(job.extra_args)))
    return state


def _requests(counter: RequestCounter) -> tuple[int, int]:
    return sum(counter.attempts.values()), sum(counter.calls.values())


def _requests_since(counter: RequestCounter, before: tuple[int, int]) -> tuple[int, int]:
    after = _requests(counter)
    return after[0] - before[0], after[1] - before[1]


def packed_rows(journal: Journal, shard: Shard) -> bytes:
    """The shard's journal rows as one pickle: Dask sends bytes as they are, where it would walk a list of rows
    element by element looking for futures (CPU the coordinator spends per object)."""
    return pickle.dumps(list(journal.rows(shard)), protocol=pickle.HIGHEST_PROTOCOL)


def run_shard(job: Job, shard: Shard, rows: bytes, seeded: bool) -> Outcome[PassResult]:
    """On a worker: seed the shard from the bucket if needed, walk it, decide, upload; the rows to record. A shard
    met for the first time with more than ``split_above`` files answers with its children instead."""
    bucket, transfer = _prepared(job)
    source = Path(job.source)
    if not seeded and sum(1 for _ in islice(walk_shard(source, shard), job.split_above + 1)) > job.split_above:
        children = split(shard, *branching(source, shard))
        if len(children) > 1:
            return Outcome([], PassResult(), split=children)
    before = _requests(bucket.counter)
    journal = TaskJournal(pickle.loads(rows), seeded)
    # a TaskJournal: the journal's interface, in memory
    engine = SyncEngine(Path(job.source), bucket, journal, transfer, shard_workers=1)  # type: ignore[arg-type]
    engine.seed(shard)
    result = engine.sync_shard(shard)
    return Outcome(list(journal.written.values()), result, _requests_since(bucket.counter, before))


def verify_shard(job: Job, shard: Shard, rows: bytes, changed_since_ns: int) -> Outcome[VerifyResult]:
    """On a worker: online verification of one shard (bucket against journal rows and source); the journal rows the
    listing settled or showed gone."""
    bucket, _ = _prepared(job)
    before = _requests(bucket.counter)
    journal = TaskJournal(pickle.loads(rows), seeded=True)
    verifier = Verifier(Path(job.source), bucket, 1, job.sync.workers, journal=journal,  # type: ignore[arg-type]
                        changed_since_ns=changed_since_ns)
    result = verifier.verify_shard(shard)
    return Outcome(list(journal.written.values()), result, _requests_since(bucket.counter, before),
                   forgotten=journal.forgotten)


def check_worker(job: Job) -> Optional[str]:
    """On a worker, before its first task: the same source (its layout, the coordinator's sample of blobs with the
    same sizes and mtimes) and a bucket its own credentials reach. None, or what is wrong."""
    source = Path(job.source)
    if not (source / "docker/registry/v2").is_dir():
        return f"it does not see the registry: {source}/docker/registry/v2 is not a directory there"
    for rel, size, mtime_ns in job.sample:
        try:
            stat = os.stat(source / rel)
        except OSError as exc:
            return f"it does not see {source / rel} ({exc.strerror})"
        if (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns):
            return (f"its {source / rel} is not the coordinator's (size {stat.st_size}, mtime_ns {stat.st_mtime_ns}; "
                    f"coordinator: {size}, {mtime_ns})")
    for rel, size, mtime_ns, digest in job.recent:
        path = source / rel
        try:
            stat = os.stat(path)
            held = path.read_bytes()[:80].decode(errors="replace")
        except OSError as exc:
            return f"its view of the source lags behind the registry: it does not see {path} ({exc.strerror})"
        if (stat.st_size, stat.st_mtime_ns, held) != (size, mtime_ns, digest):
            return (f"its view of the source lags behind the registry (a replica or snapshot?): its {path} holds "
                    f"{held!r} (mtime_ns {stat.st_mtime_ns}), the coordinator's {digest!r} (mtime_ns {mtime_ns})")
    try:
        bucket = open_bucket(job.bucket, job.sync, job.key_prefix, max_attempts=2)
        bucket.head_bucket()
    except BUCKET_ERRORS as exc:
        return f"it cannot reach the bucket with its own credentials: {explain(exc, job.bucket.name)}"
    except InvalidInput as exc:
        return str(exc)
    return None


def refusal(problems: dict[str, str], source: str) -> str:
    """The error for workers that cannot copy, each by name with what is wrong."""
    return ("Dask workers that cannot copy: " + "; ".join(f"worker {worker}: {problem}" for worker, problem in
                                                          sorted(problems.items())) +
            f". Every worker must mount the registry at {source} and have AWS credentials; stop or fix those workers "
            "and re-run")


def task_shards(shard: Shard, journal: Journal, split_above: int) -> list[Shard]:
    """A seeded shard as tasks: itself, or its children (``split`` where the journal's keys branch, again while a
    child holds more than ``split_above`` keys)."""
    if journal.count_in(shard.ranges()) <= split_above:
        return [shard]
    children = split(shard, *journal_branching(journal, shard))
    if len(children) == 1:
        return [shard]
    return [task for child in children for task in task_shards(child, journal, split_above)]


def journal_branching(journal: Journal, shard: Shard) -> tuple[str, list[str]]:
    """Where the shard's keys in the journal branch: their common prefix and the characters that come next."""
    ranges = list(shard.ranges())
    first, last = journal.first_in(ranges), journal.last_in(ranges)
    if first is None or last is None:
        return shard.prefix, []
    common, chars = os.path.commonprefix([first, last]), []
    key = journal.first_in(ranges, common + "\0")  # the first key longer than the common prefix
    while key is not None:
        chars.append(key[len(common)])
        key = journal.first_in(ranges, common + chr(ord(chars[-1]) + 1))
    return common, chars


def recent_tag_links(source: Path, count: int = RECENT_LINKS) -> list[tuple[str, int, int, str]]:
    """The ``count`` tag links written last (not in the last minute), as the coordinator's source holds them now:
    (rel, size, mtime_ns, digest). Tags move while the registry takes pushes, so a replica or snapshot behind it
    shows older mtimes or other digests here, where blobs (written once) cannot tell."""
    graph = ImageGraph(source, Path(tempfile.gettempdir()))
    settled = time.time_ns() - SETTLE_NS

    def stats() -> Iterable[tuple[int, str, int, str]]:
        for _, _, rel, digest in graph.tag_links():
            try:
                stat = os.stat(source / rel)
            except OSError:
                continue
            if stat.st_mtime_ns < settled:
                yield stat.st_mtime_ns, rel, stat.st_size, digest

    try:
        return [(rel, size, mtime_ns, digest) for mtime_ns, rel, size, digest in heapq.nlargest(count, stats())]
    finally:
        graph.close()


def source_sample(source: Path) -> list[tuple[str, int, int]]:
    """Blobs from across the tree with their size and mtime, for workers to compare with theirs. Only blobs: they
    are written once, so a sample cannot go stale while the registry takes pushes."""
    sample = []
    blob_shards = [shard for shard in shards() if shard.prefix.startswith(BLOBS)]
    for shard in blob_shards[:: max(1, len(blob_shards) // SAMPLE_FILES)]:
        for found in walk_shard(source, shard):
            if found.rel.endswith("/data"):
                sample.append((found.rel, found.size, found.mtime_ns))
                break
    return sample[:SAMPLE_FILES]


def _usage() -> tuple[float, float]:
    """This process's CPU seconds (user + system) and peak RSS in MB."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def _suspicious(dask_scheduler: Any, key: str) -> int:
    """On the scheduler: how many workers died running task ``key``."""
    task = dask_scheduler.tasks.get(key)
    return task.suspicious if task is not None else 0


@dataclass
class DaskEngine:
    """Runs a pass's (or online verification's) shards on a Dask cluster; the caller's journal records what the
    tasks return."""

    job: Job
    scheduler: Optional[str] = None
    processes: Optional[int] = None
    client: Any = None  # distributed.Client, once started
    cluster: Any = None  # distributed.LocalCluster, without sync.dask.scheduler

    def start(self) -> None:
        import dask
        from distributed import Client, LocalCluster

        if self.client is not None:
            return
        dask.config.set(DASK_CONFIG)
        if self.scheduler:
            try:
                self.client = Client(self.scheduler, timeout=CONNECT_SECONDS)
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
        self.job = replace(self.job, sample=tuple(source_sample(Path(self.job.source))))
        log.info("dask: %d workers (%s)", len(workers), self.scheduler or "local cluster")

    def _worker_names(self) -> dict:
        return {address: info.get("name") for address, info in self.client.scheduler_info()["workers"].items()}

    def _prepare(self, engine: SyncEngine) -> None:
        """Started, with the pass's settings, and every worker has proved it sees the same source and reaches the
        bucket (exit 2 naming any that does not, before a task runs; later joiners prove it in their first task)."""
        self.job = replace(self.job, etags_are_md5=engine.bucket.etags_are_md5,
                           part_checksum=engine.bucket.part_checksum)
        self.start()
        problems = self._check_workers()
        if problems:  # a tag that moved between the sample and the check is no lag: asked again on a new sample
            problems = self._check_workers()
        if problems:
            raise InvalidInput(refusal(problems, self.job.source))

    def _check_workers(self) -> dict[str, str]:
        """{worker: what is wrong} for every worker that fails ``check_worker`` on this moment's recent tag links."""
        self.job = replace(self.job, recent=tuple(recent_tag_links(Path(self.job.source))))
        answers = self.client.run(check_worker, self.job)
        names = self._worker_names()
        return {f"{names.get(address)} ({address})" if names.get(address) not in (None, address) else address:
                problem for address, problem in answers.items() if problem}

    def _run_tasks(self, engine: SyncEngine, queue: deque, submit: Callable, handle: Callable) -> int:
        """Submit ``submit(item)`` for the queue's items, at most two per worker thread in flight; ``handle(item,
        future, outcome)`` records each answer as it comes and returns items to run next (a split shard's children).
        The number of tasks run."""
        from distributed import as_completed

        limit = TASKS_PER_THREAD * max(1, sum(self.client.nthreads().values()))
        futures = as_completed()
        owners: dict[str, Any] = {}
        submitted = 0
        while True:
            while queue and len(owners) < limit:
                item = queue.popleft()
                future = submit(item)
                owners[future.key] = item
                futures.add(future)
                submitted += 1
            if not owners:
                return submitted
            future = next(futures)
            item = owners.pop(future.key)
            outcome: Outcome[Any] = future.result()
            engine.bucket.counter.add(*outcome.requests)
            queue.extendleft(reversed(list(handle(item, future, outcome))))
            future.release()

    def run_pass(self, engine: SyncEngine) -> PassResult:
        """One online pass over every shard as tasks; rows recorded in the coordinator's journal as tasks end."""
        self._prepare(engine)
        journal: Journal = engine.journal
        total = PassResult()
        unseeded = {}  # shard name -> the shard, while its tasks seed it (it is seeded when all are recorded)
        remaining = {}  # shard name -> its tasks not recorded yet
        queue: deque[tuple[str, Shard]] = deque()
        for shard in shards():
            if journal.is_seeded(shard):
                subs = task_shards(shard, journal, self.job.split_above)
            else:
                unseeded[shard.name], subs = shard, [shard]
            remaining[shard.name] = len(subs)
            queue += [(shard.name, sub) for sub in subs]
        in_flight = tasks_in_flight(journal)

        def submit(item: tuple[str, Shard]) -> Any:  # a distributed.Future
            parent, sub = item
            in_flight.add(sub)
            set_tasks_in_flight(journal, in_flight)
            return self.client.submit(run_shard, self.job, sub, packed_rows(journal, sub), parent not in unseeded,
                                      pure=False)

        def handle(item: tuple[str, Shard], future: Any, outcome: Outcome[PassResult]) -> list[tuple[str, Shard]]:
            parent, sub = item
            journal.record(outcome.rows)
            total.add(outcome.result)
            engine.progress.walked(outcome.result.source_objects)
            engine.progress.uploaded(outcome.result.uploaded_objects, outcome.result.uploaded_bytes)
            if self.client.run_on_scheduler(_suspicious, key=future.key):
                log.warning("dask: a worker died while running shard %s; its prefix is listed again before the next "
                            "pass", sub.name)
            else:
                in_flight.discard(sub)  # written with the next submission (or the pass's end)
            remaining[parent] += len(outcome.split) - 1
            if remaining[parent] == 0 and parent in unseeded:
                journal.mark_seeded(unseeded[parent])
            return [(parent, child) for child in outcome.split]

        tasks = self._run_tasks(engine, queue, submit, handle)
        set_tasks_in_flight(journal, in_flight)
        log.info("dask: the pass ran %d tasks", tasks)
        return total

    def verify(self, engine: SyncEngine, changed_since_ns: int, progress: Progress) -> VerifyResult:
        """Online verification with every shard a task (``Verifier`` with the journal, as the threads engine runs
        it); the rows the bucket's listing settled are recorded here."""
        self._prepare(engine)
        journal: Journal = engine.journal
        total = VerifyResult()
        queue = deque(task for shard in shards() for task in task_shards(shard, journal, self.job.split_above))

        def submit(sub: Shard) -> Any:  # a distributed.Future
            return self.client.submit(verify_shard, self.job, sub, packed_rows(journal, sub), changed_since_ns,
                                      pure=False)

        def handle(sub: Shard, future: Any, outcome: Outcome[VerifyResult]) -> Iterable:
            journal.record(outcome.rows)
            journal.forget(outcome.forgotten)
            total.add(outcome.result)
            progress.listed(outcome.result.bucket_objects)
            progress.checked(outcome.result.source_objects + outcome.result.bucket_objects)
            return ()

        log.info("dask: online verification ran %d tasks", self._run_tasks(engine, queue, submit, handle))
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


class DaskSyncEngine(SyncEngine):
    """``sync.engine: dask``: online passes and online verification run their shards on a Dask cluster; the window's
    pass (``prove_changes``) and dry runs stay on this process's threads."""

    def __init__(self, *args: Any, cluster: DaskEngine, **kwargs: Any) -> None:  # SyncEngine's arguments
        super().__init__(*args, **kwargs)
        self.cluster = cluster

    def _copy_pass(self) -> PassResult:
        if self.prove_changes or self.dry_run:
            return super()._copy_pass()
        self._multipart_started()  # the workers' uploads are not seen from here
        return self.cluster.run_pass(self)

    def verify_online(self, verifier: Verifier, changed_since_ns: int) -> VerifyResult:
        return self.cluster.verify(self, changed_since_ns, self.progress)

    def close(self) -> None:
        super().close()
        self.cluster.close()
