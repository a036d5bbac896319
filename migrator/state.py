"""The run's persisted progress: a JSON file replaced atomically (fsync + rename), and the run lock."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from migrator.errors import InvalidInput, Refused


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
    stopped: Optional[dict] = None  # the last attempt's stop: {at, reason, exit_code}; None while running or after success

    def is_done(self, phase: str) -> bool:
        return phase in self.done


class StateStore:
    """``state.json`` in the state directory, and ``lock`` held with fcntl for the whole run."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.path = directory / "state.json"
        self._lock_fd: Optional[int] = None

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

    def lock(self) -> None:
        """Refuse (exit 3) when another run holds the state directory."""
        self.ensure_directory()
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
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

    def load(self) -> RunState:
        if not self.path.exists():
            return RunState()
        data = json.loads(self.path.read_text())
        known = RunState.__dataclass_fields__
        return RunState(**{k: v for k, v in data.items() if k in known})

    def save(self, state: RunState) -> None:
        self.write_json("state.json", asdict(state))

    def write_json(self, name: str, data: dict) -> Path:
        """Atomically replace a JSON file in the state directory."""
        target = self.directory / name
        tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
        with open(tmp, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=False, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return target


def now() -> float:
    return time.time()
