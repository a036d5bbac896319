"""The command line as operators type it: global flags before or after the subcommand."""

from __future__ import annotations

import subprocess

import pytest
from conftest import invoke_cli


def migrator(*args) -> subprocess.CompletedProcess:
    """The command line as typed, flags where the test puts them (no --quiet added), in this process."""
    return invoke_cli(*args, quiet=False)


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


@pytest.mark.parametrize("command", [(), ("run",), ("report",), ("sync",), ("verify",), ("status",), ("gc",), ("rollback",),
                                     ("doctor",)])
def test_every_help_ends_with_examples_and_exit_codes(command):
    shown = migrator(*command, "--help")
    assert shown.returncode == 0
    examples, _, exits = shown.stdout.partition("\n  Exit codes:\n")
    assert "\n  Examples:\n    migrator " + (command[0] if command else "") in examples, shown.stdout
    codes = [line.split()[0] for line in exits.splitlines()]
    assert codes[0] == "0" and all(code.isdigit() for code in codes), shown.stdout  # the help's last lines


def test_status_of_a_plan_without_registry_lists_no_flip_or_cut_over(tree, make_plan):
    shown = migrator("status", make_plan(tree.root))
    assert shown.returncode == 0, shown.stderr
    assert "left: initial_sync, delta_passes, online_verification, final_sync, verify_window\n" in shown.stdout
    assert "registry: not touched by this plan" in shown.stdout and "outcome: not started" in shown.stdout
