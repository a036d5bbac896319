"""The commands in a real (pseudo-)terminal, read off the screen: the progress block, the prompt before the flip,
Ctrl-C in the copy and inside the window, what 'status' says afterwards, 'status --watch' beside a run."""

from __future__ import annotations

import json
import os
import re
import time

import pytest
from conftest import run_cli
from terminal import Terminal
from test_e2e import push_images

from migrator.registry_http import RegistryClient
from migrator.testing.synthetic import RegistryTree, populate

pytestmark = pytest.mark.slow

BLOCK = r"initial_sync \(pass 1\) \| [\d,]+ (of [\d,]+ )?files.*\| uploaded [\d,]+ objects, [\d.]+ (B|KiB|MiB)"


@pytest.fixture
def plan(local_registry):
    push_images(RegistryClient(local_registry.url), 9, seed=5)
    return local_registry.write_plan()


def slow_restart_plan(local_registry, seconds: float):
    """A plan whose registry restarts take ``seconds`` longer: time to act inside the window."""
    push_images(RegistryClient(local_registry.url), 6, seed=6)
    return local_registry.write_plan(registry={"config": str(local_registry.config), "url": local_registry.url,
                                               "restart": f"sleep {seconds}; {local_registry.restart_command}"})


def test_report_in_a_terminal_shows_progress_and_does_not_crash(plan):
    terminal = Terminal("report", plan, rows=120)  # the whole report on one screen, as an operator scrolls back
    assert terminal.exit_code() == 0, terminal.text()
    assert "unexpected" not in terminal.text()
    assert "estimated read-only window" in terminal.text()
    assert terminal.text().count("hint: http.draintimeout") == 1, terminal.text()  # said once


def test_run_to_the_end_shows_one_progress_block_and_where_the_registry_is(plan, bucket, local_registry):
    populate(RegistryTree(local_registry.root), images=200)  # a copy long enough for the block's redraws (2 a second)
    terminal = Terminal("run", "--yes", plan)
    assert terminal.exit_code() == 0, terminal.text()
    copying = terminal.saw(BLOCK)
    assert copying, "no progress block during the initial sync:\n" + "\n---\n".join(terminal.frames[-5:])
    assert terminal.saw(r"initial_sync \(pass 1\) \| [\d,]+ of [\d,]+ files \(\d+%\) \| uploaded [\d,]+ objects, "
                        r"[\d.]+ (B|KiB|MiB) of ~[\d.]+ (B|KiB|MiB) \(\d+%\)"), "the first pass never showed its totals"
    frame = copying[-1].splitlines()
    row = next(i for i, line in enumerate(frame) if re.search(BLOCK, line))
    assert frame[row + 1].startswith("registry: read-write on filesystem"), copying[-1]
    assert terminal.saw(r"registry: READ-ONLY since \d\d:\d\d:\d\d \(\d+ s\)"), "the window never showed"
    assert len(re.findall(BLOCK, copying[-1])) == 1, copying[-1]  # one block, log lines above it
    lines = terminal.text().splitlines()
    assert lines[-2] == f"registry: read-write on s3://{bucket}/reg/", terminal.text()
    assert lines[-1] == f"undo: migrator rollback {plan}", terminal.text()
    assert "AFTER THE CUT-OVER" not in terminal.text()  # not shouted


def test_run_answered_at_its_prompt_counts_no_waiting(plan):
    terminal = Terminal("run", plan)
    asked = terminal.wait_for(r"read-only mode now\? Pushes are refused for about (\d+) s \(restarts included: 2 of 10 "
                              r"s each assumed, registry\.restart_seconds\)\. "
                              r"Ctrl-C or N now: nothing changes; Ctrl-C inside the window: back to the filesystem, "
                              r"read-write \[y/N\]:")
    assert int(asked.group(1)) > 0
    time.sleep(4)  # the operator reads the question
    terminal.send("y\r")
    assert terminal.exit_code() == 0, terminal.text()
    report = json.loads((plan.parent / "plan.state" / "report.json").read_text())
    readonly_on = next(p for p in report["phases"] if p["name"] == "readonly_on")
    assert readonly_on["seconds"] < 4, readonly_on  # the answer's wait is no phase's work


def test_run_declined_at_its_prompt_with_ctrl_c_changes_nothing(plan, local_registry):
    before = local_registry.config.read_text()
    terminal = Terminal("run", plan)
    terminal.wait_for(r"read-only mode now\?.*\[y/N\]:")
    terminal.interrupt()
    assert terminal.exit_code() == 1, terminal.text()
    assert "read-only flip declined; the registry was not touched" in terminal.text()
    assert local_registry.config.read_text() == before
    status = Terminal("status", plan)
    assert status.exit_code() == 0
    assert "outcome: stopped: read-only flip declined" in status.text(), status.text()
    assert "registry: read-write on filesystem" in status.text(), status.text()


def test_ctrl_c_during_the_copy_then_status_says_what_is_true(plan, local_registry):
    populate(RegistryTree(local_registry.root), images=200, max_layer=512 * 1024)  # a copy of some seconds: Ctrl-C lands in it
    terminal = Terminal("run", "--yes", plan, env=None)
    terminal.wait_for(r"initial_sync \(pass 1\)")
    terminal.interrupt()
    assert terminal.exit_code() == 130, terminal.text()
    assert "interrupted: re-run the same command to continue" in terminal.text()
    status = Terminal("status", plan)
    assert status.exit_code() == 0
    assert "outcome: stopped: interrupted (Ctrl-C)" in status.text(), status.text()
    assert "registry: read-write on filesystem" in status.text(), status.text()
    assert "in progress" not in status.text()
    assert json.loads((plan.parent / "plan.state" / "report.json").read_text())["stopped"]["exit_code"] == 130


def test_ctrl_c_inside_the_window_goes_back_to_the_filesystem(local_registry):
    plan = slow_restart_plan(local_registry, 3)
    original = local_registry.config.read_text()
    terminal = Terminal("run", "--yes", plan)
    terminal.wait_for(r"registry: READ-ONLY since")
    terminal.interrupt()
    assert terminal.exit_code() == 1, terminal.text()
    assert "interrupted (Ctrl-C) inside the read-only window" in terminal.text()
    assert "failure inside the read-only window ()" not in terminal.text()
    assert local_registry.config.read_text() == original
    assert RegistryClient(local_registry.url).write_probe("probe/after-ctrl-c") == 202
    status = Terminal("status", plan)
    assert status.exit_code() == 0
    screen = status.text()
    assert re.search(r"outcome: stopped: interrupted \(Ctrl-C\) inside the read-only window", screen), screen
    assert re.search(r"registry: read-write on filesystem \(proven \d\d:\d\d:\d\d\)", screen), screen
    assert "last problem" not in screen, screen  # the stop is the news, said once
    assert "next: " in screen, screen
    report = json.loads((plan.parent / "plan.state" / "report.json").read_text())
    assert report["stopped"]["reason"].startswith("interrupted (Ctrl-C) inside the read-only window")
    page = (plan.parent / "plan.state" / "report.html").read_text()
    assert "migrator report: stopped: interrupted (Ctrl-C)" in page
    assert "1: stopped: interrupted (Ctrl-C) inside the read-only window" in page  # the attempt, labelled
    assert "The read-only window, to its own scale" in page
    assert str(plan) in page and str(local_registry.config) in page and f"s3://{local_registry.bucket}/reg/" in page


def test_status_watch_started_before_a_run_follows_it_to_the_end(local_registry):
    plan = slow_restart_plan(local_registry, 1)
    watch = Terminal("status", "--watch", "--interval", "0.3", plan)
    watch.wait_for(r"waiting for a run")
    run = Terminal("run", "--yes", plan)
    watch.wait_for(r"running: initial_sync|running: delta_passes|running: online_verification")
    watch.wait_for(r"registry: READ-ONLY since")
    assert run.exit_code() == 0, run.text()
    assert watch.exit_code(timeout=60) == 0, watch.text()
    assert "outcome: done" in watch.text() and "registry: read-write on s3" in watch.text(), watch.text()


def test_a_copy_of_the_plan_is_refused_while_the_first_run_holds_the_registry(plan, local_registry):
    first = Terminal("run", plan)
    first.wait_for(r"read-only mode now\?.*\[y/N\]:")
    copy = local_registry.write_plan("copy-of-plan.yml")  # the same registry and bucket, another state directory
    second = run_cli("run", "--yes", copy, timeout=120)
    assert second.returncode == 3, second.stderr
    assert f"plan {plan}, state directory {plan.parent / 'plan.state'})" in second.stderr, second.stderr
    assert f"is migrating the registry config {local_registry.config}" in second.stderr, second.stderr
    first.send("n\r")
    assert first.exit_code() == 1, first.text()
    assert run_cli("report", copy, timeout=120).returncode == 0  # the lock went with the first run
    synced = run_cli("sync", copy, timeout=120)
    assert synced.returncode == 0, synced.stderr


def test_sigkill_then_status_says_the_run_ended_without_a_word(plan):
    killed = Terminal("run", "--yes", plan, env=dict(os.environ, MIGRATOR_FAILPOINT="before-done:delta_passes"))
    assert killed.exit_code() == 128 + 9, killed.text()
    status = Terminal("status", plan)
    assert status.exit_code() == 0
    assert "outcome: stopped: the run ended without a word (killed?) during delta_passes" in status.text(), status.text()
    assert "registry: read-write on filesystem" in status.text() and "in progress" not in status.text(), status.text()
