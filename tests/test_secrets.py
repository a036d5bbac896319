"""Secrets: with credentials in the environment, no log, report, state file or output holds the secret key."""

from __future__ import annotations

import os
import stat

import pytest
from conftest import run_cli
from test_e2e import push_images

from migrator.registry_http import RegistryClient

pytestmark = pytest.mark.slow

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


def test_no_secret_anywhere_but_the_config_that_asked_for_it(local_registry, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    os.chmod(local_registry.config, 0o640)
    push_images(RegistryClient(local_registry.url), 2, seed=21)
    plan = local_registry.write_plan(registry={"config": str(local_registry.config), "url": local_registry.url,
                                               "restart": local_registry.restart_command, "write_credentials": True})
    outputs = []
    report = run_cli("report", plan, "--json", tmp_path / "report.json")
    outputs += [report.stdout, report.stderr]
    assert report.returncode == 0, report.stderr
    log_file = tmp_path / "verbose.log"
    run = run_cli("--log-file", log_file, "-v", "run", "--yes", plan)
    outputs += [run.stdout, run.stderr]
    assert run.returncode == 0, run.stderr
    bad = run_cli("verify", local_registry.write_plan("bad.yml", bucket={"name": "no-such-bucket", "endpoint": "x"}))
    outputs += [bad.stdout, bad.stderr]
    state_dir = plan.parent / "plan.state"
    files = [log_file, tmp_path / "report.json"] + [p for p in state_dir.rglob("*") if p.is_file()
                                                    and p.suffix in (".json", ".log") or p.name.startswith("migrator.log")]
    assert files and log_file.stat().st_size > 0
    for path in files:
        assert SECRET not in path.read_text(errors="replace"), path
    for text in outputs:
        assert SECRET not in text
    assert "<redacted>" in (tmp_path / "report.json").read_text()  # the config diff shows where it goes
    # the rewritten config holds it (write_credentials: true asked for that) and keeps its mode
    assert SECRET in local_registry.config.read_text()
    assert stat.S_IMODE(os.stat(local_registry.config).st_mode) == 0o640
