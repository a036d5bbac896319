"""What `migrator status --watch` shows while a run goes on: the run writes ``<state>/live.json`` (phase, pass,
counters, rate, ETA, the last warning or error) at most once a second; `status` only reads it, never the lock."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Optional

from migrator.state import StateStore
from migrator.sync import Progress

LIVE_FILE = "live.json"
FLUSH_SECONDS = 1.0
COUNTERS = ("walked", "listed", "checked", "uploaded_objects", "uploaded_bytes")


class LiveStatus(Progress):
    """Counts what the engine reports (and passes it on to the terminal's progress), and keeps ``live.json``."""

    def __init__(self, state_dir: Path, inner: Optional[Progress] = None):
        self.store = StateStore(state_dir)
        self.inner = inner or Progress()
        self._lock = threading.Lock()
        self._flushed = 0.0
        self.data: dict = {"pid": os.getpid(), "started_at": time.time(), "phase": None, "pass": None,
                           "pass_started_at": None, "expected_objects": None, "walked": 0, "listed": 0,
                           "checked": 0, "uploaded_objects": 0, "uploaded_bytes": 0, "last_problem": None,
                           "finished": False}
        self.handler = _LastProblem(self)

    def phase_started(self, name: str) -> None:
        self.inner.phase_started(name)
        with self._lock:
            self.data.update(phase=name, phase_started_at=time.time())  # the counters are the last pass's until the next
        self.flush(force=True)

    def pass_started(self, number: int, expected_objects: Optional[int]) -> None:
        self.inner.pass_started(number, expected_objects)
        with self._lock:
            self.data.update({"pass": number, "pass_started_at": time.time(), "expected_objects": expected_objects,
                              **dict.fromkeys(COUNTERS, 0)})
        self.flush(force=True)

    def walked(self, count: int) -> None:
        self.inner.walked(count)
        self._add(walked=count)

    def listed(self, count: int) -> None:
        self.inner.listed(count)
        self._add(listed=count)

    def uploaded(self, count: int, nbytes: int) -> None:
        self.inner.uploaded(count, nbytes)
        self._add(uploaded_objects=count, uploaded_bytes=nbytes)

    def checked(self, count: int) -> None:
        self.inner.checked(count)
        self._add(checked=count)

    def problem(self, message: str) -> None:
        with self._lock:
            self.data["last_problem"] = {"at": time.time(), "message": message}
        self.flush(force=True)

    def close(self) -> None:
        self.inner.close()
        with self._lock:
            self.data["finished"] = True
        self.flush(force=True)

    def _add(self, **counts: int) -> None:
        with self._lock:
            for name, count in counts.items():
                self.data[name] += count
        self.flush()

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not force and now - self._flushed < FLUSH_SECONDS:
                return
            self._flushed = now
            data = dict(self.data, updated_at=time.time())
        try:
            self.store.write_json(LIVE_FILE, data)
        except OSError:
            pass  # a status file that cannot be written never stops the run


class _LastProblem(logging.Handler):
    """Warnings and errors logged during the run become live.json's ``last_problem``."""

    def __init__(self, live: LiveStatus):
        super().__init__(logging.WARNING)
        self.live = live

    def emit(self, record: logging.LogRecord) -> None:
        self.live.problem(record.getMessage())


def read_live(state_dir: Path) -> Optional[dict]:
    """live.json with rate and ETA worked out, or None before any run wrote one."""
    try:
        data = json.loads((state_dir / LIVE_FILE).read_text())
    except (OSError, ValueError):
        return None
    data["running"] = not data.get("finished") and _alive(data.get("pid"))
    started = data.get("pass_started_at") or data.get("phase_started_at")
    elapsed = max(data.get("updated_at", 0) - started, 1e-3) if started else None
    data["rate_objects_per_second"] = round(data["walked"] / elapsed, 1) if elapsed else None
    data["rate_bytes_per_second"] = round(data["uploaded_bytes"] / elapsed) if elapsed else None
    expected, rate = data.get("expected_objects"), data["rate_objects_per_second"]
    data["eta_seconds"] = (round(max(expected - data["walked"], 0) / rate, 1)
                           if expected and rate and data["running"] else None)
    return data


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
