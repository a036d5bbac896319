"""End to end: the real docker-registry (Debian package) and moto_server, driven by `migrator run`."""

from __future__ import annotations

import hashlib
import http.client
import json
import shlex
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml
from conftest import file_hash, listing, run_cli
from oci import pull

from migrator.errors import StoppedSafely
from migrator.migration import copy, runner, window
from migrator.migration.context import Options
from migrator.migration.context import open_context as migration
from migrator.plan import load_plan
from migrator.registry_http import RegistryClient
from migrator.state import StateStore
from migrator.testing.omnibus_fake import GITLAB_RB, FakeOmnibus
from migrator.testing.phases import replace_phase

pytestmark = pytest.mark.slow


def push_images(client: RegistryClient, count: int, seed: int = 1) -> dict:
    import random

    rng = random.Random(seed)
    pushed = {}
    for index in range(count):
        repository = f"team{index % 3}/app{index % 2}"
        layers = [rng.randbytes(rng.randint(500, 200_000)) for _ in range(rng.randint(1, 3))]
        pushed[(repository, f"v{index}")] = client.push_image(repository, f"v{index}", layers)
    return pushed


def assert_all_pull(client: RegistryClient, pushed: dict) -> None:
    """Every image pulls, by tag and by digest, with a real client (skopeo: every blob fetched, following the 307
    to the bucket, and digest-checked); ours must agree."""
    registry = urllib.parse.urlparse(client.url).netloc
    with tempfile.TemporaryDirectory() as scratch:
        for (repository, tag), digest in pushed.items():
            assert pull(registry, f"{repository}:{tag}", Path(scratch) / "by-tag") == digest, f"{repository}:{tag}"
            assert pull(registry, f"{repository}@{digest}", Path(scratch) / "by-digest") == digest
            assert client.pull_image(repository, tag) == digest, f"{repository}:{tag}"


class WriteProber(threading.Thread):
    """Starts (and cancels) a blob upload every few milliseconds; records every status seen."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.client = RegistryClient(url, timeout=5)
        self.statuses: list = []
        self.times: list = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.times.append(time.time())
            try:
                self.statuses.append(self.client.write_probe("probe/writer"))
            except OSError:
                self.statuses.append("down")
            time.sleep(0.02)

    def refused_span(self) -> float:
        """Seconds from the first write this prober saw refused to the last one."""
        refused = [moment for moment, status in zip(self.times, self.statuses) if status != 202]
        return refused[-1] - refused[0] if refused else 0.0

    def stop(self) -> list:
        self.stopped.set()
        self.join(10)
        return self.statuses


def storage_of(config: Path) -> dict:
    return yaml.safe_load(config.read_text())["storage"]


def test_run_migrates_a_live_registry(local_registry, s3, bucket):
    client = RegistryClient(local_registry.url)
    pushed = push_images(client, 8)
    in_progress = client.request("POST", "/v2/team0/app0/blobs/uploads/")  # an unfinished upload
    assert in_progress.status == 202
    upload_id = in_progress.headers["docker-upload-uuid"]
    assert list(local_registry.root.glob("docker/registry/v2/repositories/*/*/_uploads/*"))
    original_config = local_registry.config.read_text()
    plan = local_registry.write_plan()

    prober = WriteProber(local_registry.url)
    prober.start()
    result = run_cli("run", "--yes", plan)
    statuses = prober.stop()
    assert result.returncode == 0, result.stderr

    assert 405 in statuses, "no write was refused during the read-only window"
    assert statuses[-1] == 202
    storage = storage_of(local_registry.config)
    assert "s3" in storage and "filesystem" not in storage
    assert storage["s3"]["bucket"] == bucket and storage["s3"]["rootdirectory"] == "/reg"
    assert not (storage.get("maintenance") or {}).get("readonly", {}).get("enabled")
    assert storage["cache"] == {"blobdescriptor": "inmemory"} and storage["delete"] == {"enabled": True}
    assert not [k for k in listing(s3, bucket) if upload_id in k], "an in-progress upload was copied"
    assert not [k for k in listing(s3, bucket) if "migrator-probe" in k], "the write probes left objects behind"
    catalog = json.loads(client.request("GET", "/v2/_catalog").body)["repositories"]
    assert sorted(catalog) == sorted({repository for repository, _ in pushed})
    assert_all_pull(client, pushed)

    # reads come from the bucket: a blob GET redirects (307) to the S3 endpoint
    (repository, tag), _ = next(iter(pushed.items()))
    manifest = json.loads(client.request("GET", f"/v2/{repository}/manifests/{tag}",
                                         headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"}).body)
    url = urllib.parse.urlparse(local_registry.url)
    conn = http.client.HTTPConnection(url.hostname, url.port)
    conn.request("GET", f"/v2/{repository}/blobs/{manifest['layers'][0]['digest']}")
    response = conn.getresponse()
    assert response.status == 307 and response.getheader("Location").startswith(local_registry.s3_endpoint)
    assert "blob pulls are redirected (307) to " + local_registry.s3_endpoint in result.stderr

    report = json.loads((plan.parent / "plan.state" / "report.json").read_text())
    assert report["read_only_window_seconds"] > 0 and report["restart_seconds"] > 0
    in_window = [r for r in report["restarts"] if r["in_window"]]
    assert len(in_window) == 2, "read-only on, then s3 read-write: the cut-over check needs no restart of its own"
    # what clients saw, measured by our probes, against a prober of the test's own
    assert prober.refused_span() - 0.1 <= report["pushes_refused_seconds"] <= report["read_only_window_seconds"]
    assert 0 < report["reads_refused_seconds"] <= report["restart_seconds"]
    assert report["images"]["through_registry"]["where"].startswith("/usr/bin/docker-registry serving")
    assert "clients saw: pushes refused " in result.stdout
    assert [p["name"] for p in report["phases"]] == ["initial_sync", "delta_passes", "online_verification",
                                                     "prove_on_s3", "readonly_on", "final_sync", "verify_window", "cutover",
                                                     "readonly_off"]
    assert report["verification"]["source_objects"] == report["verification"]["bucket_objects"]
    assert report["images"]["tags"] == len(pushed) and report["images"]["missing"] == 0
    assert report["images"]["sample_on_s3"]["tags"] == len(pushed) and report["images"]["sample_on_s3"]["ok"]
    assert report["images"]["through_registry"]["ok"]
    assert report["final_pass"]["method"] == "change feed (fanotify)", report["final_pass"]
    assert f"final pass: change feed (fanotify), {report['final_pass']['paths']} paths re-synced" in result.stdout
    backup = plan.parent / "plan.state" / "config-backup" / "config.yml"
    assert backup.read_text() == original_config

    # pushes work on the new backend, and a re-run changes nothing
    client.push_image("after/cutover", "v1", [b"new layer"])
    again = run_cli("run", "--yes", plan)
    assert again.returncode == 0, again.stderr


def test_omnibus_slow_path_reconfigures_then_rolls_back(local_registry, s3, bucket, tmp_path):
    """A plan naming ``restart: gitlab-ctl reconfigure`` gets the slow path: gitlab.rb only, reconfigure renders."""
    client = RegistryClient(local_registry.url)
    pushed = push_images(client, 4, seed=2)
    omnibus = FakeOmnibus(local_registry, tmp_path)
    plan = omnibus.write_plan(restart=f"{omnibus.ctl} reconfigure")
    assert load_plan(plan).registry.format == "omnibus"
    result = run_cli("run", "--yes", plan)
    assert result.returncode == 0, result.stderr
    text = omnibus.gitlab_rb.read_text()
    assert text.startswith(GITLAB_RB) and "# BEGIN migrator" in text and "'s3' => {" in text
    storage = storage_of(local_registry.config)
    assert storage["s3"]["bucket"] == bucket and "filesystem" not in storage
    assert [action for _, action in omnibus.actions() if action != "restart registry"] == [
        "reconfigure started", "reconfigure rendered config.yml: changed"] * 2
    assert_all_pull(client, pushed)

    rolled_back = run_cli("rollback", "--yes", "--force", plan)
    assert rolled_back.returncode == 0, rolled_back.stderr
    assert omnibus.gitlab_rb.read_text() == GITLAB_RB
    assert "filesystem" in storage_of(local_registry.config)
    assert_all_pull(client, pushed)


def test_mismatch_found_in_the_window_returns_the_registry_to_the_filesystem(local_registry, s3, bucket):
    client = RegistryClient(local_registry.url)
    pushed = push_images(client, 3, seed=3)
    original = file_hash(local_registry.config)
    victim = next(p for p in local_registry.root.rglob("data") if "blobs" in str(p))
    key = "reg/" + str(victim.relative_to(local_registry.root))
    # the read-only flip's restart also loses one object from the bucket: the full verify must notice
    sabotage = f"{sys.executable} -c \"import boto3; boto3.client('s3', endpoint_url='{local_registry.s3_endpoint}', " \
               f"region_name='us-east-1').delete_object(Bucket='{bucket}', Key='{key}')\""
    plan = local_registry.write_plan(registry={
        "config": str(local_registry.config), "url": local_registry.url,
        "restart": f"grep -q 'enabled: true' {shlex.quote(str(local_registry.config))} && {sabotage}; "
                   f"{local_registry.restart_command}"})
    result = run_cli("run", "--yes", "--full-verify", plan)
    assert result.returncode == 1, result.stderr
    assert "back on the filesystem, read-write" in result.stderr
    assert file_hash(local_registry.config) == original
    assert not (local_registry.root / "docker/registry/v2/repositories/migrator-probe").exists(), "probe leftovers"
    assert client.write_probe("probe/after") == 202
    assert_all_pull(client, pushed)
    state = StateStore(plan.parent / "plan.state").load()
    assert state.readonly_on_at is None and "readonly_on" not in state.done


@pytest.mark.parametrize("how", ["no proof, tampered bucket", "proof disagrees with the source"])
def test_window_change_is_proven(local_registry, s3, bucket, monkeypatch, how):
    """Without --full-verify each window change is proven by the bucket's own answer or, failing that, a HEAD."""
    client = RegistryClient(local_registry.url)
    push_images(client, 2, seed=4)
    plan = load_plan(local_registry.write_plan())
    original = file_hash(local_registry.config)
    real_final_sync = copy.final_sync_and_delete
    new_link = "docker/registry/v2/repositories/team0/app0/_manifests/tags/late/current/link"
    links = sorted(local_registry.root.glob("docker/registry/v2/repositories/*/*/_manifests/revisions/sha256/*/link"))

    def late_tag_then_trouble(self):
        # a tag written just before the flip: the window's final pass uploads it
        target = local_registry.root / new_link
        target.parent.mkdir(parents=True)
        target.write_bytes(links[0].read_bytes())
        result = real_final_sync(self)
        if how == "no proof, tampered bucket":  # e.g. a KMS ETag proves nothing: the HEAD must see the bad copy
            with sqlite3.connect(self.plan.state_dir / "journal.sqlite") as conn:
                conn.execute("DELETE FROM window_proofs")
            s3.put_object(Bucket=bucket, Key="reg/" + new_link, Body=b"sha256:" + b"0" * 64)
        else:  # the source no longer matches what the bucket acknowledged
            target.write_bytes(links[1].read_bytes())
        return result

    replace_phase(monkeypatch, "final_sync", late_tag_then_trouble)
    with migration(plan, options=Options(yes=True)) as job:
        with pytest.raises(StoppedSafely, match="other content"):
            runner.run(job)
    assert file_hash(local_registry.config) == original
    assert client.write_probe("probe/after") == 202


def test_an_image_that_does_not_pull_from_s3_returns_the_registry_to_the_filesystem(local_registry, monkeypatch):
    client = RegistryClient(local_registry.url)
    pushed = push_images(client, 2, seed=9)
    original = file_hash(local_registry.config)
    real_cutover = window.cutover

    def lose_blobs_in_the_window(self):  # the sample pulled before the window; then the bucket "lost" blobs: the window
        # changed no tag, so the cut-over check asks tags of all, before production runs on s3
        monkeypatch.setattr(RegistryClient, "head_blob", lambda self, repository, digest: 404)
        real_cutover(self)

    replace_phase(monkeypatch, "cutover", lose_blobs_in_the_window)
    with migration(load_plan(local_registry.write_plan()), options=Options(yes=True)) as job:
        with pytest.raises(StoppedSafely, match="do not pull from the registry on s3"):
            runner.run(job)
        assert job.state.readonly_on_at is None and "cutover" not in job.state.done
    monkeypatch.undo()
    assert file_hash(local_registry.config) == original
    assert client.write_probe("probe/after") == 202
    assert_all_pull(client, pushed)


def test_rollback_refuses_when_pushes_would_be_stranded(local_registry):
    client = RegistryClient(local_registry.url)
    pushed = push_images(client, 2, seed=5)
    original = local_registry.config.read_text()
    plan = local_registry.write_plan()
    assert run_cli("run", "--yes", plan).returncode == 0
    time.sleep(1.1)  # S3 LastModified has one-second resolution
    client.push_image("new/after", "v1", [b"pushed to s3 only"])
    refused = run_cli("rollback", "--yes", plan)
    assert refused.returncode == 3 and "strand" in refused.stderr
    assert "s3" in storage_of(local_registry.config)
    forced = run_cli("rollback", "--yes", "--force", plan)
    assert forced.returncode == 0, forced.stderr
    assert local_registry.config.read_text() == original
    assert client.write_probe("probe/after") == 202
    assert_all_pull(client, pushed)
    status = run_cli("status", plan)
    assert "rolled back" in status.stdout and "read-only now: no" in status.stdout


def test_second_concurrent_run_is_refused(local_registry, s3, bucket):
    plan = local_registry.write_plan()
    before = (listing(s3, bucket), file_hash(local_registry.config))
    holder = StateStore(plan.parent / "plan.state")
    holder.lock()
    try:
        result = run_cli("run", "--yes", plan)
    finally:
        holder.unlock()
    assert result.returncode == 3 and "another migrator run" in result.stderr
    assert (listing(s3, bucket), file_hash(local_registry.config)) == before


def test_report_changes_nothing_and_shows_the_config_diff(local_registry, s3, bucket, tmp_path):
    client = RegistryClient(local_registry.url)
    push_images(client, 2, seed=6)
    plan = local_registry.write_plan()
    before = (listing(s3, bucket), file_hash(local_registry.config))
    out = tmp_path / "report.json"
    result = run_cli("report", plan, "--json", out)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["would_upload"]["objects"] == report["source_objects"] > 0
    assert "+    s3:" in report["config_diff"]["final"] or "+  s3:" in report["config_diff"]["final"]
    assert "enabled: true" in report["config_diff"]["read_only"]
    assert report["estimated_read_only_window_seconds"]["total"] > 0
    assert (listing(s3, bucket), file_hash(local_registry.config)) == before
    dry = run_cli("run", "--dry-run", plan)
    assert dry.returncode == 0 and "would upload" in dry.stdout
    assert hashlib.sha256(local_registry.config.read_bytes()).hexdigest() == before[1]


@pytest.mark.parametrize("pushed_meanwhile", [True, False])
def test_failed_write_probe_after_read_only_off_never_strands_pushes(local_registry, monkeypatch, pushed_meanwhile):
    client = RegistryClient(local_registry.url)
    pushed = push_images(client, 2, seed=11)
    original = file_hash(local_registry.config)
    real_probe = RegistryClient.write_probe

    failed = []

    def failing_probe(self, repository):
        status = real_probe(self, repository)
        if status != 202 or failed:  # the first probe after read-only off fails; the restore's is real
            return status
        failed.append(status)
        if pushed_meanwhile:  # read-write on s3 now: a user's push lands there before the probe "fails"
            client.push_image("late/pusher", "v1", [b"pushed to s3 in the first seconds"])
        return 500

    monkeypatch.setattr(RegistryClient, "write_probe", failing_probe)
    with migration(load_plan(local_registry.write_plan()), options=Options(yes=True)) as job:
        with pytest.raises(StoppedSafely) as stopped:
            runner.run(job)
    monkeypatch.undo()
    if pushed_meanwhile:
        assert "left on s3" in str(stopped.value) and "strand" in str(stopped.value)
        assert "s3" in storage_of(local_registry.config)
        assert client.manifest_digest("late/pusher", "v1") is not None
    else:
        assert "back on the filesystem" in str(stopped.value)
        assert file_hash(local_registry.config) == original
    assert client.write_probe("probe/after") == 202
    assert_all_pull(client, pushed)
