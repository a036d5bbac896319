"""End to end with a real client: images written as OCI layouts, pushed and pulled with skopeo through the real
docker-registry, before and after `migrator run` moved it to the bucket. Auth, redirects and a failed restore."""

from __future__ import annotations

import json
import shutil
import urllib.parse

import bcrypt
import pytest
from conftest import UPLOADS, bucket_contents, run_cli, source_files
from oci import Layout, pull, push

from migrator.errors import RestoreFailed
from migrator.migration import runner
from migrator.migration.context import Options
from migrator.migration.context import open_context as migration
from migrator.plan import load_plan
from migrator.registry_http import RegistryClient
from migrator.state import StateStore
from migrator.testing.phases import replace_phase

pytestmark = pytest.mark.slow

REPOS = "docker/registry/v2/repositories/"


def test_every_image_pulls_with_skopeo_from_the_s3_backed_registry(local_registry, s3, bucket, tmp_path):
    registry = urllib.parse.urlparse(local_registry.url).netloc
    layout = Layout(tmp_path / "images")
    layout.image("v1", "app")
    layout.image("uploads-tag", "tag-named-uploads")  # pushed as the tag `_uploads`: a tag may be named so
    layout.multi_arch("latest", "multi")
    layout.image("v1-linked", "linked")
    images = {"team0/app:v1": "v1", "team0/app:_uploads": "uploads-tag", "multi/arch:latest": "latest",
              "team1/linked:v1": "v1-linked"}
    for reference, tag in images.items():
        push(layout, tag, registry, reference)
    client = RegistryClient(local_registry.url)
    assert client.request("POST", "/v2/team0/app/blobs/uploads/").status == 202  # an upload in progress
    repo = local_registry.root / REPOS / "team1/linked"  # a repository kept on another disk, behind a link
    shutil.move(str(repo), tmp_path / "other-disk")
    repo.symlink_to(tmp_path / "other-disk", target_is_directory=True)
    for reference, tag in images.items():  # the filesystem registry serves all of them
        assert pull(registry, reference, tmp_path / "before") == layout.digest(tag)

    plan = local_registry.write_plan()
    result = run_cli("run", "--yes", plan)
    assert result.returncode == 0, result.stderr
    assert "s3" in (local_registry.config.read_text())

    for reference, tag in images.items():  # every platform, every blob, through the 307 to the bucket
        assert pull(registry, reference, tmp_path / "after") == layout.digest(tag), reference
    copied = {rel: data for rel, data in bucket_contents(s3, bucket, "reg/").items() if not UPLOADS.match(rel)}
    assert copied == source_files(local_registry.root)  # uploads the registry itself began on s3 aside
    report = json.loads((plan.parent / "plan.state" / "report.json").read_text())
    assert report["images"]["tags"] == len(images) and report["images"]["missing"] == 0
    assert report["images"]["manifests"] == len(images) + 2  # the index's two children
    assert report["images"]["sample_on_s3"]["tags"] == len(images)
    assert report["images"]["sample_on_s3"]["failures"] == report["images"]["through_registry"]["failures"] == 0
    out = tmp_path / "images.json"
    verified = run_cli("verify", "--images", "--json", out, plan)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    proof = json.loads(out.read_text())
    assert proof["ok"] and proof["through_registry"]["tags"] == len(images) and proof["images"]["missing"] == 0


def test_a_registry_with_htpasswd_auth_is_migrated_and_redirects_can_be_disabled(local_registry, tmp_path, monkeypatch):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("prober:" + bcrypt.hashpw(b"probe-secret", bcrypt.gensalt(rounds=5)).decode() + "\n")
    local_registry.config.write_text(local_registry.config.read_text()
                                     + f"auth:\n  htpasswd:\n    realm: registry\n    path: {htpasswd}\n")
    local_registry.stop()
    local_registry.start()
    plan = local_registry.write_plan(registry={"config": str(local_registry.config), "url": local_registry.url,
                                               "restart": local_registry.restart_command, "redirect": {"disable": True}})
    config_before = local_registry.config.read_text()
    refused = run_cli("run", "--yes", plan)  # no probe credentials: nothing could be proven, so nothing starts
    assert refused.returncode == 2 and "MIGRATOR_PROBE_USER" in refused.stderr, refused.stderr
    assert local_registry.config.read_text() == config_before
    monkeypatch.setenv("MIGRATOR_PROBE_USER", "prober")
    monkeypatch.setenv("MIGRATOR_PROBE_PASSWORD", "probe-secret")
    client = RegistryClient(local_registry.url)
    assert client.request("GET", "/v2/").status == 200
    digest = client.push_image("team/app", "v1", [b"layer one", b"layer two"])
    result = run_cli("run", "--yes", plan)
    assert result.returncode == 0, result.stderr
    assert "COULD NOT PROVE" not in result.stderr and "redirected (307)" not in result.stderr
    assert "redirect:\n    disable: true" in local_registry.config.read_text()
    assert client.pull_image("team/app", "v1") == digest
    manifest = json.loads(client.manifest("team/app", "v1"))
    blob = client._send("GET", f"/v2/team/app/blobs/{manifest['layers'][0]['digest']}", None,
                        {"Authorization": client._basic()}, follow=False)
    assert blob.status == 200 and blob.body == b"layer one"  # served by the registry itself, no 307
    assert client.write_probe("probe/after") == 202


def test_a_failed_restore_is_reported_as_it_is(local_registry, tmp_path, monkeypatch):
    client = RegistryClient(local_registry.url)
    digest = client.push_image("team/app", "v1", [b"a layer"])
    broken = tmp_path / "restart-is-broken"
    plan = local_registry.write_plan(registry={"config": str(local_registry.config), "url": local_registry.url,
                                               "restart": f"test ! -e {broken} && {local_registry.restart_command}",
                                               "health_timeout_seconds": 10})

    def fail_in_the_window(self):
        broken.touch()  # from now on the restart command fails: the registry keeps running read-only
        raise RuntimeError("the bucket caught fire")

    replace_phase(monkeypatch, "final_sync", fail_in_the_window)
    with migration(load_plan(plan), options=Options(yes=True)) as job:
        with pytest.raises(RestoreFailed) as failed:
            runner.run(job)
    message = str(failed.value)
    assert "the bucket caught fire" in message and "may still refuse pushes" in message
    assert "nothing was lost" not in message and "back on the filesystem" not in message
    assert client.write_probe("probe/during") == 405  # what is true: still read-only
    state = StateStore(plan.parent / "plan.state").load()
    assert state.readonly_on_at is not None and state.restore_problem
    status = run_cli("status", plan)
    assert "REGISTRY NOT PROVEN BACK" in status.stdout, status.stdout
    monkeypatch.undo()
    broken.unlink()
    rolled_back = run_cli("rollback", "--yes", plan)
    assert rolled_back.returncode == 0, rolled_back.stderr
    assert client.write_probe("probe/after") == 202
    assert "NOT PROVEN BACK" not in run_cli("status", plan).stdout
    assert client.pull_image("team/app", "v1") == digest
