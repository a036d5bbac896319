"""`sync.engine: dask` on a real distributed cluster on loopback: `dask scheduler` and `dask worker` processes started
here (not a LocalCluster inside the test), `migrator run --yes` against moto and the real registry.

Oracles: a plain `os.walk` of the source against the bucket's own listing, and skopeo/our client pulling every
image from the registry on s3.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from conftest import UPLOADS, bucket_contents, run_cli, source_files
from test_e2e import assert_all_pull, push_images

from migrator.cluster import TaskJournal, shard_named, task_shards
from migrator.journal import JournalRow
from migrator.layout import BLOBS, Shard
from migrator.local import DaskProcesses
from migrator.registry_http import RegistryClient
from migrator.synthetic import RegistryTree, populate

pytestmark = pytest.mark.slow


@pytest.fixture
def dask_cluster(tmp_path):
    cluster = DaskProcesses(tmp_path / "dask").start(workers=2)
    yield cluster
    cluster.stop()


def dask_plan(registry, cluster: DaskProcesses):
    return registry.write_plan(sync={"workers": 8, "shard_workers": 4, "engine": "dask",
                                     "dask": {"scheduler": cluster.address}})


def test_a_run_on_a_dask_cluster_survives_a_worker_killed_mid_copy(local_registry, s3, bucket, dask_cluster):
    client = RegistryClient(local_registry.url)
    pushed = push_images(client, 6)
    populate(RegistryTree(local_registry.root), images=400, seed=3)  # enough for the copy to take a while
    plan = dask_plan(local_registry, dask_cluster)
    run = subprocess.Popen([sys.executable, "-m", "migrator", "--quiet", "run", "--yes", str(plan)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while s3.list_objects_v2(Bucket=bucket, Prefix="reg/docker/", MaxKeys=600).get("KeyCount", 0) < 500:
        assert run.poll() is None and time.monotonic() < deadline, "the copy did not start"
        time.sleep(0.2)
    dask_cluster.kill("worker-1")
    assert run.poll() is None, "the run ended before the worker was killed"
    stdout, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stdout + stderr

    copied = {rel: data for rel, data in bucket_contents(s3, bucket, "reg/").items() if not UPLOADS.match(rel)}
    assert copied == source_files(local_registry.root)
    assert_all_pull(client, pushed)
    log = (plan.parent / "plan.state" / "migrator.log").read_text()
    assert "dask: 2 workers" in log
    assert "a worker died while running shard" in log, "the kill did not land on a running task"


def test_a_worker_that_cannot_see_the_source_is_refused_before_any_upload(tmp_path, make_plan, s3, bucket,
                                                                          dask_cluster):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("hiding the source from one worker needs root and unshare (a mount namespace)")
    tree = RegistryTree(tmp_path / "src")
    populate(tree, images=5)
    hide = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount -t tmpfs tmpfs "{tree.root}" && exec "$0" "$@"']
    dask_cluster.add_worker("blind", wrap=hide)
    plan = make_plan(tree.root, sync={"workers": 4, "engine": "dask", "dask": {"scheduler": dask_cluster.address}})
    result = run_cli("sync", plan)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "worker blind" in result.stderr and "docker/registry/v2 is not a directory" in result.stderr
    assert "worker-1" not in result.stderr
    assert bucket_contents(s3, bucket) == {}


def test_a_worker_with_another_copy_of_the_source_is_refused(tmp_path, make_plan, s3, bucket, dask_cluster):
    """Same layout, other files (a stale replica): the sample of sizes and mtimes tells."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("giving one worker another source needs root and unshare (a mount namespace)")
    tree = RegistryTree(tmp_path / "src")
    populate(tree, images=5)
    replica = tmp_path / "replica"
    shutil.copytree(tree.root, replica, copy_function=shutil.copy)  # same names and sizes, other mtimes
    swap = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount --bind "{replica}" "{tree.root}" && exec "$0" "$@"']
    dask_cluster.add_worker("stale", wrap=swap)
    result = run_cli("sync", make_plan(tree.root, sync={"engine": "dask", "dask": {"scheduler": dask_cluster.address}}))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "worker stale" in result.stderr and "is not the coordinator's" in result.stderr
    assert bucket_contents(s3, bucket) == {}


def test_an_unreachable_scheduler_is_invalid_input(tree, make_plan):
    plan = make_plan(tree.root, sync={"engine": "dask", "dask": {"scheduler": "tcp://127.0.0.1:9"}})
    result = run_cli("sync", plan, timeout=120)
    assert result.returncode == 2 and "sync.dask.scheduler" in result.stderr, result.stderr


def test_large_blob_shards_are_split_by_the_third_hex_digit(tmp_path, monkeypatch):
    import migrator.cluster

    shard = Shard("blobs/ab", f"{BLOBS}ab/")
    for index in range(5):
        (tmp_path / f"{BLOBS}ab/ab{index}{'0' * 61}").mkdir(parents=True)
    assert task_shards(tmp_path, shard) == [shard]
    monkeypatch.setattr(migrator.cluster, "SPLIT_ABOVE", 4)
    subs = task_shards(tmp_path, shard)
    assert [sub.prefix for sub in subs] == [f"{BLOBS}ab/ab{digit}" for digit in "0123456789abcdef"]
    assert all(shard_named(sub.name) == sub for sub in subs)
    assert subs[1].contains(f"{BLOBS}ab/ab1{'0' * 61}/data") and not subs[1].contains(f"{BLOBS}ab/ab0{'0' * 61}/data")


def test_a_task_sends_back_what_it_would_have_written():
    old = JournalRow("docker/a", 3, "m", 1, 1, 1)
    journal = TaskJournal([old], seeded=True)
    journal.mark_unconfirmed(["docker/a", "docker/b"])
    journal.record([JournalRow("docker/b", 5, "n", 2, 2, 2)])
    assert journal.written == {"docker/a": old._replace(confirmed=False), "docker/b": JournalRow("docker/b", 5, "n", 2, 2, 2)}
    assert [row.rel for row in journal.rows(Shard("all", "docker/"))] == ["docker/a", "docker/b"]


def test_keys_left_by_a_task_whose_answer_never_came_are_found_and_deleted(tree, make_plan, s3, bucket):
    """A coordinator killed (or a worker lost) after a task uploaded, before its rows were recorded: the journal
    still lists the task in flight. Its shard is listed before the next pass (whatever the engine), so a key whose
    file is gone since is known, and the walk makes it a delete candidate (otherwise nothing would ever delete it)."""
    from migrator.pipeline import migration
    from migrator.plan import load_plan
    from migrator.sync import IN_FLIGHT_META

    orphan = f"{BLOBS}ab/ab{'1' * 62}/data"
    with migration(load_plan(make_plan(tree.root))) as job:
        job.engine.run_pass()
        s3.put_object(Bucket=bucket, Key=orphan, Body=b"uploaded by a task; its file was deleted before the retry")
        job.journal.set_meta(IN_FLIGHT_META, '["blobs/ab"]')
        assert job.engine.run_pass().delete_candidates == [orphan]
        assert job.journal.get_meta(IN_FLIGHT_META) == "[]"
