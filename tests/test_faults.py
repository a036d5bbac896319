"""S3 faults between migrator and the bucket: retries carry the run through; an outage never strands the registry."""

from __future__ import annotations

import json

import pytest
from conftest import bucket_contents, file_hash, listing, run_cli, source_files
from faultproxy import FaultProxy
from test_e2e import assert_all_pull, push_images, storage_of

from migrator.errors import StoppedSafely
from migrator.migration import copy, runner
from migrator.migration.context import Options
from migrator.migration.context import open_context as migration
from migrator.plan import load_plan
from migrator.registry_http import RegistryClient
from migrator.testing.phases import replace_phase

pytestmark = pytest.mark.slow


@pytest.fixture
def proxy(moto_server):
    fault_proxy = FaultProxy(moto_server.endpoint).start()
    yield fault_proxy
    fault_proxy.stop()


def report_of(plan) -> dict:
    return json.loads((plan.parent / (plan.stem + ".state") / "report.json").read_text())


@pytest.mark.parametrize("mode,rate", [("faults", 0.05), ("faults", 0.20), ("stall", 0.05)])
def test_run_completes_through_faults(tree, make_plan, s3, bucket, proxy, mode, rate):
    proxy.mode, proxy.rate = mode, rate
    plan = make_plan(tree.root, prefix="reg")
    text = plan.read_text().replace(proxy.upstream.geturl(), proxy.endpoint)
    plan.write_text(text)
    result = run_cli("run", "--yes", plan)
    assert result.returncode == 0, result.stderr
    proxy.mode = "ok"
    assert sum(proxy.injected.values()) > 0, "no fault was injected"
    copied = bucket_contents(s3, bucket, "reg/")
    assert copied == source_files(tree.root)
    phases = report_of(plan)["phases"]
    if mode == "faults":
        assert sum(p["s3_retries"] for p in phases) > 0  # the retries show in the report and the log summary
        log = (plan.parent / "plan.state" / "migrator.log").read_text()
        assert "retries)" in log


def test_registry_run_with_faults_on_the_copy_path(local_registry, proxy, s3, bucket):
    """5 % faults between migrator and the bucket; the registry itself talks to the bucket directly."""
    client = RegistryClient(local_registry.url)
    pushed = push_images(client, 4, seed=11)
    proxy.mode, proxy.rate = "faults", 0.05
    plan = local_registry.write_plan()
    data = plan.read_text().replace(f"endpoint: {local_registry.s3_endpoint}", f"endpoint: {proxy.endpoint}")
    data = data.replace("  health_timeout_seconds: 30\n",
                        f"  health_timeout_seconds: 30\n  storage:\n    regionendpoint: {local_registry.s3_endpoint}\n")
    plan.write_text(data)
    result = run_cli("run", "--yes", plan)
    assert result.returncode == 0, result.stderr
    assert storage_of(local_registry.config)["s3"]["regionendpoint"] == local_registry.s3_endpoint
    assert_all_pull(client, pushed)


def test_unreachable_bucket_stops_before_the_flip(local_registry, proxy, s3, bucket):
    proxy.mode = "down"
    before = (listing(s3, bucket), file_hash(local_registry.config))
    plan = local_registry.write_plan()
    plan.write_text(plan.read_text().replace(local_registry.s3_endpoint, proxy.endpoint))
    result = run_cli("run", "--yes", plan)
    assert result.returncode == 2, result.stderr
    assert "cannot reach the S3 endpoint" in result.stderr or "S3 error" in result.stderr
    assert (listing(s3, bucket), file_hash(local_registry.config)) == before
    assert RegistryClient(local_registry.url).write_probe("probe/after") == 202


def test_bucket_lost_inside_the_window_returns_the_registry_to_the_filesystem(local_registry, proxy, monkeypatch):
    client = RegistryClient(local_registry.url)
    pushed = push_images(client, 3, seed=12)
    original = file_hash(local_registry.config)
    plan_path = local_registry.write_plan(sync={"workers": 4, "shard_workers": 4, "max_attempts": 2})
    plan_path.write_text(plan_path.read_text().replace(local_registry.s3_endpoint, proxy.endpoint))
    real_final_sync = copy.final_sync_and_delete

    def outage_then_final_sync(self):
        client.request("GET", "/v2/")  # the registry is read-only now
        (local_registry.root / "docker/registry/v2/repositories/team0/app0/_manifests/tags/v0/current/link").touch()
        proxy.mode = "down"
        return real_final_sync(self)

    replace_phase(monkeypatch, "final_sync", outage_then_final_sync)
    with migration(load_plan(plan_path), options=Options(yes=True)) as job:
        with pytest.raises(StoppedSafely, match="back on the filesystem"):
            runner.run(job)
    assert file_hash(local_registry.config) == original
    assert client.write_probe("probe/after") == 202
    assert_all_pull(client, pushed)
