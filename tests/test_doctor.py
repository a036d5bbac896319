"""``migrator doctor`` against buckets and registries that have each problem: the finding is named, the exit code is
as stated, and nothing outside the scratch prefix changed (listed before and after with the test's own client)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest
from conftest import listing, run_cli

from migrator.local import LocalRegistry, MotoServer
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


REGISTRY_ACTIONS = ["s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:ListBucket", "s3:ListBucketMultipartUploads",
                    "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload", "s3:GetLifecycleConfiguration",
                    "s3:GetBucketVersioning", "s3:GetBucketObjectLockConfiguration", "s3:GetEncryptionConfiguration",
                    "s3:HeadBucket", "s3:GetBucketLocation"]


@pytest.fixture(scope="module")
def iam_moto(tmp_path_factory):
    """A moto_server enforcing IAM: its first requests (unauthenticated) create an admin and a registry user whose
    policy lacks s3:ListMultipartUploadParts; every request after is checked against the signer's policy."""
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "6"
    try:
        server = MotoServer(logfile=tmp_path_factory.mktemp("iam-moto") / "moto.log",
                            command=[sys.executable, str(Path(__file__).with_name("iam_moto.py"))]).start()
    finally:
        del os.environ["INITIAL_NO_AUTH_ACTION_COUNT"]
    iam = boto3.client("iam", endpoint_url=server.endpoint, region_name="us-east-1", **ADMIN)
    keys = {}
    for user, actions in (("admin", ["s3:*"]),
                          ("registry", [a for a in REGISTRY_ACTIONS if a != "s3:ListMultipartUploadParts"])):
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        keys[user] = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
    yield server, keys
    server.stop()


def test_a_denied_multipart_action_is_named_and_blocks(iam_moto, tmp_path):
    server, keys = iam_moto
    admin = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1", **keys["admin"])
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    admin.create_bucket(Bucket=bucket)
    healthy_bucket(admin, bucket)
    registry = LocalRegistry(tmp_path / "registry", server.endpoint, bucket, prefix="reg").start()
    try:
        plan = registry.write_plan(registry={"config": str(registry.config), "url": registry.url,
                                             "restart": registry.restart_command, "redirect": {"disable": True}})
        before = listing(admin, bucket)
        env = dict(os.environ, AWS_ACCESS_KEY_ID=keys["registry"]["aws_access_key_id"],
                   AWS_SECRET_ACCESS_KEY=keys["registry"]["aws_secret_access_key"])
        done, result = doctor(plan, tmp_path, env)
        assert done.returncode == 2, done.stdout + done.stderr
        blocking = checks(result, blocks=True)
        assert list(blocking) == ["push"], result
        assert "s3:ListMultipartUploadParts denied: pushes of layers above chunksize will fail" in blocking["push"]
        assert "BLOCKS [push]" in done.stdout
        assert listing(admin, bucket) == before
        assert not admin.list_multipart_uploads(Bucket=bucket).get("Uploads")
    finally:
        registry.stop()
