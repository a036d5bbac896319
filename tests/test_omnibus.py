"""The window operators see: GitLab Omnibus' fast path, GitLab's registry specifics, the cut-over check without a
restart of its own, and `migrator gc`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import yaml
from conftest import file_hash, run_cli
from test_e2e import assert_all_pull, push_images, storage_of

from migrator.errors import StoppedSafely
from migrator.layout import FILESYSTEM_IN_USE
from migrator.migration import proofs, runner
from migrator.migration.context import Options
from migrator.migration.context import open_context as migration
from migrator.plan import load_plan
from migrator.registry_http import RegistryClient
from migrator.state import StateStore
from migrator.testing.omnibus_fake import GITLAB_RB, FakeOmnibus
from migrator.testing.phases import replace_phase

pytestmark = pytest.mark.slow

RECONFIGURE_SECONDS = 6


def report_of(plan) -> dict:
    return json.loads((plan.parent / "plan.state" / "report.json").read_text())


def test_omnibus_fast_path_keeps_reconfigure_out_of_the_window(local_registry, s3, bucket, tmp_path):
    client = RegistryClient(local_registry.url)
    pushed = push_images(client, 4, seed=2)
    omnibus = FakeOmnibus(local_registry, tmp_path, reconfigure_seconds=RECONFIGURE_SECONDS)
    rendered_before = local_registry.config.read_text()
    plan = omnibus.write_plan()
    assert load_plan(plan).registry.restart is None  # the default Omnibus plan: the fast path

    result = run_cli("run", "--yes", plan)
    assert result.returncode == 0, result.stderr
    report = report_of(plan)
    on, off = report["readonly_on_at"], report["readonly_off_at"]
    actions = omnibus.actions()
    inside = [action for moment, action in actions if on <= moment <= off]
    after = [action for moment, action in actions if moment > off]
    assert inside == ["restart registry", "restart registry"], actions
    assert after == ["reconfigure started", "reconfigure rendered config.yml: unchanged"], actions
    assert report["read_only_window_seconds"] < RECONFIGURE_SECONDS, "a reconfigure's time inside the window"
    assert [p["name"] for p in report["phases"]][-1] == "reconfigure"

    # Omnibus keeps what was written: gitlab.rb's block renders exactly the config.yml the registry runs with
    text = omnibus.gitlab_rb.read_text()
    assert text.startswith(GITLAB_RB) and "registry['database'] = {\n  'enabled' => false\n}" in text
    storage = storage_of(local_registry.config)
    assert storage["s3"]["bucket"] == bucket and not storage.get("maintenance", {}).get("readonly", {}).get("enabled")
    assert yaml.safe_load(local_registry.config.read_text())["database"] == {"enabled": False}
    changed = [line for line in local_registry.config.read_text().splitlines() if line not in rendered_before.splitlines()]
    assert [line.split(":")[0] for line in changed] == ["storage", "database"], changed
    omnibus.reconfigure()
    assert omnibus.actions()[-1][1] == "reconfigure rendered config.yml: unchanged"
    assert client.write_probe("after/reconfigure") == 202
    assert_all_pull(client, pushed)

    assert report["pushes_refused_seconds"] <= report["read_only_window_seconds"]
    assert report["reads_refused_seconds"] <= report["restart_seconds"] + 0.5
    diff = report["config_diff"]
    assert "gitlab.rb" in diff and "config.yml" in diff


@pytest.mark.parametrize("write", [1, 2], ids=["read-only write", "s3 read-write write"])
def test_omnibus_run_killed_between_the_two_writes_resumes(local_registry, s3, bucket, tmp_path, write):
    client = RegistryClient(local_registry.url)
    pushed = push_images(client, 3, seed=5)
    omnibus = FakeOmnibus(local_registry, tmp_path)
    plan = omnibus.write_plan()
    env = dict(os.environ, MIGRATOR_FAILPOINT=f"omnibus-between-writes@{write}")
    killed = subprocess.run([sys.executable, "-m", "migrator", "--quiet", "run", "--yes", str(plan)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "# BEGIN migrator" in omnibus.gitlab_rb.read_text()  # gitlab.rb written, config.yml not yet

    resumed = run_cli("run", "--yes", plan)
    assert resumed.returncode == 0, resumed.stderr
    assert "s3" in storage_of(local_registry.config)
    assert client.write_probe("after/resume") == 202
    assert_all_pull(client, pushed)


def test_gitlab_marker_is_in_the_bucket_before_the_registry_runs_on_s3(local_registry, s3, bucket, tmp_path):
    client = RegistryClient(local_registry.url)
    pushed = push_images(client, 2, seed=6)
    marker = local_registry.root / FILESYSTEM_IN_USE
    marker.parent.mkdir(parents=True)
    marker.write_text("filesystem-in-use\n")
    seen = tmp_path / "seen-at-restart"
    check = tmp_path / "check_marker.py"  # at each restart onto s3: is the marker in the bucket already?
    check.write_text(
        "import boto3, sys, yaml\n"
        f"storage = yaml.safe_load(open({str(local_registry.config)!r}))['storage']\n"
        "if 's3' in storage:\n"
        f"    s3 = boto3.client('s3', endpoint_url={local_registry.s3_endpoint!r}, region_name='us-east-1')\n"
        f"    found = s3.list_objects_v2(Bucket={bucket!r}, Prefix='reg/{FILESYSTEM_IN_USE}')['KeyCount']\n"
        f"    open({str(seen)!r}, 'a').write(f'{{found}}\\n')\n")
    plan = local_registry.write_plan(registry={"config": str(local_registry.config), "url": local_registry.url,
                                               "restart": f"{sys.executable} {check} && {local_registry.restart_command}"})
    result = run_cli("run", "--yes", plan)
    assert result.returncode == 0, result.stderr
    assert seen.read_text().split() == ["1"]
    assert s3.get_object(Bucket=bucket, Key=f"reg/{FILESYSTEM_IN_USE}")["Body"].read() == b"filesystem-in-use\n"
    assert_all_pull(client, pushed)


def test_missing_marker_stops_before_the_cutover(local_registry, s3, bucket, monkeypatch):
    """Break it on purpose: the marker vanishes from the bucket after the window's proofs; the cut-over must not
    happen (on GitLab the registry would start on an empty database)."""
    push_images(RegistryClient(local_registry.url), 2, seed=7)
    marker = local_registry.root / FILESYSTEM_IN_USE
    marker.parent.mkdir(parents=True)
    marker.write_text("filesystem-in-use\n")
    original = file_hash(local_registry.config)
    real_verify_window = proofs.verify_window

    def verify_then_lose_the_marker(self):
        real_verify_window(self)
        s3.delete_object(Bucket=bucket, Key=f"reg/{FILESYSTEM_IN_USE}")

    replace_phase(monkeypatch, "verify_window", verify_then_lose_the_marker)
    with migration(load_plan(local_registry.write_plan()), options=Options(yes=True)) as job:
        with pytest.raises(StoppedSafely, match="metadata marker"):
            runner.run(job)
        assert not job.state.s3_config_written
    assert file_hash(local_registry.config) == original
    assert RegistryClient(local_registry.url).write_probe("probe/after") == 202


def test_bad_s3_settings_are_caught_before_production_runs_on_s3(local_registry, s3, bucket):
    client = RegistryClient(local_registry.url)
    pushed = push_images(client, 2, seed=8)
    original = file_hash(local_registry.config)
    plan = local_registry.write_plan(registry={"config": str(local_registry.config), "url": local_registry.url,
                                               "restart": local_registry.restart_command,
                                               "storage": {"regionendpoint": "http://127.0.0.1:9"}})
    result = run_cli("run", "--yes", plan)  # doctor's push by the registry itself, in preflight, fails first
    assert result.returncode == 2, result.stderr
    assert "[push] a push by the registry itself failed at 'start an upload (POST)'" in result.stderr
    assert "nothing was changed" in result.stderr
    state = StateStore(plan.parent / "plan.state").load()
    assert not state.s3_config_written and state.readonly_on_at is None and not state.restarts and not state.done
    assert file_hash(local_registry.config) == original
    assert client.write_probe("probe/after") == 202
    assert_all_pull(client, pushed)


def test_without_the_registry_binary_the_cutover_check_restarts(local_registry, s3, bucket):
    client = RegistryClient(local_registry.url)
    pushed = push_images(client, 2, seed=9)
    plan = local_registry.write_plan(registry={"config": str(local_registry.config), "url": local_registry.url,
                                               "restart": local_registry.restart_command,
                                               "binary": "/nonexistent/registry"})
    result = run_cli("run", "--yes", plan)
    assert result.returncode == 0, result.stderr
    report = report_of(plan)
    assert len([r for r in report["restarts"] if r["in_window"]]) == 3
    assert report["images"]["through_registry"]["where"].startswith("the registry restarted read-only on s3")
    assert_all_pull(client, pushed)


@pytest.mark.parametrize("point", ["config-written@1", "restore-written@1", "restore-restarted@1"])
def test_gc_killed_at_each_step_is_finished_by_the_same_command(local_registry, tmp_path, point):
    """The gc resume drill: SIGKILL after the read-only config is written, after the original is written back, and
    after its restart; 'migrator gc' again finishes: the config byte-identical, writes proven, every image pulls."""
    client = RegistryClient(local_registry.url)
    pushed = push_images(client, 3, seed=11)
    orphan = client.push_blob("team0/app0", b"a layer no manifest names" * 100)
    data = local_registry.root / f"docker/registry/v2/blobs/sha256/{orphan[7:9]}/{orphan[7:]}/data"
    original = file_hash(local_registry.config)
    plan = local_registry.write_plan()
    killed = run_cli("gc", "--yes", plan, env=dict(os.environ, MIGRATOR_FAILPOINT=point))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = run_cli("gc", "--yes", plan)
    assert done.returncode == 0, done.stderr
    assert not data.exists()
    assert file_hash(local_registry.config) == original
    assert client.write_probe("probe/after-gc") == 202
    assert StateStore(plan.parent / "plan.state").load().gc_started_at is None
    assert_all_pull(client, pushed)


def test_gc_removes_an_unreferenced_blob_and_every_image_still_pulls(local_registry, s3, bucket, tmp_path):
    client = RegistryClient(local_registry.url)
    pushed = push_images(client, 3, seed=10)
    orphan = client.push_blob("team0/app0", b"a layer no manifest names" * 100)
    data = local_registry.root / f"docker/registry/v2/blobs/sha256/{orphan[7:9]}/{orphan[7:]}/data"
    assert data.is_file()
    original = file_hash(local_registry.config)
    plan = local_registry.write_plan()

    dry = run_cli("gc", plan, "--dry-run", "--json", tmp_path / "dry.json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads((tmp_path / "dry.json").read_text())["blobs"] == 1 and data.is_file()
    report = run_cli("report", plan, "--json", tmp_path / "report.json")
    assert report.returncode == 0, report.stderr
    assert json.loads((tmp_path / "report.json").read_text())["garbage_collection"]["bytes"] == 2500
    assert "hint: http.draintimeout is unset (0)" in report.stdout  # the local registry's config has none

    killed = subprocess.run([sys.executable, "-m", "migrator", "--quiet", "gc", "--yes", str(plan)], timeout=300,
                            env=dict(os.environ, MIGRATOR_FAILPOINT="restarted@1"), capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr  # killed with the registry just restarted read-only
    assert StateStore(plan.parent / "plan.state").load().gc_started_at is not None
    refused = run_cli("run", "--yes", plan)
    assert refused.returncode == 2 and "re-run 'migrator gc'" in refused.stderr, refused.stderr
    done = run_cli("gc", plan, "--yes", "--json", tmp_path / "gc.json")  # the same command finishes the job
    assert done.returncode == 0, done.stderr
    figures = json.loads((tmp_path / "gc.json").read_text())
    assert figures["blobs"] == 1 and figures["bytes"] == 2500 and figures["first_blobs"] == [orphan[7:]]
    assert not data.exists()
    assert file_hash(local_registry.config) == original
    assert client.write_probe("probe/after-gc") == 202
    assert_all_pull(client, pushed)
    state = StateStore(plan.parent / "plan.state").load()
    assert state.gc_started_at is None and state.readonly_on_at is None

    migrated = run_cli("run", "--yes", plan)  # the seed's next step
    assert migrated.returncode == 0, migrated.stderr
    assert_all_pull(client, pushed)
