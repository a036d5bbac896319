"""`sync.engine: dask` on a real distributed cluster on loopback: `dask scheduler` and `dask worker` processes started
here (not a LocalCluster inside the test), `migrator run --yes` against moto and the real registry.

Oracles: a plain `os.walk` of the source against the bucket's own listing, and skopeo/our client pulling every
image from the registry on s3.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from conftest import UPLOADS, bucket_contents, run_cli, source_files
from test_e2e import assert_all_pull, push_images

from migrator.cluster import TaskJournal, task_shards
from migrator.journal import Journal, JournalRow
from migrator.layout import BLOBS, Shard, shards, split
from migrator.registry_http import RegistryClient
from migrator.testing.local import DaskProcesses
from migrator.testing.synthetic import RegistryTree, populate
from migrator.walker import branching, walk_shard

pytestmark = pytest.mark.slow
SHARDS = {shard.name: shard for shard in shards()}


@pytest.fixture
def dask_cluster(tmp_path):
    cluster = DaskProcesses(tmp_path / "dask").start(workers=2)
    yield cluster
    cluster.stop()


def dask_plan(registry, cluster: DaskProcesses):
    return registry.write_plan(sync={"workers": 8, "shard_workers": 4, "engine": "dask",
                                     "dask": {"scheduler": cluster.address, "split_above": 40}})


def hidden_source(root) -> list[str]:
    """A command prefix: the command sees an empty tmpfs at ``root`` (a host that does not mount the registry)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("hiding the source from one worker needs root and unshare (a mount namespace)")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount -t tmpfs tmpfs "{root}" && exec "$0" "$@"']


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
    tasks = [int(count) for count in re.findall(r"dask: the pass ran (\d+) tasks", log)]
    assert tasks and tasks[0] > len(shards()), "no shard was split (sync.dask.split_above: 40)"
    assert "dask: online verification ran" in log


def test_a_worker_that_cannot_see_the_source_is_refused_before_any_upload(tmp_path, make_plan, s3, bucket,
                                                                          dask_cluster):
    tree = RegistryTree(tmp_path / "src")
    populate(tree, images=5)
    dask_cluster.add_worker("blind", wrap=hidden_source(tree.root))
    plan = make_plan(tree.root, sync={"workers": 4, "engine": "dask", "dask": {"scheduler": dask_cluster.address}})
    result = run_cli("sync", plan)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "worker blind" in result.stderr and "docker/registry/v2 is not a directory" in result.stderr
    assert "worker-1" not in result.stderr
    assert bucket_contents(s3, bucket) == {}


def test_a_worker_that_joins_mid_pass_is_refused_at_its_first_task(tmp_path, make_plan, s3, bucket, dask_cluster):
    """It joined after the pass's check: its first task checks it. The run stops (exit 2) naming it; without it the
    same command finishes and the bucket equals the source."""
    tree = RegistryTree(tmp_path / "src")
    populate(tree, images=300)
    plan = make_plan(tree.root, sync={"workers": 2, "shard_workers": 1, "engine": "dask",
                                      "dask": {"scheduler": dask_cluster.address, "split_above": 20}})
    run = subprocess.Popen([sys.executable, "-m", "migrator", "--quiet", "sync", str(plan)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while s3.list_objects_v2(Bucket=bucket, MaxKeys=60).get("KeyCount", 0) < 50:
        assert run.poll() is None and time.monotonic() < deadline, "the copy did not start"
        time.sleep(0.2)
    dask_cluster.add_worker("late", wrap=hidden_source(tree.root))
    stdout, stderr = run.communicate(timeout=600)
    assert run.returncode == 2, stdout + stderr
    assert "worker late" in stderr and "docker/registry/v2 is not a directory" in stderr

    dask_cluster.kill("late")
    result = run_cli("sync", plan, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert bucket_contents(s3, bucket) == source_files(tree.root)


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


ODD_KEYS = [  # names a split must not lose: uppercase and odd tags, a tag named _uploads, a non-hex blob directory
    f"{BLOBS}ab/ab{'0' * 62}/data", f"{BLOBS}ab/abf{'1' * 61}/data", f"{BLOBS}ab/abZZ/data", f"{BLOBS}ab/stray",
    "docker/registry/v2/repositories/a/_layers/sha256/" + "c" * 64 + "/link",
    "docker/registry/v2/repositories/a/_manifests/tags/V1.0_rc/current/link",
    "docker/registry/v2/repositories/a/_manifests/tags/_uploads/current/link",
    "docker/registry/v2/repositories/a-b.c/_manifests/tags/latest/current/link",
    "docker/registry/v2/repositories/a/b/_manifests/tags/x/current/link",
    "docker/registry/v2/repositories/aé/_manifests/tags/x/current/link",
    "docker/registry/v2/repositories/a+/_manifests/tags/x/current/link",
]


def source_tasks(source, shard: Shard, split_above: int) -> list[Shard]:
    """What the tasks of a first pass become: a shard with more files than ``split_above`` answers with its children
    where the source's paths branch, and so on."""
    if sum(1 for _ in walk_shard(source, shard)) <= split_above:
        return [shard]
    children = split(shard, *branching(source, shard))
    return [shard] if len(children) == 1 else [task for child in children
                                                for task in source_tasks(source, child, split_above)]


@pytest.mark.parametrize("name", ["blobs/ab", "repositories/a"])
def test_a_split_shard_is_walked_and_journaled_whole_by_its_children(tmp_path, name):
    """However far it is split, from the journal or from the source, the tasks' walks hold every file under the
    shard exactly once (a plain os.walk says which), and their journal counts add up to the shard's."""
    for rel in ODD_KEYS:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    shard = SHARDS[name]
    expected = sorted(rel for rel in source_files(tmp_path) if rel.startswith(shard.prefix))
    assert len(expected) >= 4
    journal = Journal(tmp_path / "journal.sqlite")
    journal.record(JournalRow(rel, 1, None) for rel in expected)
    for split_above in (3, 2, 1):
        for tasks in (task_shards(shard, journal, split_above), source_tasks(tmp_path, shard, split_above)):
            assert len(tasks) > 1
            found = sorted(file.rel for task in tasks for file in walk_shard(tmp_path, task))
            assert found == expected
            assert sum(journal.count_in(task.ranges()) for task in tasks) == len(expected)


def test_seeded_shards_become_tasks_where_the_journals_keys_branch(tmp_path):
    journal = Journal(tmp_path / "journal.sqlite")
    shard = SHARDS["blobs/ab"]
    journal.record(JournalRow(f"{BLOBS}ab/ab{digit}{index:061x}/data", 1, None)
                   for digit in "05" for index in range(3))
    assert task_shards(shard, journal, split_above=6) == [shard]
    assert [task.prefix for task in task_shards(shard, journal, split_above=3)] == \
        [f"{BLOBS}ab/ab0", f"{BLOBS}ab/ab5", f"{BLOBS}ab/"]
    deeper = task_shards(shard, journal, split_above=2)  # again while a child is too large
    assert len(deeper) == 9 and max(journal.count_in(task.ranges()) for task in deeper) == 1
    assert task_shards(SHARDS["rest"], journal, split_above=0) == [SHARDS["rest"]]


def test_a_task_sends_back_what_it_would_have_written():
    old = JournalRow("docker/a", 3, "m", 1, 1, 1)
    journal = TaskJournal([old], seeded=True)
    journal.mark_unconfirmed(["docker/a", "docker/b"])
    journal.record([JournalRow("docker/b", 5, "n", 2, 2, 2), JournalRow("docker/c", 1, "o")])
    journal.forget(["docker/c"])
    assert journal.written == {"docker/a": old._replace(confirmed=False), "docker/b": JournalRow("docker/b", 5, "n", 2, 2, 2)}
    assert journal.forgotten == ["docker/c"]
    assert [row.rel for row in journal.rows(Shard("all", "docker/"))] == ["docker/a", "docker/b"]


def test_keys_left_by_a_task_whose_answer_never_came_are_found_and_deleted(tree, make_plan, s3, bucket):
    """A coordinator killed (or a worker lost) after a task uploaded, before its rows were recorded: the journal
    still lists the task in flight. Its shard is listed before the next pass (whatever the engine), so a key whose
    file is gone since is known and deleted (otherwise nothing would ever delete it): the next run leaves the
    bucket equal to a plain os.walk of the source."""
    from migrator.migration.context import open_context as migration
    from migrator.plan import load_plan
    from migrator.sync import IN_FLIGHT_META, set_tasks_in_flight

    plan = make_plan(tree.root)
    orphan = f"{BLOBS}ab/ab{'1' * 62}/data"
    with migration(load_plan(plan)) as job:
        job.engine.run_pass()
        s3.put_object(Bucket=bucket, Key=orphan, Body=b"uploaded by a task; its file was deleted before the retry")
        set_tasks_in_flight(job.journal, [SHARDS["blobs/ab"]])
    result = run_cli("run", "--yes", plan)  # without a registry section: sync, delete, verify
    assert result.returncode == 0, result.stdout + result.stderr
    assert bucket_contents(s3, bucket) == source_files(tree.root)
    with migration(load_plan(plan)) as job:
        assert job.journal.get_meta(IN_FLIGHT_META) == "[]"
