"""The run's persisted progress: a JSON file replaced atomically (fsync + rename), and the run's locks: its state
directory, and what it migrates (the registry config, the bucket and prefix) in a directory every run on the host shares."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from migrator.errors import InvalidInput, Refused
from migrator.files import atomic_write
from migrator.plan import Plan


@dataclass
class RunState:
    """What a resumed run needs to know; every field is plain JSON."""

    done: list = field(default_factory=list)  # names of finished phases, in order
    phases: list = field(default_factory=list)  # report entries of finished phases
    passes: int = 0
    online_verified_objects: Optional[int] = None  # bucket objects proven by the last online listing
    final_source_objects: Optional[int] = None  # files in the frozen source (final pass walk)
    final_pass: dict = field(default_factory=dict)  # how the final pass found the changes (change feed or walk)
    verification: dict = field(default_factory=dict)
    readonly_on_at: Optional[float] = None  # wall clock of the read-only config write
    readonly_off_at: Optional[float] = None  # wall clock when writes were accepted again
    writes_on_s3_since: Optional[float] = None  # wall clock of the config write letting the registry write to s3
    restart_seconds: float = 0.0  # restarts inside the read-only window
    restarts: list = field(default_factory=list)  # {started_at, seconds, in_window} of each restart this run
    pass_history: list = field(default_factory=list)  # {pass, phase, started_at, seconds, files, uploaded, ...}
    last_pass_seconds: Optional[float] = None
    last_pass_started_ns: Optional[int] = None
    last_pass_changes: Optional[int] = None
    outcome: Optional[str] = None
    images: dict = field(default_factory=dict)  # image proofs: "all", "window", "sample_on_s3", "through_registry"
    image_sample_seed: int = field(default_factory=lambda: random.randrange(2**31))  # kept across a resume
    s3_config_written: bool = False  # a config pointing the registry at the bucket was written since the last restore
    restore_problem: Optional[str] = None  # the original config was written back but not proven to take writes
    pushes_refused_from: Optional[float] = None  # wall clock: the read-only restart first left pushes unanswered
    gc_started_at: Optional[float] = None  # 'migrator gc' is under way (its read-only stretch may be open)
    uses_database: Optional[bool] = None  # GitLab's fork ran with its metadata database before the migration
    filesystem_proven_at: Optional[float] = None  # wall clock: a write probe proved the registry back on the filesystem
    closed_windows: list = field(default_factory=list)  # {on, off}: read-only windows closed by going back
    front_log_offsets: dict = field(default_factory=dict)  # registry.front: where nginx's access logs ended at start
    attempts: list = field(default_factory=list)  # {started_at, ended_at, outcome} of each run of the plan
    stopped: Optional[dict] = None  # the last attempt's stop: {at, reason, exit_code}; None while running or after success

    def is_done(self, phase: str) -> bool:
        return phase in self.done


class StateStore:
    """``state.json`` in the state directory, and ``lock`` held with fcntl for the whole run."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.path = directory / "state.json"
        self._lock_fd: Optional[int] = None
        self._resource_fds: list[int] = []

    def ensure_directory(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise InvalidInput(
                f"state directory {self.directory} is not writable ({exc.strerror}); set 'state' in the plan "
                "to a writable directory"
            ) from None

    def lock(self, resources: Optional[dict[str, str]] = None, plan: Optional[Path] = None) -> None:
        """Refuse (exit 3) when another run holds the state directory, or (``resources``: what the plan migrates,
        see ``migrated_resources``) when a run of any plan, with any state directory, holds one of them."""
        self.ensure_directory()
        self._resource_fds = _lock_resources(resources or {}, {"pid": os.getpid(), "plan": str(plan),
                                                                "state": str(self.directory)})
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            self.unlock()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise Refused(
                    f"another migrator run holds {self.directory}/lock; wait for it to finish (see 'migrator status')"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        for fd in self._resource_fds:
            os.close(fd)
        self._resource_fds = []

    def load(self) -> RunState:
        if not self.path.exists():
            return RunState()
        data = json.loads(self.path.read_text())
        known = RunState.__dataclass_fields__
        return RunState(**{k: v for k, v in data.items() if k in known})

    def save(self, state: RunState) -> None:
        self.write_json("state.json", asdict(state))

    def write_json(self, name: str, data: Mapping[str, Any]) -> Path:
        """Atomically replace a JSON file in the state directory."""
        target = self.directory / name
        atomic_write(target, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
        return target


def now() -> float:
    return time.time()


LOCK_DIRECTORIES = (Path("/run/migrator"), Path("/var/lock/migrator"), Path(tempfile.gettempdir()) / "migrator-locks")


def migrated_resources(plan: Plan) -> dict[str, str]:
    """What a plan's run changes, named so that two plans for the same thing agree: the registry's config file
    (resolved: links and relative paths lead to the same name) and the bucket's endpoint, name and prefix."""
    endpoint = (plan.bucket.endpoint or f"aws:{plan.bucket.region}").rstrip("/").lower()
    resources = {"bucket": f"{endpoint}|{plan.bucket.name}|{plan.key_prefix}"}
    if plan.registry is not None:
        resources["registry"] = str(Path(plan.registry.config).resolve())
    return resources


def lock_directory() -> Path:
    """The first of ``LOCK_DIRECTORIES`` this user can write (created if need be): one place every run on the host
    looks, whatever its plan or state directory."""
    for directory in LOCK_DIRECTORIES:
        try:
            directory.mkdir(mode=0o1777, parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(directory, os.W_OK | os.X_OK):
            return directory
    raise InvalidInput(f"none of {', '.join(map(str, LOCK_DIRECTORIES))} is writable for the run's lock files")


def _lock_resources(resources: dict[str, str], holder: dict[str, Any]) -> list[int]:
    """flock one file per resource (named by a hash of it) in ``lock_directory``; the holder is written into each.
    Held by another run: exit 3 naming that run's plan and state directory."""
    if not resources:
        return []
    fds: list[int] = []
    directory = lock_directory()
    for kind, name in sorted(resources.items(), reverse=True):  # the registry first: the likelier clash
        path = directory / f"{kind}-{hashlib.sha256(name.encode()).hexdigest()[:24]}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            written = os.read(fd, 4096).decode(errors="replace")
            for held in fds + [fd]:
                os.close(held)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            try:
                other: dict[str, Any] = json.loads(written)
            except ValueError:
                other = {}
            endpoint, bucket, prefix = name.split("|") if kind == "bucket" else ("", "", "")
            what = f"the registry config {name}" if kind == "registry" else f"s3://{bucket}/{prefix} at {endpoint}"
            raise Refused(
                f"another migrator run (pid {other.get('pid', '?')}, plan {other.get('plan', '?')}, state directory "
                f"{other.get('state', '?')}) is migrating {what}; one migration per registry and bucket: wait for it "
                f"to finish (see 'migrator status {other.get('plan', 'PLAN')}')"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode())
        fds.append(fd)
    return fds
