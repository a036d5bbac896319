"""The progress block's figures: totals for the initial sync, bytes of the total, the ETA; and the count behind
them walks what a pass walks (checked against a plain os.walk)."""

from __future__ import annotations

import logging
import os
import threading

from migrator.console import progress_lines
from migrator.layout import UPLOADS_DIR
from migrator.live import ADVICE, Counts, LiveStatus, with_rates
from migrator.testing.synthetic import RegistryTree, populate
from migrator.walker import source_totals


def test_the_block_shows_files_and_bytes_of_their_totals():
    counts = Counts(lambda: "read-write on filesystem")
    counts.phase_started("initial_sync")
    counts.pass_started(1, None)
    counts.totals(1, 400, 4 * 1024 * 1024)
    counts.walked(100)
    counts.uploaded(100, 1024 * 1024)
    line = progress_lines(counts.snapshot())[0]
    assert "initial_sync (pass 1) | 100 of 400 files (25%)" in line, line
    assert "uploaded 100 objects, 1.0 MiB of ~4.0 MiB (25%)" in line, line


def test_totals_counted_after_their_pass_ended_are_dropped():
    counts = Counts()
    counts.phase_started("initial_sync")
    counts.pass_started(1, None)
    counts.pass_started(2, 50)
    counts.totals(1, 400, 4096)
    snapshot = counts.snapshot()
    assert (snapshot["expected_objects"], snapshot["expected_bytes"]) == (50, None)


def test_the_eta_is_the_later_of_files_and_bytes():
    data = {"walked": 90, "uploaded_bytes": 10, "expected_objects": 100, "expected_bytes": 100,
            "pass_started_at": 100.0, "phase_started_at": 100.0}
    eta = with_rates(data, at=110.0, running=True)["eta_seconds"]  # 9 files/s, 1 B/s: the bytes take 90 s more
    assert eta == 90.0


def test_the_count_walks_what_a_pass_walks(tmp_path):
    tree = RegistryTree(tmp_path)
    populate(tree, images=20)
    root = str(tree.root)
    files = sizes = 0
    for directory, _, names in os.walk(root):
        if UPLOADS_DIR in directory[len(root):].split(os.sep):  # in-progress uploads are never copied
            continue
        for name in names:
            files += 1
            sizes += os.path.getsize(os.path.join(directory, name))
    assert source_totals(tree.root, threading.Event()) == (files, sizes)
    stopped = threading.Event()
    stopped.set()
    assert source_totals(tree.root, stopped) is None


def test_advice_is_said_but_is_not_the_runs_last_problem(tmp_path):
    live = LiveStatus(tmp_path, has_registry=False)
    log = logging.getLogger("migrator.test-progress")
    log.addHandler(live.handler)
    try:
        log.warning("advice [lifecycle] add a rule", extra={ADVICE: True})
        assert live.snapshot()["last_problem"] is None
        log.warning("the registry answered 503")
        assert live.snapshot()["last_problem"]["message"] == "the registry answered 503"
    finally:
        log.removeHandler(live.handler)
