"""``migrator doctor`` against buckets and registries that have each problem: the finding is named, the exit code is
as stated, and nothing outside the scratch prefix changed (listed before and after with the test's own client)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
import yaml
from conftest import file_hash, listing, run_cli

from migrator.doctor import version_findings
from migrator.local import REGISTRY_BINARY, LocalRegistry, MotoServer
from migrator.registry_http import RegistryClient

ADMIN = {"aws_access_key_id": "test-access-key", "aws_secret_access_key": "test-secret-key-do-not-print"}


def doctor(plan: Path, tmp_path: Path, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / f"doctor-{uuid.uuid4().hex[:6]}.json"
    done = run_cli("doctor", plan, "--json", out, env=env)
    return done, json.loads(out.read_text()) if out.exists() else {}


def checks(result: dict, blocks: bool) -> dict[str, str]:
    return {f["check"]: f["message"] for f in result["findings"] if f["blocks"] is blocks}


def healthy_bucket(s3, bucket: str, prefix: str = "reg/") -> None:
    """The advice a fresh bucket gets for want of an abort-incomplete-multipart rule, taken."""
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "abort", "Status": "Enabled", "Filter": {"Prefix": prefix},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}}]})


@pytest.fixture
def registry_plan(local_registry):
    """The local registry with one image on the filesystem, and its plan (redirect disabled: loopback moto)."""
    RegistryClient(local_registry.url).push_image("team/app", "v1", [b"layer one" * 100])
    return local_registry.write_plan(registry={"config": str(local_registry.config), "url": local_registry.url,
                                               "restart": local_registry.restart_command, "redirect": {"disable": True}})


def test_healthy_setup_says_so_in_a_few_lines(registry_plan, s3, bucket, tmp_path):
    healthy_bucket(s3, bucket)
    before = listing(s3, bucket)
    done, result = doctor(registry_plan, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert result["ok"] and result["findings"] == [], result
    lines = done.stdout.splitlines()
    assert len(lines) <= 10 and lines[-1] == "doctor: nothing found; the bucket and the registry are ready"
    assert any("pushed a 11 MiB layer" in line for line in lines), done.stdout
    assert listing(s3, bucket) == before
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
