"""The command line as operators type it: global flags before or after the subcommand."""

from __future__ import annotations

import subprocess
import sys

import pytest


def migrator(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "migrator", *map(str, args)], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("where", ["before", "after"])
def test_global_flags_work_before_and_after_the_subcommand(tree, make_plan, tmp_path, where):
    plan = make_plan(tree.root)

    def verify(*flags):
        return migrator(*flags, "verify", plan) if where == "before" else migrator("verify", plan, *flags)

    plain = verify()
    assert plain.returncode == 1 and "image check" in plain.stderr  # an empty bucket differs; INFO is shown
    quiet = verify("--quiet")
    assert quiet.returncode == 1 and "image check" not in quiet.stderr and "DIFFERENCES FOUND" in quiet.stdout
    verbose = verify("-v")
    assert verbose.returncode == 1 and "migrator 0.1.0, plan" in verbose.stderr
    log_file = tmp_path / f"{where}.log"
    logged = verify("--log-file", log_file)
    assert logged.returncode == 1 and "image check" in log_file.read_text()


@pytest.mark.parametrize("command", ["run", "report", "sync", "verify", "status", "rollback"])
def test_help_shows_the_global_flags_under_every_command(command):
    shown = migrator(command, "--help")
    assert shown.returncode == 0
    assert "--quiet" in shown.stdout and "--log-file" in shown.stdout and "--verbose" in shown.stdout
