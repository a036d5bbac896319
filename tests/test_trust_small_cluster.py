"""A Dask worker whose source is a lagging copy with mtimes kept (a snapshot behind the registry) is refused by name
(issue 21 item 10): the worker check compares what changes (the tag links written last, their mtimes and
content), not only blobs that never change. Oracle: the bucket read with the test's own client."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml
from conftest import bucket_contents, run_cli, source_files
from test_cluster import dask_cluster  # noqa: F401 - the fixture
from test_trust_small_inflight import kms_bucket

from migrator.testing.synthetic import RegistryTree, populate

pytestmark = pytest.mark.slow


def test_a_worker_on_a_lagging_snapshot_of_the_source_is_refused_by_name(tmp_path, make_plan, s3, bucket,
                                                                          dask_cluster):  # noqa: F811
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("giving one worker another source needs root and unshare (a mount namespace)")
    tree = RegistryTree(tmp_path / "src")
    populate(tree, images=8)
    plan = make_plan(tree.root, sync={"workers": 4, "engine": "dask", "dask": {"scheduler": dask_cluster.address}})
    first = run_cli("sync", plan)
    assert first.returncode == 0, first.stdout + first.stderr
    replica = tmp_path / "replica"
    shutil.copytree(tree.root, replica, copy_function=shutil.copy2)  # a snapshot: same names, sizes and mtimes

    # the registry goes on: a tag moves (in place, 71 bytes), written a few minutes ago
    moved = next(tree.root.glob("docker/registry/v2/repositories/*/*/_manifests/tags/v1/current/link"))
    other = next(tree.root.glob("docker/registry/v2/repositories/*/*/_manifests/tags/v2/current/link")).read_text()
    tree.link(str(moved.relative_to(tree.root)), other)
    os.utime(moved, ns=(time.time_ns() - 300 * 10**9,) * 2)
    swap = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount --bind "{replica}" "{tree.root}" && exec "$0" "$@"']
    dask_cluster.add_worker("lagging", wrap=swap)

    result = run_cli("sync", plan)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "worker lagging" in result.stderr and str(moved) in result.stderr, result.stderr
    assert "worker-1" not in result.stderr

    dask_cluster.kill("lagging")
    again = run_cli("sync", plan)
    assert again.returncode == 0, again.stdout + again.stderr
    assert bucket_contents(s3, bucket) == source_files(tree.root)


def test_a_tag_a_dead_worker_uploaded_and_that_moved_back_is_uploaded_again_with_kms_etags(
        tmp_path, kms_moto_server, dask_cluster):  # noqa: F811
    """Issue 21 item 2: SSE-KMS ETags are no MD5s; a worker SIGKILLed just after uploading a tag's new digest B, the
    tag moved back to A before the task's retry. The shard the dead task ran stays in flight on the coordinator
    (durable before the task was submitted); the next pass trusts none of its rows and uploads them again, so the
    bucket ends with A."""
    s3, bucket = kms_bucket(kms_moto_server, tmp_path)
    tree = RegistryTree(tmp_path / "src")
    populate(tree, images=6)
    plan = tmp_path / "kms.yml"
    plan.write_text(yaml.safe_dump({"source": str(tree.root), "bucket": {"name": bucket,
                                                                        "endpoint": kms_moto_server.endpoint},
                                    "sync": {"workers": 4, "engine": "dask",
                                             "dask": {"scheduler": dask_cluster.address}}}))
    assert run_cli("sync", plan).returncode == 0
    files = source_files(tree.root)
    tag = next(rel for rel in files if rel.endswith("current/link"))
    a = files[tag].decode()
    b = next(data for rel, data in files.items() if "/revisions/" in rel and data != files[tag]).decode()

    dask_cluster.kill("worker-1")
    dask_cluster.kill("worker-2")
    dask_cluster.add_worker("doomed", wrap=["env", "MIGRATOR_FAILPOINT=uploaded@1"])
    tree.link(tag, b)
    moving = subprocess.Popen([sys.executable, "-m", "migrator", "--quiet", "sync", str(plan)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dask_cluster.workers["doomed"].wait(timeout=300)  # SIGKILLed itself right after uploading B
    assert s3.get_object(Bucket=bucket, Key=tag)["Body"].read().decode() == b
    tree.link(tag, a)  # moved back before the task's retry
    dask_cluster.add_worker("fresh")
    stdout, stderr = moving.communicate(timeout=600)
    assert moving.returncode == 0, stdout + stderr

    again = run_cli("sync", plan)  # the next pass (a run's next online pass, or its window's)
    assert again.returncode == 0, again.stdout + again.stderr
    assert s3.get_object(Bucket=bucket, Key=tag)["Body"].read().decode() == a
    assert bucket_contents(s3, bucket) == source_files(tree.root)
