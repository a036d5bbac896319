"""Everything a phase reads or changes, built once by ``open_context`` (tests build a ``Context`` of fakes)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from migrator.changefeed import PassTracker
from migrator.cluster import SPLIT_ABOVE, DaskEngine, DaskSyncEngine, Job
from migrator.journal import Journal
from migrator.managed import ManagedRegistry, open_registry
from migrator.migration.standby import Front
from migrator.plan import Plan, RegistrySettings
from migrator.s3 import Bucket, open_bucket
from migrator.state import RunState, StateStore, migrated_resources
from migrator.sync import Progress, SyncEngine
from migrator.transfer import Transfer, s3_extra_args


@dataclass
class Options:
    """What the operator said on the command line."""

    yes: bool = False
    allow_mass_delete: bool = False
    full_verify: bool = False
    confirm: Callable[[str], bool] = lambda question: False


@dataclass
class Context:
    """One plan's state, journal, bucket, copy engine and registry, shared by the phases.

    ``registry`` is None exactly when the plan has no ``registry:`` section (then ``run`` syncs, deletes and
    verifies only); the phases that manage the registry run only with one and reach it through ``managed``."""

    plan: Plan
    options: Options
    progress: Progress
    store: StateStore
    state: RunState
    bucket: Bucket
    journal: Journal
    engine: SyncEngine  # the threads engine, or ``DaskSyncEngine`` (sync.engine: dask); chosen by ``open_context``
    registry: Optional[ManagedRegistry]
    tracker: Optional[PassTracker] = None  # the change feed: ``run`` watches it, other commands do not
    front: Optional[Front] = None  # registry.front: the operator's nginx, steered to a standby in the window
    hints: list[str] = field(default_factory=list)  # set by preflight: settings worth changing (``report`` lists them)

    @property
    def managed(self) -> ManagedRegistry:
        """The registry, for phases that run only when the plan has one."""
        if self.registry is None:
            raise RuntimeError("a registry phase ran for a plan without a registry")
        return self.registry

    @property
    def settings(self) -> RegistrySettings:
        """The plan's ``registry:`` section, for phases that run only when the plan has one."""
        if self.plan.registry is None:
            raise RuntimeError("a registry phase ran for a plan without a registry")
        return self.plan.registry


def open_engine(plan: Plan, bucket: Bucket, journal: Journal, progress: Progress, dry_run: bool) -> SyncEngine:
    """The copy engine ``sync.engine`` names, over the bucket with the headers the registry's s3 driver would send."""
    storage = plan.registry.storage if plan.registry else {}
    transfer = Transfer(bucket, plan.source, plan.sync, s3_extra_args(storage), stored=progress.uploaded)
    if plan.sync.engine != "dask":
        return SyncEngine(plan.source, bucket, journal, transfer, plan.sync.shard_workers, progress, dry_run=dry_run)
    job = Job(str(plan.source), plan.bucket, plan.sync, plan.key_prefix, tuple(transfer.extra_args.items()),
              split_above=plan.sync.dask.get("split_above", SPLIT_ABOVE))
    cluster = DaskEngine(job, plan.sync.dask.get("scheduler"), plan.sync.dask.get("processes"))
    return DaskSyncEngine(plan.source, bucket, journal, transfer, plan.sync.shard_workers, progress, dry_run=dry_run,
                          cluster=cluster)


@contextmanager
def open_context(plan: Plan, progress: Optional[Progress] = None, options: Optional[Options] = None,
                 lock: bool = True, dry_run: bool = False) -> Iterator[Context]:
    """The plan's context: state directory and what the plan migrates (locked when ``lock``: runs that change
    things; see ``StateStore.lock``), journal, bucket client, engine and registry; closed afterwards."""
    progress = progress or Progress()
    store = StateStore(plan.state_dir)
    store.ensure_directory()
    try:
        if lock:
            store.lock(migrated_resources(plan), plan.path)
        state = store.load()
        journal = Journal(plan.state_dir / "journal.sqlite")
        bucket = open_bucket(plan.bucket, plan.sync, plan.key_prefix)
        engine = open_engine(plan, bucket, journal, progress, dry_run)
        try:
            registry = (open_registry(plan.registry, plan.bucket, plan.key_prefix, plan.state_dir / "config-backup")
                        if plan.registry else None)
            ctx = Context(plan, options or Options(), progress, store, state, bucket, journal, engine, registry)
            if plan.front is not None and plan.registry is not None and registry is not None:
                ctx.front = Front(plan.front, registry, plan.registry.url, plan.state_dir)
            try:
                yield ctx
            finally:
                if ctx.tracker is not None:
                    ctx.tracker.close()
                if ctx.front is not None:
                    ctx.front.close()
        finally:
            engine.close()
    finally:
        store.unlock()
