"""``migrator doctor`` against buckets and registries that have each problem: the finding is named, the exit code is
as stated, and nothing outside the scratch prefix changed (listed before and after with the test's own client)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import boto3
import pytest
import yaml
from conftest import file_hash, invoke_cli, listing

from migrator.doctor import version_findings
from migrator.plan import BucketSettings, SyncSettings
from migrator.registry_http import RegistryClient
from migrator.s3 import open_bucket
from migrator.testing.local import REGISTRY_BINARY, LocalRegistry, MotoServer

ADMIN = {"aws_access_key_id": "test-access-key", "aws_secret_access_key": "test-secret-key-do-not-print"}


def doctor(plan: Path, tmp_path: Path, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / f"doctor-{uuid.uuid4().hex[:6]}.json"
    done = invoke_cli("doctor", plan, "--json", out, env=env)
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def bucket_plan(make_plan, tree, **sections) -> Path:
    """A plan without a registry section (no push) for the synthetic tree, keys under reg/."""
    return make_plan(tree.root, prefix="reg", **sections)


def test_an_expiring_lifecycle_rule_blocks_and_a_missing_abort_rule_is_advice(make_plan, tree, s3, bucket, tmp_path):
    plan = bucket_plan(make_plan, tree)
    done, result = doctor(plan, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no lifecycle rule aborts incomplete multipart uploads" in checks(result, blocks=False)["lifecycle"]
    assert '"AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}' in done.stdout

    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "tidy-up", "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 30},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}]})
    before = listing(s3, bucket)
    done, result = doctor(plan, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "lifecycle rule 'tidy-up' expires keys under 'the whole bucket' after 30 days" in checks(result, True)["lifecycle"]
    assert "lifecycle" not in checks(result, blocks=False)  # its abort part covers the uploads
    assert listing(s3, bucket) == before


def test_a_rule_for_other_keys_does_not_block(make_plan, tree, s3, bucket, tmp_path):
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "logs", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 3}},
        {"ID": "tagged", "Status": "Enabled", "Filter": {"Tag": {"Key": "tmp", "Value": "1"}}, "Expiration": {"Days": 1}},
        {"ID": "abort", "Status": "Enabled", "Filter": {"Prefix": "reg/"},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}}]})
    done, result = doctor(bucket_plan(make_plan, tree), tmp_path)
    assert done.returncode == 0 and result["findings"] == [], done.stdout + done.stderr


def test_versioning_is_advice(make_plan, tree, s3, bucket, tmp_path):
    healthy_bucket(s3, bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    done, result = doctor(bucket_plan(make_plan, tree), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "versioning is enabled on the bucket" in checks(result, blocks=False)["versioning"]
    assert result["ok"]


def test_object_lock_with_a_default_retention_blocks(make_plan, tree, s3, tmp_path):
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    healthy_bucket(s3, name)
    s3.put_object_lock_configuration(Bucket=name, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}})
    plan = bucket_plan(make_plan, tree)
    text = yaml.safe_load(plan.read_text())
    text["bucket"]["name"] = name
    plan.write_text(yaml.safe_dump(text))
    done, result = doctor(plan, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Object Lock with a default retention (GOVERNANCE, 1 days)" in checks(result, blocks=True)["object-lock"]


def test_blobs_too_large_for_chunksize_are_named_with_a_chunksize_that_fits(make_plan, tree, s3, bucket, tmp_path):
    healthy_bucket(s3, bucket)
    digest = tree.blob(b"a layer that will be made huge")
    data = tree.root / f"docker/registry/v2/blobs/sha256/{digest[7:9]}/{digest[7:]}/data"
    os.truncate(data, 5 * 2**20 * 10_000 + 1)  # sparse: one byte above 5 MiB × 10,000 parts
    plan = bucket_plan(make_plan, tree)
    done, result = doctor(plan, tmp_path)  # no registry section: the driver's default chunksize, 10 MiB, fits
    assert done.returncode == 0 and result["findings"] == [], done.stdout + done.stderr
    text = yaml.safe_load(plan.read_text())
    text["registry"] = {"config": str(tmp_path / "none.yml"), "restart": "true", "url": "http://127.0.0.1:9",
                        "storage": {"chunksize": 5 * 2**20}}
    (tmp_path / "none.yml").write_text("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /x\n")
    plan.write_text(yaml.safe_dump(text))
    done, result = doctor(plan, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    message = checks(result, blocks=False)["blob-size"]
    assert f"{digest} (48.8 GiB)" in message and "Set chunksize: 6291456 under registry.storage" in message


def test_directory_markers_block_and_foreign_keys_are_advice(make_plan, tree, s3, bucket, tmp_path):
    healthy_bucket(s3, bucket)
    s3.put_object(Bucket=bucket, Key="reg/docker/registry/v2/repositories/team/", Body=b"")
    s3.put_object(Bucket=bucket, Key="reg/notes/readme.txt", Body=b"not the registry's")
    s3.put_object(Bucket=bucket, Key="other-team/", Body=b"")  # outside the prefix: not the registry's business
    before = listing(s3, bucket)
    done, result = doctor(bucket_plan(make_plan, tree), tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    blocking, advice = checks(result, blocks=True), checks(result, blocks=False)
    assert "1 zero-byte directory-marker keys under the prefix" in blocking["keys"]
    assert "aws s3api delete-object --bucket " + bucket + " --key 'reg/docker/registry/v2/repositories/team/'" \
        in blocking["keys"]
    assert "reg/notes/readme.txt" in advice["keys"] and "other-team/" not in json.dumps(result)
    assert listing(s3, bucket) == before


def fake_release(tmp_path: Path, answer: str) -> Path:
    """A registry binary that says it is ``answer`` and serves as docker-registry 2.8 does."""
    script = tmp_path / "registry-wrapper"
    script.write_text(f'#!/bin/sh\nif [ "$1" = "--version" ]; then echo "{answer}"; exit 0; fi\n'
                      f'exec {REGISTRY_BINARY} "$@"\n')
    script.chmod(0o755)
    return script


@pytest.mark.slow
def test_a_registry_release_with_known_s3_defects_blocks(local_registry, s3, bucket, tmp_path):
    healthy_bucket(s3, bucket)
    binary = fake_release(tmp_path, "registry github.com/distribution/distribution/v3 v3.1.0")
    plan = local_registry.write_plan(registry={"config": str(local_registry.config), "url": local_registry.url,
                                               "restart": local_registry.restart_command, "binary": str(binary),
                                               "redirect": {"disable": True}})
    done, result = doctor(plan, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    messages = [f["message"] for f in result["findings"] if f["check"] == "registry-version" and f["blocks"]]
    assert any("distribution #4528" in m and "forcepathstyle: true" in m for m in messages), messages
    assert any("distribution #4891" in m for m in messages), messages


@pytest.mark.parametrize("answer, storage, blocking", [
    ("docker-registry github.com/docker/distribution 2.8.2+ds1", {}, 0),
    ("registry github.com/distribution/distribution/v3 v3.0.0", {"forcepathstyle": True}, 0),
    ("registry github.com/distribution/distribution/v3 v3.0.0", {}, 1),
    ("registry github.com/distribution/distribution/v3 v3.1.1", {"forcepathstyle": "true"}, 1),
    ("registry github.com/distribution/distribution/v3 v3.1.2", {"forcepathstyle": True}, 0),
    ("registry github.com/docker/distribution v4.14.0-gitlab", {}, 0),  # GitLab's fork numbers its own releases
])
def test_known_defects_by_release(answer, storage, blocking):
    assert len(version_findings(answer, storage, "http://s3.internal:9000")) == blocking


@pytest.mark.slow
def test_a_redirect_to_a_loopback_endpoint_is_advice(local_registry, s3, bucket, tmp_path):
    healthy_bucket(s3, bucket)
    plan = local_registry.write_plan()
    done, result = doctor(plan, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"redirected (307) to {local_registry.s3_endpoint}, a loopback" in checks(result, blocks=False)["redirect"]


@pytest.mark.slow
def test_run_refuses_before_any_change_when_something_blocks(registry_plan, local_registry, s3, bucket):
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "expire-all", "Status": "Enabled", "Filter": {"Prefix": "reg/"}, "Expiration": {"Days": 1}}]})
    before, config = listing(s3, bucket), file_hash(local_registry.config)
    pid = local_registry.pidfile.read_text()
    done = invoke_cli("run", "--yes", registry_plan)
    assert done.returncode == 2, done.stderr
    assert "lifecycle rule 'expire-all' expires keys" in done.stderr and "nothing was changed" in done.stderr
    assert listing(s3, bucket) == before
    assert file_hash(local_registry.config) == config and local_registry.pidfile.read_text() == pid  # no restart

    report = invoke_cli("report", registry_plan, "--json", registry_plan.with_name("report.json"))
    assert report.returncode == 0, report.stderr
    listed = json.loads(registry_plan.with_name("report.json").read_text())["doctor"]
    assert not listed["ok"] and [f["check"] for f in listed["findings"] if f["blocks"]] == ["lifecycle"]
    assert "doctor: BLOCKS [lifecycle] lifecycle rule 'expire-all'" in report.stdout
    assert not any("push" in line for line in listed["proven"]), "report pushes nothing"
    assert listing(s3, bucket) == before


@pytest.mark.slow
def test_rgw_object_lock_and_an_expiring_rule_block(rgw, tree, tmp_path):
    """Ceph RGW's own answers: a bucket created with Object Lock and a default retention, an expiring lifecycle
    rule, versioning (Object Lock turns it on)."""
    s3 = rgw.client()
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    s3.put_object_lock_configuration(Bucket=name, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}})
    s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration={"Rules": [
        {"ID": "expire", "Status": "Enabled", "Filter": {"Prefix": "reg/docker/"}, "Expiration": {"Days": 30}}]})
    plan = tmp_path / "plan.yml"
    plan.write_text(yaml.safe_dump({"source": str(tree.root),
                                    "bucket": {"name": name, "prefix": "reg", "endpoint": rgw.endpoint}}))
    before = listing(s3, name)
    done, result = doctor(plan, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert set(checks(result, blocks=True)) == {"lifecycle", "object-lock"}, result
    assert "versioning is enabled" in checks(result, blocks=False)["versioning"]
    assert listing(s3, name) == before


def test_inside_the_read_only_window_the_whole_tree_scans_are_left_out(s3, bucket, tmp_path, monkeypatch):
    """A run resumed inside the window asks doctor again: listing the whole prefix and reading every blob's size
    would lengthen the window by the registry's size, for what was checked before it."""
    from fakes import plan as fake_plan

    from migrator import doctor as doctor_module

    scanned: list[str] = []
    monkeypatch.setattr(doctor_module, "check_keys", lambda plan, bucket: (scanned.append("keys"), ([], []))[1])
    monkeypatch.setattr(doctor_module, "check_blob_sizes", lambda plan: (scanned.append("blob-size"), ([], []))[1])
    the_plan = dataclasses.replace(fake_plan(tmp_path, registry=None),
                                   bucket=BucketSettings(name=bucket, endpoint=s3.meta.endpoint_url))
    the_bucket = open_bucket(the_plan.bucket, the_plan.sync, the_plan.key_prefix)
    doctor_module.diagnose(the_plan, the_bucket, None, scans=False)
    assert scanned == []
    doctor_module.diagnose(the_plan, the_bucket, None)
    assert sorted(scanned) == ["blob-size", "keys"]


def test_doctors_checks_run_together_and_report_in_their_order(tmp_path, monkeypatch):
    """Each check waits on the network (one round trip each: ~44 ms against RGW): they run at once, and their
    findings still come in the checks' order."""
    from fakes import plan as fake_plan

    from migrator import doctor as doctor_module

    together = threading.Barrier(4, timeout=10)  # sequential checks would never all be in flight: BrokenBarrierError

    def check(name: str):
        def run(*_args):
            together.wait()
            return [doctor_module.Finding(name, False, f"{name} found")], []
        return run

    for name in ("lifecycle", "versioning", "blob_sizes", "keys"):
        monkeypatch.setattr(doctor_module, f"check_{name}", check(name))
    diagnosis = doctor_module.diagnose(fake_plan(tmp_path, registry=None), None, None)  # type: ignore[arg-type]
    assert [finding.check for finding in diagnosis.findings] == ["lifecycle", "versioning", "blob_sizes", "keys"]


def test_remove_prefix_takes_the_objects_and_open_uploads_under_it_and_nothing_else(s3, bucket):
    """What doctor's push leaves when killed: objects and an unfinished multipart upload under its scratch prefix."""
    scratch = "reg/.migrator-doctor/0123456789ab/"
    for key in (scratch + "docker/registry/v2/blobs/data", scratch + "probe", "reg/.migrator-doctor-notes",
                "reg/docker/registry/v2/repositories/team/app/_layers/link", ".migrator-doctor/0123456789ab/other"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"bytes")
    s3.create_multipart_upload(Bucket=bucket, Key=scratch + "_uploads/layer")
    s3.create_multipart_upload(Bucket=bucket, Key="reg/docker/registry/v2/repositories/team/app/_uploads/push")
    settings = BucketSettings(name=bucket, endpoint=s3.meta.endpoint_url)
    open_bucket(settings, SyncSettings(), "reg/").remove_prefix(".migrator-doctor/0123456789ab/")
    assert sorted(listing(s3, bucket)) == [".migrator-doctor/0123456789ab/other", "reg/.migrator-doctor-notes",
                                           "reg/docker/registry/v2/repositories/team/app/_layers/link"]
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", ())
    assert [upload["Key"] for upload in uploads] == ["reg/docker/registry/v2/repositories/team/app/_uploads/push"]
