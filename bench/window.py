"""The work migrator does inside the read-only window, timed on its own (restarts excluded):
``python -m bench.window PLAN ONLINE_COUNT`` runs the final delta pass, the delete step and the
verification of the window's change, and prints JSON."""

from __future__ import annotations

import json
import sys
import time

from migrator.pipeline import migration
from migrator.plan import load_plan


def main() -> int:
    plan = load_plan(sys.argv[1])
    with migration(plan) as job:
        job.journal.start_window()
        job.state.online_verified_objects = int(sys.argv[2])
        started = time.monotonic()
        with job.bucket.counter.phase_scope("window"):
            result = job.final_sync_and_delete()
            job.verify_window()
        seconds = time.monotonic() - started
        print(json.dumps({"seconds": seconds, "source_objects": result.source_objects,
                          "uploaded": result.uploaded_objects, "deleted": result.deleted_objects,
                          "s3_requests": job.bucket.counter.attempts["window"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
