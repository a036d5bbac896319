"""The change feed (fanotify) and the read-only window's final pass over just the paths it reports."""

from __future__ import annotations

import os
import shutil
import subprocess

from conftest import bucket_contents, source_files

from migrator import changefeed
from migrator.changefeed import ChangeFeed, PassTracker
from migrator.migration.context import open_context as migration
from migrator.migration.copy import final_sync_and_delete, sync_pass
from migrator.migration.proofs import verify_window
from migrator.plan import load_plan

BLOBS = "docker/registry/v2/blobs/sha256/"


def changed(feed: ChangeFeed, generation: int) -> set[str]:
    paths = feed.changed_since(generation)
    assert paths is not None
    return paths


def test_the_feed_reports_every_way_the_registry_changes_files(tree):
    files = source_files(tree.root)
    tag_link = next(p for p in files if p.endswith("current/link"))
    other = next(p for p in files if "/revisions/" in p and files[p] != files[tag_link])
    tag = tag_link.rsplit("/", 2)[0]
    deleted_tag = next(p for p in files if p.endswith("current/link") and not p.startswith(tag + "/")).rsplit("/", 2)[0]
    layer = next(p for p in files if "/_layers/" in p)
    feed = ChangeFeed(tree.root)
    try:
        old = feed.checkpoint()
        tree.path(BLOBS + "00").mkdir()  # before the generation asked about
        generation = feed.checkpoint()
        tree.link(tag_link, files[other].decode())  # a tag moved: rewritten in place, same size
        tree.upload_in_progress("library/app1", "u1", b"layer bytes")  # never reported
        blob_dir = tree.path(BLOBS + "ab/" + "ab" * 32)
        blob_dir.mkdir(parents=True)
        os.rename(tree.path("docker/registry/v2/repositories/library/app1/_uploads/u1/data"), blob_dir / "data")
        shutil.rmtree(tree.path(deleted_tag))
        os.unlink(tree.path(layer))  # a link removed inside its digest directory
        paths = changed(feed, generation)
        assert {tag_link, BLOBS + "ab/" + "ab" * 32 + "/data", deleted_tag, layer} <= paths
        assert not [p for p in paths if "_uploads" in p]
        assert BLOBS + "00" not in paths and BLOBS + "00" in changed(feed, old)
    finally:
        feed.close()


def test_the_feed_is_refused_on_a_network_filesystem(tree, monkeypatch):
    monkeypatch.setattr(changefeed, "filesystem_type", lambda path: 0x6969)  # NFS
    tracker = PassTracker(tree.root, enabled=True)
    assert tracker.feed is None and "not a local one" in tracker.why_not
    assert tracker.final_paths() is None


def test_the_feed_is_refused_when_part_of_the_tree_is_another_mount(tree):
    blobs = tree.path("docker/registry/v2/blobs")
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(blobs)], check=True)
    try:
        tracker = PassTracker(tree.root, enabled=True)
        assert tracker.feed is None and f"{blobs} is a separate mount" in tracker.why_not
    finally:
        subprocess.run(["umount", str(blobs)], check=True)
    unmounted = PassTracker(tree.root, enabled=True)
    assert unmounted.feed is not None
    unmounted.close()


def window(plan_path, churn, blind=False):
    """An online pass under the feed, a change after it, then the window's final pass; returns the report's
    final_pass, the pass result and the job's verification."""
    with migration(load_plan(plan_path)) as job:
        job.tracker = PassTracker(job.plan.source, job.plan.sync.change_feed)
        sync_pass(job)
        if blind:  # a writer the feed cannot see
            job.tracker.feed.changed_since = lambda generation: set()
        churn_before_last_pass, churn_after = churn
        churn_before_last_pass()
        sync_pass(job)  # the last online pass: finds the first churn
        churn_after()
        job.state.online_verified_objects = job.journal.count()
        job.journal.start_window()
        result = final_sync_and_delete(job)
        verify_window(job)
        return job.state.final_pass, result, job.state.verification


def test_the_window_syncs_only_what_the_feed_saw_and_leaves_the_bucket_equal_to_the_source(tree, make_plan, s3,
                                                                                           bucket):
    plan = make_plan(tree.root, sync={"workers": 4, "shard_workers": 4, "max_delete_fraction": 0.5})
    files = source_files(tree.root)
    links = [p for p in files if p.endswith("current/link")]
    revisions = [p for p in files if "/revisions/" in p]

    def before_last_pass():
        os.unlink(tree.path(links[0]))  # found by the last online pass; online passes never delete

    def after_last_pass():
        other = next(r for r in revisions if files[r] != files[links[1]])
        tree.link(links[1], tree.path(other).read_text())  # a tag moved in place: same size
        tree.image("library/new", "v1", [b"new layer " * 100])
        shutil.rmtree(tree.path(links[2]).parent.parent)  # a tag deleted
        tree.upload_in_progress("library/new", "u9", b"partial")

    final_pass, result, verification = window(plan, (before_last_pass, after_last_pass))
    assert final_pass["method"] == "change feed (fanotify)"
    assert 0 < final_pass["paths"] < 20
    assert bucket_contents(s3, bucket) == source_files(tree.root)
    assert result.source_objects == len(source_files(tree.root)) == verification["source_objects"]
    assert links[0] in result.delete_candidates
    assert result.reasons["content differs"] == 1


def test_a_change_the_feed_missed_makes_the_window_walk_everything(tree, make_plan, s3, bucket):
    plan = make_plan(tree.root)
    link = next(p for p in source_files(tree.root) if p.endswith("current/link"))

    def before_last_pass():
        tree.image("library/unseen", "v1", [b"a write the feed did not report"])

    def after_last_pass():
        os.unlink(tree.path(link))

    final_pass, result, _ = window(plan, (before_last_pass, after_last_pass), blind=True)
    assert final_pass["method"] == "full walk"
    assert "did not report a change the walk found (docker/registry/v2/" in final_pass["why"]
    assert bucket_contents(s3, bucket) == source_files(tree.root)
    assert link in result.delete_candidates


def test_the_feed_can_be_turned_off(tree, make_plan, s3, bucket):
    plan = make_plan(tree.root, sync={"change_feed": False})
    final_pass, _, _ = window(plan, (lambda: None, lambda: tree.image("library/late", "v1", [b"late"])))
    assert final_pass == {"method": "full walk", "why": "sync.change_feed is false"}
    assert bucket_contents(s3, bucket) == source_files(tree.root)
