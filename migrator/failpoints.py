"""Named crash points for drills: ``MIGRATOR_FAILPOINT=name`` (or ``name@N`` for the N-th hit; several
comma-separated: the first reached wins) makes the process SIGKILL itself there, exactly like a crash.
Unset (always, in production) it costs one function call; the variable is read when the process starts.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

_hits: Counter = Counter()
_lock = threading.Lock()
_WANTED = os.environ.get("MIGRATOR_FAILPOINT", "")  # read once: failpoint() sits on per-file paths


def failpoint(name: str) -> None:
    if not _WANTED:
        return
    for spec in _WANTED.split(","):
        point, _, nth = spec.strip().partition("@")
        if point != name:
            continue
        with _lock:
            _hits[name] += 1
            if _hits[name] >= int(nth or 1):
                os.kill(os.getpid(), signal.SIGKILL)
        return
