"""No image lost while `run` and `verify` report success: each defect of the trust issue, against moto_server.

The oracle is ``source_files`` (plain ``os.walk``, links followed, its own ``_uploads`` rule) and the bucket's
own listing; nothing here reuses the walker or the layout filters under test.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import boto3
import pytest
import yaml
from conftest import bucket_contents, invoke_cli, source_files

from migrator import layout, walker
from migrator.changefeed import ChangeFeed, FeedUnavailable, mount_point, mounts_under
from migrator.errors import DeleteFailed, StoppedSafely
from migrator.migration import copy, proofs, runner
from migrator.migration.context import open_context as migration
from migrator.plan import load_plan
from migrator.testing.phases import replace_phase
from migrator.testing.synthetic import RegistryTree, populate

REPOS = "docker/registry/v2/repositories/"


def linked_tree(tmp_path: Path) -> RegistryTree:
    """A registry whose ``group9/linked`` repository and one blob's ``data`` live outside the tree, behind links."""
    tree = RegistryTree(tmp_path / "src")
    populate(tree, images=6)
    digest = tree.image("group9/linked", "v1", [b"layer behind a link"])
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    repo = tree.path(REPOS + "group9/linked")
    shutil.move(str(repo), outside / "linked")
    repo.symlink_to(outside / "linked", target_is_directory=True)
    blob = tree.path(f"docker/registry/v2/blobs/sha256/{digest[7:9]}/{digest[7:]}/data")
    shutil.move(str(blob), outside / "manifest-data")
    blob.symlink_to(outside / "manifest-data")
    return tree


@pytest.mark.slow
def test_linked_repository_and_blob_are_copied_and_verified(tmp_path, make_plan, s3, bucket):
    tree = linked_tree(tmp_path)
    expected = source_files(tree.root)
    assert any("group9/linked/_manifests/tags/v1/current/link" in rel for rel in expected)
    plan = make_plan(tree.root)
    result = invoke_cli("run", "--yes", plan)
    assert result.returncode == 0, result.stderr
    assert bucket_contents(s3, bucket) == expected
    assert invoke_cli("verify", plan).returncode == 0
    assert invoke_cli("verify", "--images", plan).returncode == 0


@pytest.mark.slow
def test_a_bucket_seeded_by_aws_s3_sync_keeps_linked_keys_through_a_full_walk_window(tmp_path, make_plan, s3, bucket):
    tree = linked_tree(tmp_path)
    expected = source_files(tree.root)
    for rel, content in expected.items():  # what `aws s3 sync` (which follows links) left in the bucket
        s3.put_object(Bucket=bucket, Key=rel, Body=content)
    plan = make_plan(tree.root, sync={"workers": 4, "shard_workers": 4, "change_feed": False})
    result = invoke_cli("run", "--yes", plan)
    assert result.returncode == 0, result.stderr
    assert bucket_contents(s3, bucket) == expected


@pytest.mark.slow
def test_a_link_turns_the_change_feed_off(tmp_path, make_plan):
    tree = linked_tree(tmp_path)
    with migration(load_plan(make_plan(tree.root))) as job:
        report = runner.run(job)
    assert report["final_pass"]["method"] == "full walk"
    assert "symbolic link" in report["final_pass"]["why"]


@pytest.mark.slow
def test_a_link_loop_stops_the_run_naming_the_link(tree, make_plan, s3, bucket):
    loop = tree.path(REPOS + "group0/loop")
    loop.symlink_to(tree.path(REPOS + "group0"), target_is_directory=True)
    result = invoke_cli("run", "--yes", make_plan(tree.root))
    assert result.returncode == 1, result.stderr
    assert f"{loop} is a symbolic link" in result.stderr and "re-run" in result.stderr


def test_uploads_rule_is_exact():
    assert layout.is_uploads(REPOS + "team/app/_uploads/u1/data")
    assert layout.is_uploads(REPOS + "team/app/_uploads/")
    assert not layout.is_uploads(REPOS + "team/app/_manifests/tags/_uploads/current/link")
    assert not layout.is_uploads(REPOS + "team/app/_manifests/tags/_uploads/")
    assert not layout.is_uploads("docker/registry/v2/blobs/sha256/ab/_uploads/data")


@pytest.mark.slow
def test_a_tag_named_uploads_is_copied_counted_and_verified(tree, make_plan, s3, bucket):
    digest = tree.image("team1/app", "v1", [b"one layer"])
    tree.tag("team1/app", "_uploads", digest)
    tree.upload_in_progress("team1/app", "6d1e5a0c-0000-4000-8000-00000000000f", b"in progress")
    plan = make_plan(tree.root)
    result = invoke_cli("run", "--yes", plan)
    assert result.returncode == 0, result.stderr
    copied = bucket_contents(s3, bucket)
    assert REPOS + "team1/app/_manifests/tags/_uploads/current/link" in copied
    assert not [k for k in copied if k.startswith(REPOS + "team1/app/_uploads/")]
    assert copied == source_files(tree.root)
    report = load_plan(plan).state_dir / "report.json"
    assert f'"source_objects": {len(copied)}' in report.read_text()


def test_mount_points_are_unescaped_as_bytes_then_decoded():
    line = rb"36 35 98:0 / /srv/r\303\251gistry/with\040space rw,relatime - tmpfs tmpfs rw" + b"\n"
    assert mount_point(line) == "/srv/r\u00e9gistry/with space"
    raw_utf8 = "36 35 98:0 / /srv/régistry/blobs rw - tmpfs tmpfs rw\n".encode()
    assert mount_point(raw_utf8) == "/srv/régistry/blobs"


def test_a_mount_under_a_non_ascii_root_is_seen_and_the_feed_refused(tmp_path):
    tree = RegistryTree(tmp_path / "régistry root")
    populate(tree, images=2)
    blobs = tree.path("docker/registry/v2/blobs")
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(blobs)], check=True)
    try:
        assert mounts_under(str(tree.root)) == [str(blobs)]
        with pytest.raises(FeedUnavailable, match="separate mount"):
            ChangeFeed(tree.root)
    finally:
        subprocess.run(["umount", str(blobs)], check=True)


def age_everything(plan_path: Path, tree: RegistryTree) -> None:
    """Files and directories written an hour ago, recorded long after: stats are trusted, directories sealable."""
    old = time.time() - 3600
    for dirpath, dirnames, filenames in os.walk(tree.root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (old, old))
    time.sleep(3.1)  # ctime moved with utime: wait until it is no longer racy


def sealed(plan_path: Path, rel: str) -> bool:
    with sqlite3.connect(load_plan(plan_path).state_dir / "journal.sqlite") as conn:
        row = conn.execute("SELECT dir_ino FROM objects WHERE rel = ?", (rel,)).fetchone()
    return row is not None and row[0] is not None


@pytest.mark.slow
def test_a_link_rewritten_in_place_in_a_settled_digest_directory_reaches_the_bucket(tree, make_plan, s3, bucket,
                                                                                   monkeypatch):
    """A crash left a layer link empty; the re-push rewrites it in place (the directory's stat does not change)
    after online verification, and the window walks the whole tree (no change feed)."""
    files = source_files(tree.root)
    good = next(rel for rel in files if "/_layers/" in rel)
    empty_link = tree.path(good)
    empty_link.write_bytes(b"")  # what the crash left
    plan = make_plan(tree.root, sync={"workers": 4, "shard_workers": 4, "change_feed": False})
    assert invoke_cli("sync", plan).returncode == 0
    age_everything(plan, tree)
    assert invoke_cli("sync", plan).returncode == 0  # the pass that seals settled directories
    neighbour = next(rel for rel in files if "/_layers/" in rel and rel != good)
    assert sealed(plan, neighbour), "the test needs sealing to happen"
    real_final_sync = copy.final_sync_and_delete

    def repush_then_final_sync(self):
        before = os.stat(empty_link.parent)
        with open(empty_link, "r+b") as handle:  # truncate + write: same inode, directory untouched
            handle.truncate(0)
            handle.write(files[good])
        assert os.stat(empty_link.parent).st_mtime_ns == before.st_mtime_ns
        return real_final_sync(self)

    replace_phase(monkeypatch, "final_sync", repush_then_final_sync)
    with migration(load_plan(plan)) as job:
        runner.run(job)
    assert s3.get_object(Bucket=bucket, Key=good)["Body"].read() == files[good]
    assert bucket_contents(s3, bucket) == source_files(tree.root)


@pytest.mark.slow
def test_what_online_verification_excuses_is_rechecked_in_a_full_walk_window(tree, make_plan, s3, bucket, monkeypatch):
    """A sealed link rewritten after the last pass began: excused as in flight online, re-checked in the window."""
    files = source_files(tree.root)
    rel = next(r for r in files if "/_layers/" in r)
    plan = make_plan(tree.root, sync={"workers": 4, "shard_workers": 4, "change_feed": False})
    assert invoke_cli("sync", plan).returncode == 0
    age_everything(plan, tree)
    assert invoke_cli("sync", plan).returncode == 0
    assert sealed(plan, rel)
    real_verify = proofs.verify

    def rewrite_then_verify(self, *args, **kwargs):
        with open(tree.path(rel), "r+b") as handle:  # in place; the bucket must not keep the stale bytes
            handle.truncate(0)
            handle.write(b"sha256:" + b"f" * 64)
        return real_verify(self, *args, **kwargs)

    monkeypatch.setattr(proofs, "verify", rewrite_then_verify)
    with migration(load_plan(plan)) as job:
        runner.run(job)
    assert s3.get_object(Bucket=bucket, Key=rel)["Body"].read() == b"sha256:" + b"f" * 64


@pytest.mark.slow
def test_an_object_removed_from_the_bucket_behind_our_back_is_repaired(tree, make_plan, s3, bucket):
    plan = make_plan(tree.root)
    assert invoke_cli("sync", plan).returncode == 0
    victim = next(rel for rel in source_files(tree.root) if rel.endswith("current/link"))
    s3.delete_object(Bucket=bucket, Key=victim)  # a lifecycle rule, or a hand
    result = invoke_cli("run", "--yes", plan)
    assert result.returncode == 0, result.stderr
    assert "repairing" in result.stderr
    assert bucket_contents(s3, bucket) == source_files(tree.root)


@pytest.mark.slow
def test_an_image_object_the_verification_cannot_see_is_a_loud_bug(tree, make_plan, monkeypatch):
    """The image graph does not share the walker's blind spots: blind the walker (the copy and the key-by-key proof
    both use it) to ``_layers``, and the graph, reading the registry's own metadata, still needs those links."""
    real_entries = walker._sorted_entries
    monkeypatch.setattr(walker, "_sorted_entries",
                        lambda directory: [pair for pair in real_entries(directory) if pair[1].name != "_layers"])
    with migration(load_plan(make_plan(tree.root))) as job:
        with pytest.raises(StoppedSafely, match="BUG: the image graph needs .*/_layers/"):
            runner.run(job)


def test_delete_objects_errors_name_the_keys_and_the_cause(tree, make_plan):
    with migration(load_plan(make_plan(tree.root))) as job:
        class Refusing:
            def delete_objects(self, Bucket, Delete):  # noqa: N803 - boto3's names
                keys = [item["Key"] for item in Delete["Objects"]]
                return {"Deleted": [{"Key": keys[0]}],
                        "Errors": [{"Key": key, "Code": "AccessDenied", "Message": "Object is WORM protected"}
                                   for key in keys[1:]]}

        job.bucket.client = Refusing()
        rels = [REPOS + "a/_manifests/tags/x/current/link", REPOS + "a/_manifests/tags/y/current/link"]
        with pytest.raises(DeleteFailed) as raised:
            job.engine.transfer.delete(rels)
    message = str(raised.value)
    assert rels[1] in message and "AccessDenied" in message and "WORM" in message and "Object Lock" in message
    assert raised.value.exit_code == 1


def test_bytes_held_by_uploads_stay_under_the_memory_budget(tmp_path, make_plan, s3, bucket):
    tree = RegistryTree(tmp_path / "src")
    for index in range(24):
        tree.blob(os.urandom(1024 * 1024) + bytes([index]))
    plan = make_plan(tree.root, sync={"workers": 8, "shard_workers": 4, "max_memory_mb": 3})
    with migration(load_plan(plan)) as job:
        copy.sync_pass(job)
        budget = job.engine.transfer.memory
    assert 1024 * 1024 < budget.peak <= 3 * 1024 * 1024  # uploads overlapped, within the budget
    assert bucket_contents(s3, bucket) == source_files(tree.root)


@pytest.mark.slow
def test_sse_kms_etags_are_not_taken_for_md5s(tree, tmp_path, kms_moto_server, monkeypatch):
    """Default bucket encryption aws:kms: ETags are no MD5s, so content is proven by reading it."""
    s3 = boto3.client("s3", endpoint_url=kms_moto_server.endpoint, region_name="us-east-1")
    bucket = "kms-" + tmp_path.name[-20:].lower().replace("_", "-")
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "alias/reg"}}]})
    plan = tmp_path / "kms.yml"
    plan.write_text(yaml.safe_dump({"source": str(tree.root), "sync": {"workers": 4, "shard_workers": 4},
                                    "bucket": {"name": bucket, "endpoint": kms_moto_server.endpoint}}))
    s3.put_object(Bucket=bucket, Key="probe", Body=b"x")
    assert s3.head_object(Bucket=bucket, Key="probe")["ETag"].strip('"') != hashlib.md5(b"x").hexdigest()
    s3.delete_object(Bucket=bucket, Key="probe")
    files = source_files(tree.root)
    tag = next(rel for rel in files if rel.endswith("current/link"))
    other = next(rel for rel in files if "/revisions/" in rel and files[rel] != files[tag])
    real_final_sync = copy.final_sync_and_delete

    def tag_moved_before_the_flip(self):
        tree.link(tag, files[other].decode())  # the window uploads it: its ETag proves nothing, a read must
        return real_final_sync(self)

    replace_phase(monkeypatch, "final_sync", tag_moved_before_the_flip)
    with migration(load_plan(plan)) as job:
        report = runner.run(job)
    assert report["verification"]["missing"] == report["verification"]["mismatched"] == 0
    assert bucket_contents(s3, bucket) == source_files(tree.root)
    assert invoke_cli("verify", plan).returncode == 0
    assert invoke_cli("verify", "--images", plan).returncode == 0
    s3.put_object(Bucket=bucket, Key=tag, Body=files[tag][:7] + b"0" * 64)  # same size, other content
    tampered = invoke_cli("verify", plan)
    assert tampered.returncode == 1 and f"mismatched: {tag}" in tampered.stdout


@pytest.mark.slow
def test_a_tag_move_the_final_pass_missed_is_caught_by_the_image_graph(tree, make_plan, s3, bucket, monkeypatch):
    """The window's count comes from the final pass's own findings; the graph reads every tag of the frozen source."""
    from migrator.changefeed import PassTracker

    files = source_files(tree.root)
    tag = next(rel for rel in files if rel.endswith("current/link"))
    other = next(rel for rel in files if "/revisions/" in rel and files[rel] != files[tag])
    real_final_paths = PassTracker.final_paths

    def blind_feed(self):
        tree.link(tag, files[other].decode())  # moved in place just before the flip...
        paths = real_final_paths(self)
        return None if paths is None else [path for path in paths if not tag.startswith(path)]  # ...and not reported

    monkeypatch.setattr(PassTracker, "final_paths", blind_feed)
    with migration(load_plan(make_plan(tree.root))) as job:
        with pytest.raises(StoppedSafely, match="BUG: the image graph needs 1 objects .*" + tag):
            runner.run(job)
        assert job.state.final_pass["method"] == "change feed (fanotify)"
