"""migrator verify: the manual procedure's count check, the key-by-key diff, and --deep digests."""

from __future__ import annotations

import json

import pytest
from conftest import invoke_cli, listing, source_files


@pytest.fixture
def synced(tree, make_plan):
    plan = make_plan(tree.root, prefix="reg")
    assert invoke_cli("sync", plan).returncode == 0
    return plan


def verify_json(plan, tmp_path, *flags):
    out = tmp_path / "verify.json"
    result = invoke_cli("verify", plan, "--json", out, *flags)
    return result, json.loads(out.read_text())


def test_clean_bucket_verifies_and_uploads_are_not_counted(synced, tree, s3, bucket, tmp_path):
    s3.put_object(Bucket=bucket, Key="reg/docker/registry/v2/repositories/x/_uploads/u/data", Body=b"partial")
    before = listing(s3, bucket)
    result, report = verify_json(synced, tmp_path, "--deep")
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["source_objects"] == report["bucket_objects"] == len(source_files(tree.root))
    assert report["deep_checked"] == sum(1 for rel in source_files(tree.root) if rel.endswith("/data"))
    assert (report["missing"], report["extra"], report["mismatched"], report["ok"]) == (0, 0, 0, True)
    assert listing(s3, bucket) == before  # verify changes nothing


def test_tampered_link_same_size_other_bytes_exits_1(synced, tree, s3, bucket, tmp_path):
    link = next(p for p in source_files(tree.root) if p.endswith("current/link"))
    s3.put_object(Bucket=bucket, Key=f"reg/{link}", Body=b"sha256:" + b"f" * 64)
    result, report = verify_json(synced, tmp_path)
    assert result.returncode == 1
    assert report["mismatched"] == 1 and report["mismatched_keys"] == [link]


def test_missing_object_exits_1(synced, tree, s3, bucket, tmp_path):
    victim = sorted(source_files(tree.root))[3]
    s3.delete_object(Bucket=bucket, Key=f"reg/{victim}")
    result, report = verify_json(synced, tmp_path)
    assert result.returncode == 1
    assert report["missing_keys"] == [victim]
    assert report["bucket_objects"] == report["source_objects"] - 1
    assert "DIFFERENCES FOUND" in result.stdout


def test_extra_object_exits_1(synced, s3, bucket, tmp_path):
    s3.put_object(Bucket=bucket, Key="reg/docker/registry/v2/repositories/ghost/_layers/sha256/x/link", Body=b"x")
    result, report = verify_json(synced, tmp_path)
    assert result.returncode == 1 and report["extra"] == 1


def test_deep_catches_a_blob_whose_bytes_do_not_match_its_digest(synced, tree, s3, bucket, tmp_path):
    blob = next(p for p in sorted(source_files(tree.root)) if p.endswith("/data"))
    size = len(source_files(tree.root)[blob])
    s3.put_object(Bucket=bucket, Key=f"reg/{blob}", Body=b"\0" * size)  # same size: only the digest tells
    shallow, _ = verify_json(synced, tmp_path)
    assert shallow.returncode == 0  # blobs are compared by size without --deep
    deep, report = verify_json(synced, tmp_path, "--deep")
    assert deep.returncode == 1
    assert report["deep_failed_keys"] == [blob]


def test_sample_checks_n_blobs(synced, tmp_path):
    result, report = verify_json(synced, tmp_path, "--sample", "3")
    assert result.returncode == 0 and report["deep_checked"] == 3
