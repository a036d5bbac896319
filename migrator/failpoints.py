"""Named crash points for drills: ``MIGRATOR_FAILPOINT=name`` (or ``name@N`` for the N-th hit; several
comma-separated: the first reached wins) makes the process SIGKILL itself there, exactly like a crash.
Unset (always, in production) it costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

_hits: Counter = Counter()
_lock = threading.Lock()


def failpoint(name: str) -> None:
    wanted = os.environ.get("MIGRATOR_FAILPOINT")
    if not wanted:
        return
    for spec in wanted.split(","):
        point, _, nth = spec.strip().partition("@")
        if point != name:
            continue
        with _lock:
            _hits[name] += 1
            if _hits[name] >= int(nth or 1):
                os.kill(os.getpid(), signal.SIGKILL)
        return
