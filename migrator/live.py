"""What a run is doing, for the terminal's progress block and for `migrator status --watch`: ``Counts`` adds up what
the engine reports; ``LiveStatus`` also keeps ``<state>/live.json`` (phase, pass, counters, the registry's state, the
last warning or error) at most once a second; `status` only reads it, never the lock."""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from migrator.state import RunState, StateStore
from migrator.sync import Progress

LIVE_FILE = "live.json"
FLUSH_SECONDS = 1.0
ADVICE = "migrator_advice"  # a log record's flag: said to the operator, but not the run's problem
COUNTERS = ("walked", "listed", "checked", "uploaded_objects", "uploaded_bytes")


def registry_state(state: RunState, has_registry: bool, at: Optional[float] = None, front: bool = False) -> str:
    """Where the registry is, as the state says: 'read-write on filesystem', 'READ-ONLY since 12:03:04 (41 s)',
    'read-write on s3'. With a front, clients are on a standby while the registry restarts: read-only from the
    moment pushes were refused, not from the flip's first step."""
    if not has_registry:
        return "not touched by this plan (no registry: section)"
    if state.restore_problem:
        return f"NOT PROVEN READ-WRITE: {state.restore_problem}"
    if state.readonly_off_at is not None:
        return "read-write on s3"
    if state.writes_on_s3_since is not None:
        return f"going read-write on s3 since {_clock(state.writes_on_s3_since)} (pushes may land on s3 from then)"
    since = state.pushes_refused_from if front else state.readonly_on_at
    if since is not None:
        return f"READ-ONLY since {_clock(since)} ({(at or time.time()) - since:.0f} s)"
    if state.readonly_on_at is not None:
        return (f"read-write on filesystem: clients are on migrator's standby while the read-only flip (begun at "
                f"{_clock(state.readonly_on_at)}) restarts the registry")
    if state.filesystem_proven_at is not None:
        return f"read-write on filesystem (proven {_clock(state.filesystem_proven_at)})"
    return "read-write on filesystem"


def _clock(at: float) -> str:
    return datetime.datetime.fromtimestamp(at).strftime("%H:%M:%S")


def with_rates(data: dict, at: float, running: bool) -> dict:
    """``data`` (the counters) with rates and ETA worked out for the pass (or phase) going on at ``at``."""
    data = dict(data, running=running)
    started = data.get("pass_started_at") or data.get("phase_started_at")
    elapsed = max(at - started, 1e-3) if started else None
    data["rate_objects_per_second"] = round(data["walked"] / elapsed, 1) if elapsed else None
    data["rate_bytes_per_second"] = round(data["uploaded_bytes"] / elapsed) if elapsed else None
    etas = []  # the later of the files' and the bytes' (a few large layers take longer than their count says)
    if data.get("expected_objects") and data["rate_objects_per_second"]:
        etas.append(max(data["expected_objects"] - data["walked"], 0) / data["rate_objects_per_second"])
    if data.get("expected_bytes") and data["rate_bytes_per_second"]:
        etas.append(max(data["expected_bytes"] - data["uploaded_bytes"], 0) / data["rate_bytes_per_second"])
    data["eta_seconds"] = round(max(etas), 1) if etas and running else None
    return data


class Counts(Progress):
    """Adds up what the engine reports, per pass; ``snapshot`` gives them with rates, ETA and the registry's state."""

    def __init__(self, registry: Callable[[], str] = lambda: "read-write, untouched"):
        self.registry = registry
        self._lock = threading.Lock()
        self.data: dict = {"pid": os.getpid(), "started_at": time.time(), "phase": None, "phase_started_at": None,
                           "pass": None, "pass_phase": None, "pass_started_at": None, "expected_objects": None,
                           "expected_bytes": None,
                           **dict.fromkeys(COUNTERS, 0), "last_problem": None, "question": None, "finished": False}

    def phase_started(self, name: str) -> None:
        with self._lock:
            # listed and checked are the phase's own; a pass's counters stay until the next pass
            self.data.update(phase=name, phase_started_at=time.time(), listed=0, checked=0)
        self.changed(force=True)

    def pass_started(self, number: int, expected_objects: Optional[int]) -> None:
        with self._lock:
            self.data.update({"pass": number, "pass_phase": self.data["phase"], "pass_started_at": time.time(),
                              "expected_objects": expected_objects, "expected_bytes": None,
                              **dict.fromkeys(COUNTERS, 0)})
        self.changed(force=True)

    def totals(self, number: int, files: int, upload_bytes: int) -> None:
        with self._lock:
            if self.data["pass"] != number:  # counted too late: that pass is over
                return
            self.data.update(expected_objects=files, expected_bytes=upload_bytes)
        self.changed(force=True)

    def walked(self, count: int) -> None:
        self._add(walked=count)

    def listed(self, count: int) -> None:
        self._add(listed=count)

    def uploaded(self, count: int, nbytes: int) -> None:
        self._add(uploaded_objects=count, uploaded_bytes=nbytes)

    def checked(self, count: int) -> None:
        self._add(checked=count)

    def asking(self, question: Optional[str]) -> None:
        """The question the run waits on an answer to in its terminal (None once answered)."""
        with self._lock:
            self.data["question"] = question
        self.changed(force=True)

    def problem(self, message: str) -> None:
        with self._lock:
            self.data["last_problem"] = {"at": time.time(), "message": message}
        self.changed(force=True)

    def close(self) -> None:
        with self._lock:
            self.data["finished"] = True
        self.changed(force=True)

    def snapshot(self) -> dict:
        """The counters now, with rates, ETA and ``registry`` (where the registry is)."""
        with self._lock:
            data = dict(self.data)
        at = time.time()
        return dict(with_rates(data, at, running=not data["finished"]), registry=self.registry(), updated_at=at)

    def _add(self, **counts: int) -> None:
        with self._lock:
            for name, count in counts.items():
                self.data[name] += count
        self.changed()

    def changed(self, force: bool = False) -> None:
        """Called after every change (``LiveStatus`` writes live.json)."""


class LiveStatus(Counts):
    """``Counts`` kept in ``live.json`` for 'status --watch'; warnings and errors logged meanwhile are its
    ``last_problem``."""

    def __init__(self, state_dir: Path, has_registry: bool, front: bool = False):
        self.store = StateStore(state_dir)
        super().__init__(lambda: registry_state(self.store.load(), has_registry, front=front))
        self._flushed = 0.0
        self.handler = _LastProblem(self)

    def changed(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not force and now - self._flushed < FLUSH_SECONDS:
                return
            self._flushed = now
        try:
            self.store.write_json(LIVE_FILE, self.snapshot() | {"finished": self.data["finished"]})
        except (OSError, ValueError):
            pass  # a status file that cannot be written (or a state.json being replaced) never stops the run


class _LastProblem(logging.Handler):
    """Warnings and errors logged during the run become live.json's ``last_problem``; advice (a record flagged
    ``ADVICE``) does not: it is not the run's problem."""

    def __init__(self, live: LiveStatus):
        super().__init__(logging.WARNING)
        self.live = live

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(record, ADVICE, False):
            self.live.problem(record.getMessage())


def read_live(state_dir: Path) -> Optional[dict]:
    """live.json with rate and ETA worked out, or None before any run wrote one."""
    try:
        data = json.loads((state_dir / LIVE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return with_rates(data, data.get("updated_at", 0), running=not data.get("finished") and _alive(data.get("pid")))


def _alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
