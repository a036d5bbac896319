"""The work migrator does inside the read-only window, timed on its own (restarts excluded):
``python -m bench.window PLAN ONLINE_COUNT CHURN SEED`` runs the last online pass (under the change feed, as
``migrator run`` does), applies the churn, then times the final pass, the delete step and the verification of
the window's change, and prints JSON. The plan's ``sync.change_feed`` decides between feed and full walk."""

from __future__ import annotations

import json
import sys
import time

from bench.tree import churn
from migrator.changefeed import PassTracker
from migrator.migration.context import open_context
from migrator.migration.copy import final_sync_and_delete, sync_pass
from migrator.migration.proofs import verify_window
from migrator.plan import load_plan


def main() -> int:
    plan = load_plan(sys.argv[1])
    online, changes, seed = (int(arg) for arg in sys.argv[2:5])
    with open_context(plan) as job:
        job.tracker = PassTracker(job.plan.source, job.plan.sync.change_feed)
        sync_pass(job)  # the last online pass: the feed watches from its start
        described = churn(job.plan.source, changes, seed)
        job.journal.start_window()
        job.state.online_verified_objects = online
        started = time.monotonic()
        with job.bucket.counter.phase_scope("window"):
            result = final_sync_and_delete(job)
            verify_window(job)
        seconds = time.monotonic() - started
        print(json.dumps({"seconds": seconds, "source_objects": result.source_objects, "churn": described,
                          "uploaded": result.uploaded_objects, "deleted": result.deleted_objects,
                          "final_pass": job.state.final_pass, "verification": job.state.verification,
                          "s3_requests": job.bucket.counter.attempts["window"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
