"""report.html's words for what happened: a stopped attempt, a window, a front."""

from __future__ import annotations

from migrator.html_report import render

WHAT = {"source": "/var/lib/registry", "bucket": "s3://registry/reg/", "plan": "/etc/migrator/plan.yml",
        "registry_config": "/etc/docker/registry/config.yml"}
STOPPED = {**WHAT, "stopped": {"reason": "interrupted (Ctrl-C)", "exit_code": 130}, "passes": 0,
           "attempts": [{"started_at": 1000.0, "ended_at": 1004.0, "outcome": "stopped"}],
           "phases": [{"name": "initial_sync", "started_at": 1000.0, "seconds": 4.0}]}
DONE = {**WHAT, "outcome": "done", "passes": 3, "readonly_on_at": 1010.0, "readonly_off_at": 1012.0,
        "read_only_window_seconds": 2.0, "restart_seconds": 0.8, "pushes_refused_seconds": 2.0,
        "reads_refused_seconds": 0.1, "final_pass": {"method": "change feed (fanotify)"},
        "attempts": [{"started_at": 1000.0, "ended_at": 1013.0, "outcome": "done"}],
        "phases": [{"name": "initial_sync", "started_at": 1000.0, "seconds": 4.0}]}


def test_a_stopped_attempt_says_the_registry_was_not_made_read_only():
    page = render(STOPPED)
    assert "The registry was not made read-only: clients saw nothing of this run." in page
    assert "n/a" not in page
    assert "final pass: not run." in page


def test_a_window_is_told_with_what_clients_saw():
    page = render(DONE)
    assert "Read-only window: <b>2.0 s</b> (restarts 0.8 s)" in page
    assert "registry restart: requests in flight cut" in page


def test_with_a_front_the_legend_does_not_say_restarts_cut_requests():
    front = {"reads": 10, "reads_failed": 0, "pushes": 4, "pushes_refused": 1, "pushes_failed": 0}
    page = render(dict(DONE, front=front))
    assert "requests in flight cut" not in page
    assert "registry restart: clients on the standby meanwhile" in page
