"""`migrator rollback` checks before it asks (issue 22, section 4): when it would refuse, it says so at once,
naming the repositories and tags that would be lost, before any [y/N]."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import run_cli
from test_e2e import push_images, storage_of

from migrator.registry_http import RegistryClient

pytestmark = pytest.mark.slow


def test_rollback_names_what_would_be_lost_before_it_asks(local_registry):
    client = RegistryClient(local_registry.url)
    push_images(client, 2, seed=6)
    plan = local_registry.write_plan()
    assert run_cli("run", "--yes", plan).returncode == 0
    time.sleep(1.1)  # S3 LastModified has one-second resolution
    client.push_image("new/after", "v1", [b"pushed to s3 only"])

    refused = run_cli("rollback", plan)  # no --yes: it would ask, but must refuse first
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "[y/N]" not in refused.stdout + refused.stderr and "declined" not in refused.stdout
    assert "new/after:v1" in refused.stderr and "--force" in refused.stderr
    assert "s3" in storage_of(local_registry.config)
    forced = subprocess.run([sys.executable, "-m", "migrator", "--quiet", "rollback", "--force", str(plan)],
                            input="n\n", capture_output=True, text=True, timeout=300)
    asked = forced.stdout + forced.stderr  # --force says what it drops, and what the next run does with it
    assert "stay in the bucket only" in asked and "new/after:v1" in asked and "--allow-mass-delete" in asked, asked
    assert "s3" in storage_of(local_registry.config)  # declined: nothing changed
