"""The sync engine against a real S3 endpoint (moto_server): rules, request counts, guards, crashes."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import bucket_contents, invoke_cli, listing, source_files

from migrator.errors import Refused
from migrator.migration import copy, runner
from migrator.migration.context import Options
from migrator.migration.context import open_context as migration
from migrator.plan import load_plan
from migrator.testing.phases import replace_phase
from migrator.testing.synthetic import RegistryTree, populate


def one_pass(plan_path, phase="pass"):
    """One sync pass in-process; returns (result, S3 attempts made by the pass)."""
    with migration(load_plan(plan_path)) as job:
        with job.bucket.counter.phase_scope(phase):
            result = copy.sync_pass(job)
        return result, job.bucket.counter.attempts[phase]


def age_journal(plan_path):
    """Pretend the last pass happened long after the files were written (their stat is then trusted)."""
    db = load_plan(plan_path).state_dir / "journal.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE objects SET recorded_ns = recorded_ns + 3600 * 1000000000")


def test_initial_sync_copies_everything_but_uploads(tree, make_plan, s3, bucket):
    plan = make_plan(tree.root, prefix="/registry/")
    result = invoke_cli("sync", plan)
    assert result.returncode == 0, result.stderr
    copied = bucket_contents(s3, bucket, "registry/")
    assert copied == source_files(tree.root)
    assert not [k for k in copied if "_uploads" in k]
    assert not [k for k in listing(s3, bucket) if k.endswith("/")]  # no directory markers


def test_unchanged_tree_second_pass_makes_no_requests(tree, make_plan):
    plan = make_plan(tree.root)
    first, first_requests = one_pass(plan)
    assert first.uploaded_objects == len(source_files(tree.root)) and first_requests > first.uploaded_objects
    age_journal(plan)
    second, second_requests = one_pass(plan)
    assert (second.uploaded_objects, second_requests, second.refreshed) == (0, 0, 0)
    assert second.source_objects == len(source_files(tree.root))


def test_same_size_link_rewrite_is_caught_even_with_the_old_mtime(tree, make_plan, s3, bucket):
    plan = make_plan(tree.root)
    one_pass(plan)
    age_journal(plan)
    files = source_files(tree.root)
    link = next(p for p in files if p.endswith("current/link"))
    other = next(p for p in files if "/revisions/" in p and files[p] != files[link])
    before = os.stat(tree.path(link))
    tree.link(link, tree.path(other).read_text())  # truncate + write in place: 71 bytes either way
    os.utime(tree.path(link), ns=(before.st_atime_ns, before.st_mtime_ns))  # even the mtime is back
    assert os.stat(tree.path(link)).st_size == before.st_size
    result, _ = one_pass(plan)
    assert result.uploaded_objects == 1 and result.reasons == {"content differs": 1}
    assert s3.get_object(Bucket=bucket, Key=link)["Body"].read() == tree.path(other).read_bytes()


def test_link_rewritten_within_the_same_tick_is_caught(tree, make_plan, s3, bucket):
    plan = make_plan(tree.root)
    one_pass(plan)  # no ageing: the recorded stat is racy, so content is compared
    files = source_files(tree.root)
    link = next(p for p in files if p.endswith("current/link"))
    other = next(p for p in files if "/revisions/" in p and files[p] != files[link])
    tree.link(link, tree.path(other).read_text())
    result, _ = one_pass(plan)
    assert result.uploaded_objects == 1
    assert s3.get_object(Bucket=bucket, Key=link)["Body"].read() == tree.path(other).read_bytes()


def test_blob_renamed_into_place_with_an_old_mtime_is_copied(tree, make_plan, s3, bucket):
    plan = make_plan(tree.root)
    one_pass(plan)
    age_journal(plan)
    content = os.urandom(3000)
    import hashlib

    digest = hashlib.sha256(content).hexdigest()
    staging = tree.root / "docker/registry/v2/repositories/app0/service0/_uploads/u1/data"
    staging.parent.mkdir(parents=True)
    staging.write_bytes(content)
    os.utime(staging, (946684800, 946684800))  # year 2000: older than any pass
    target = tree.root / f"docker/registry/v2/blobs/sha256/{digest[:2]}/{digest}/data"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging, target)
    result, _ = one_pass(plan)
    assert result.uploaded_objects == 1
    assert s3.get_object(Bucket=bucket, Key=str(target.relative_to(tree.root)))["Body"].read() == content


def test_first_pass_reuses_an_earlier_copy_and_catches_its_tampered_link(tree, make_plan, s3, bucket):
    files = source_files(tree.root)
    for rel, data in files.items():  # what an earlier 'aws s3 sync' left
        s3.put_object(Bucket=bucket, Key=rel, Body=data)
    link = next(p for p in files if p.endswith("current/link"))
    s3.put_object(Bucket=bucket, Key=link, Body=b"sha256:" + b"0" * 64)  # same size, other bytes
    result, _ = one_pass(make_plan(tree.root))
    assert result.uploaded_objects == 1 and result.reasons == {"content differs": 1}
    assert bucket_contents(s3, bucket) == files


@pytest.mark.slow
def test_delete_refused_when_the_source_walk_finds_nothing(tmp_path, tree, make_plan, s3, bucket):
    invoke_cli("sync", make_plan(tree.root))
    empty = RegistryTree(tmp_path / "empty")
    before = listing(s3, bucket)
    result = invoke_cli("run", "--yes", make_plan(empty.root, name="empty.yml"))
    assert result.returncode == 3, result.stderr
    assert "found no files" in result.stderr
    assert listing(s3, bucket) == before


@pytest.mark.slow
def test_mass_delete_refused_then_allowed(tree, make_plan, s3, bucket):
    plan = make_plan(tree.root)
    assert invoke_cli("sync", plan).returncode == 0
    links = [p for p in source_files(tree.root) if p.endswith("/link")]
    for rel in links[: len(links) // 3]:
        os.remove(tree.path(rel))
    before = listing(s3, bucket)
    refused = invoke_cli("run", "--yes", plan)
    assert refused.returncode == 3 and "max_delete_fraction" in refused.stderr
    assert listing(s3, bucket) == before
    report = invoke_cli("report", plan)
    assert report.returncode == 0 and "would refuse" in report.stdout
    allowed = invoke_cli("run", "--yes", "--allow-mass-delete", plan)
    assert allowed.returncode == 0, allowed.stderr
    assert bucket_contents(s3, bucket) == source_files(tree.root)


@pytest.mark.slow
def test_deletes_never_touch_uploads_or_keys_outside_docker(tree, make_plan, s3, bucket):
    plan = make_plan(tree.root, prefix="reg")
    assert invoke_cli("sync", plan).returncode == 0
    outside = ["reg/notes.txt", "reg/other/file", "other-prefix/docker/registry/v2/x",
               "reg/docker/registry/v2/repositories/app0/service0/_uploads/abc/data"]
    for key in outside:
        s3.put_object(Bucket=bucket, Key=key, Body=b"keep me")
    os.remove(tree.path(next(p for p in source_files(tree.root) if p.endswith("current/link"))))
    result = invoke_cli("run", "--yes", plan)
    assert result.returncode == 0, result.stderr
    remaining = listing(s3, bucket)
    assert all(key in remaining for key in outside)
    copied = bucket_contents(s3, bucket, "reg/")
    assert {k: v for k, v in copied.items() if k.startswith("docker/") and "_uploads" not in k} == source_files(tree.root)


def test_delete_guard_refuses_keys_outside_docker(tree, make_plan):
    with migration(load_plan(make_plan(tree.root))) as job:
        with pytest.raises(Refused):
            job.engine.transfer.delete(["notes/outside"])
        with pytest.raises(Refused):
            job.engine.transfer.delete(["docker/registry/v2/repositories/a/_uploads/x/data"])


@pytest.mark.slow
def test_killed_passes_resume_to_a_byte_identical_bucket(tmp_path, make_plan, s3, bucket):
    seed = int(os.environ.get("MIGRATOR_TEST_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    tree = RegistryTree(tmp_path / "big")
    populate(tree, images=80, seed=seed, max_layer=60_000)
    tree.image("big/blob", "v1", [rng.randbytes(12 * 1024 * 1024)])  # multipart: 3 parts of 5 MiB
    plan = make_plan(tree.root, sync={"workers": 2, "shard_workers": 2, "multipart_threshold_mb": 1,
                                      "multipart_chunksize_mb": 5})
    kills = 0
    for _ in range(4):
        process = subprocess.Popen([sys.executable, "-m", "migrator", "--quiet", "sync", str(plan)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.4, 2.0))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
    assert invoke_cli("sync", plan).returncode == 0
    assert kills >= 1, f"seed {seed}: no pass was killed mid-way"
    assert invoke_cli("verify", plan).returncode == 0, f"seed {seed}"
    assert bucket_contents(s3, bucket) == source_files(tree.root), f"seed {seed}"


def test_canary_left_by_a_killed_preflight_is_swept(tree, make_plan, s3, bucket):
    s3.put_object(Bucket=bucket, Key="reg/.migrator-canary/0000-left-by-a-kill", Body=b"migrator canary")
    assert invoke_cli("sync", make_plan(tree.root, prefix="reg")).returncode == 0
    assert not [k for k in listing(s3, bucket) if ".migrator-canary" in k]


@pytest.mark.slow
def test_window_changes_are_proven_by_the_buckets_own_answers(tree, make_plan, monkeypatch):
    """Uploads proven by their ETag and deletes by DeleteObjects' own list: no HEAD inside the window."""
    plan = make_plan(tree.root)
    real_final_sync = copy.final_sync_and_delete
    files = sorted(source_files(tree.root))
    link = next(p for p in files if p.endswith("current/link"))
    other = next(p for p in files if "/revisions/" in p and source_files(tree.root)[p] != source_files(tree.root)[link])

    def changes_just_before_the_flip(self):
        tree.link(link, tree.path(other).read_text())  # tag move in place
        os.remove(tree.path(next(p for p in files if p.endswith("/link") and p != link)))  # a deleted link
        tree.image("late/app", "v1", [b"late layer"])  # a new image
        return real_final_sync(self)

    replace_phase(monkeypatch, "final_sync", changes_just_before_the_flip)
    with migration(load_plan(plan), options=Options(yes=True)) as job:
        report = runner.run(job)
    phases = {p["name"]: p for p in report["phases"]}
    assert phases["final_sync"]["uploaded_objects"] >= 5 and phases["final_sync"]["deleted_objects"] == 1
    assert phases["verify_window"]["s3_requests"] == 0
    assert report["verification"]["source_objects"] == report["verification"]["bucket_objects"] == len(source_files(tree.root))


def sealed_rows(plan_path) -> int:
    with sqlite3.connect(load_plan(plan_path).state_dir / "journal.sqlite") as conn:
        return conn.execute("SELECT COUNT(*) FROM objects WHERE dir_ino IS NOT NULL").fetchone()[0]


def test_digest_directories_changed_this_recently_are_not_sealed(tree, make_plan, monkeypatch):
    import migrator.walker as walker

    monkeypatch.setattr(walker, "RACY_NS", 3600 * 10**9)  # "recently" however slow the machine: within the hour
    plan = make_plan(tree.root)
    one_pass(plan)
    age_journal(plan)  # the files' stats are trusted, but their directories were created a moment ago
    one_pass(plan)
    assert sealed_rows(plan) == 0


def test_sealed_digest_directories_are_not_listed_yet_every_change_inside_is_caught(tree, make_plan, s3, bucket,
                                                                                    monkeypatch):
    import migrator.walker as walker

    monkeypatch.setattr(walker, "RACY_NS", 0)  # as if the tree had been written long before these passes
    plan = make_plan(tree.root)
    one_pass(plan)
    age_journal(plan)
    files = source_files(tree.root)
    digest_files = [rel for rel in files if "/sha256/" in rel]
    odd = tree.path(digest_files[0]).parent / "unexpected"  # not the registry's layout: its stat could not vouch
    odd.mkdir()
    one_pass(plan)  # everything settled: digest directories get sealed, but the one with a subdirectory
    assert sealed_rows(plan) == len(digest_files) - 1 > 0
    odd.rmdir()
    one_pass(plan)
    assert sealed_rows(plan) == len(digest_files)

    listed = []
    real_sorted_entries = walker._sorted_entries
    monkeypatch.setattr(walker, "_sorted_entries", lambda path: listed.append(path) or real_sorted_entries(path))
    result, requests = one_pass(plan)
    assert (result.source_objects, result.uploaded_objects, requests) == (len(files), 0, 0)
    assert listed and not [path for path in listed if "/sha256/" in path and len(os.path.basename(path)) == 64]

    # inside sealed directories: a revision link unlinked (API manifest delete leaves its directory), a layer
    # link unlinked, a blob replaced by a rename of the same content; and a tag moved in place
    revision = next(rel for rel in digest_files if "/_manifests/revisions/" in rel)
    layer = next(rel for rel in digest_files if "/_layers/" in rel)
    blob = next(rel for rel in digest_files if rel.endswith("/data"))
    tree.path(revision).unlink()
    tree.path(layer).unlink()
    staged = tree.path(blob).with_name("staged")
    staged.write_bytes(tree.path(blob).read_bytes())
    os.rename(staged, tree.path(blob))
    link = next(rel for rel in files if rel.endswith("current/link"))
    other = next(rel for rel in files if "/revisions/" in rel and files[rel] != files[link] and rel != revision)
    tree.link(link, tree.path(other).read_text())
    result, _ = one_pass(plan)
    assert sorted(result.delete_candidates) == sorted([revision, layer])
    assert result.uploaded_objects == 1 and result.reasons == {"content differs": 1}
    assert s3.get_object(Bucket=bucket, Key=link)["Body"].read() == tree.path(other).read_bytes()
    assert result.source_objects == len(files) - 2
