"""The read-only window trusted only when proven: resumes, the delete guard, the operator's config edits, images
broken in the source, and a registry under http.prefix (issue 21, items 1, 4, 5, 7 and 9). Every test goes through
the command line against a real docker-registry and moto, with the suite's independent oracles."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import UPLOADS, bucket_contents, run_cli, source_files
from test_e2e import assert_all_pull, push_images, storage_of

from migrator.registry_http import RegistryClient
from migrator.state import StateStore
from migrator.testing.local import REGISTRY_BINARY, LocalRegistry
from migrator.testing.omnibus_fake import FakeOmnibus

pytestmark = pytest.mark.slow


def shadow_failing_once(tmp_path: Path, failing_call: int) -> Path:
    """A registry binary whose ``failing_call``-th read-only start fails (the shadow registry serving the s3 config
    read-only: the check before the window is the first, the cut-over's the second) and is docker-registry
    otherwise (doctor's read-write push under a scratch prefix, --version)."""
    counter = tmp_path / "shadow-calls"
    script = tmp_path / "registry-failing-once"
    script.write_text(f"""#!/bin/sh
if [ "$1" = serve ] && grep -q readonly "$2"; then
  n=$(($(cat {counter} 2>/dev/null || echo 0) + 1)); echo $n > {counter}
  [ $n -eq {failing_call} ] && {{ echo 'injected start failure' >&2; exit 1; }}
fi
exec {REGISTRY_BINARY} "$@"
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def run_migrator(plan: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli("run", "--yes", *args, plan)


def assert_bucket_is_the_source(s3, bucket: str, root: Path) -> None:
    copied = {k: v for k, v in bucket_contents(s3, bucket, "reg/").items() if not UPLOADS.match(k)}
    assert copied == source_files(root), "the bucket differs from the source"


def push_between_the_runs_then_resume(client: RegistryClient, pushed: dict, plan: Path, registry: LocalRegistry,
                                      s3, bucket: str) -> None:
    """A push while the state still says read-only, then the re-run: done, and nothing pushed is lost."""
    pushed[("late/push", "v1")] = client.push_image("late/push", "v1", [b"pushed between the runs" * 100])
    resumed = run_migrator(plan)
    assert resumed.returncode == 0, resumed.stderr
    assert "s3" in storage_of(registry.config)
    assert client.write_probe("probe/after") == 202
    assert_bucket_is_the_source(s3, bucket, registry.root)
    assert_all_pull(client, pushed)


def test_a_run_killed_while_its_restore_restarts_is_resumed_by_proving_the_mode(local_registry, s3, bucket, tmp_path):
    """Item 1 (a): the cut-over check fails inside the window, the restore's restart brings the registry back
    read-write, migrator is SIGKILLed before it records that; a push lands; the re-run must not go on as if the
    registry were read-only: the window starts over from the flip and the push reaches the bucket."""
    client = RegistryClient(local_registry.url)
    pushed = push_images(client, 3, seed=21)
    binary = shadow_failing_once(tmp_path, failing_call=2)
    killed_once = tmp_path / "killed"
    # the first restart after the shadow's failure is the restore's: once it has run, SIGKILL migrator ($PPID)
    restart = (f"{local_registry.restart_command} && if [ \"$(cat {tmp_path}/shadow-calls)\" = 2 ] && "
               f"[ ! -e {killed_once} ]; then touch {killed_once}; kill -9 $PPID; fi")
    plan = local_registry.write_plan(registry={
        "config": str(local_registry.config), "url": local_registry.url, "restart": restart,
        "health_timeout_seconds": 30, "binary": str(binary)})
    killed = run_migrator(plan)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert client.write_probe("probe/between") == 202, "the restore's restart should have left the registry writable"
    state = StateStore(plan.parent / "plan.state").load()
    assert state.restore_problem, "the restore was not recorded as intended before its restart"
    push_between_the_runs_then_resume(client, pushed, plan, local_registry, s3, bucket)


def test_a_restore_that_came_up_late_is_proven_before_the_rerun_goes_on(local_registry, s3, bucket, tmp_path):
    """Item 1 (b): the restore's registry gets healthy only after health_timeout_seconds (RestoreFailed, exit 1);
    it then takes pushes. The re-run acts on restore_problem: it proves the registry's mode and starts over."""
    client = RegistryClient(local_registry.url)
    pushed = push_images(client, 3, seed=22)
    binary = shadow_failing_once(tmp_path, failing_call=2)
    local = f"{sys.executable} -m migrator.testing.local"
    where = (f"--config {local_registry.config} --pidfile {local_registry.pidfile} --url {local_registry.url} "
             f"--log {local_registry.logfile}")
    late_once = tmp_path / "late"
    # the first restart after the shadow's failure (the restore's) starts the registry 15 s later, in the background
    restart = (f"if [ \"$(cat {tmp_path}/shadow-calls)\" = 2 ] && [ ! -e {late_once} ]; then touch {late_once}; "
               f"{local} stop {where}; (sleep 15; {local} start {where}) >/dev/null 2>&1 & else {local} restart {where}; fi")
    plan = local_registry.write_plan(registry={
        "config": str(local_registry.config), "url": local_registry.url, "restart": f"sh -c {shlex.quote(restart)}",
        "health_timeout_seconds": 8, "binary": str(binary)})
    failed = run_migrator(plan)
    assert failed.returncode == 1 and "did not become healthy" in failed.stderr, failed.stderr
    assert client.wait_healthy(30) and client.write_probe("probe/between") == 202
    push_between_the_runs_then_resume(client, pushed, plan, local_registry, s3, bucket)


def test_a_mass_delete_seen_online_is_refused_before_the_flip(local_registry, s3, bucket):
    """Item 4: after a pre-seed, more than sync.max_delete_fraction of the objects left the source: the online
    passes see it, so run refuses (exit 3) before the flip: no restart, no read-only window."""
    client = RegistryClient(local_registry.url)
    push_images(client, 6, seed=4)
    plan = local_registry.write_plan()
    seeded = run_cli("sync", plan)
    assert seeded.returncode == 0, seeded.stderr
    subprocess.run(["rm", "-rf", str(local_registry.root / "docker/registry/v2/repositories/team0")], check=True)
    config_before = local_registry.config.read_bytes()
    pid_before = local_registry.pidfile.read_text()

    result = run_cli("run", "--yes", plan)
    assert result.returncode == 3, result.stderr
    assert "max_delete_fraction" in result.stderr and "--allow-mass-delete" in result.stderr
    assert local_registry.pidfile.read_text() == pid_before, "the registry was restarted"
    assert local_registry.config.read_bytes() == config_before
    assert client.write_probe("probe/after") == 202
    state = StateStore(plan.parent / "plan.state").load()
    assert state.readonly_on_at is None and not state.restarts


def test_the_operators_edits_after_a_safe_stop_survive_the_rerun(local_registry, s3, bucket, tmp_path):
    """Item 5: a run stops safely inside the window (back on the filesystem); the operator then adds
    http.draintimeout and rotates http.secret. The re-run's original is the live file: both edits stay."""
    client = RegistryClient(local_registry.url)
    pushed = push_images(client, 3, seed=5)
    plan = local_registry.write_plan(registry={
        "config": str(local_registry.config), "url": local_registry.url, "restart": local_registry.restart_command,
        "health_timeout_seconds": 30, "binary": str(shadow_failing_once(tmp_path, failing_call=2))})
    stopped = run_migrator(plan)
    assert stopped.returncode == 1 and "back on the filesystem, read-write" in stopped.stderr, stopped.stderr
    edited = local_registry.config.read_text().replace("  secret: local-drill-secret\n",
                                                       "  secret: rotated-secret\n  draintimeout: 10s\n")
    local_registry.config.write_text(edited)
    reported = run_cli("report", "--json", tmp_path / "report.json", plan)
    assert reported.returncode == 0, reported.stderr
    assert "draintimeout is unset" not in reported.stdout + reported.stderr
    assert "-  draintimeout" not in (tmp_path / "report.json").read_text()

    resumed = run_migrator(plan)
    assert resumed.returncode == 0, resumed.stderr
    config = yaml.safe_load(local_registry.config.read_text())
    assert config["http"]["secret"] == "rotated-secret" and config["http"]["draintimeout"] == "10s"
    assert "s3" in config["storage"]
    assert_all_pull(client, pushed)


def test_a_registry_served_under_http_prefix_is_migrated(local_registry, s3, bucket):
    """Item 9: http.prefix /reg/ (plan url http://host/reg): the shadow registry keeps the prefix and is asked
    under it, as are the health checks and write probes."""
    text = local_registry.config.read_text().replace("  secret: local-drill-secret\n",
                                                    "  secret: local-drill-secret\n  prefix: /reg/\n")
    local_registry.config.write_text(text)
    local_registry.stop()
    local_registry.start()
    url = local_registry.url + "/reg"
    client = RegistryClient(url)
    assert client.health() == 200 and RegistryClient(local_registry.url).health() == 404
    pushed = push_images(client, 3, seed=9)
    plan = local_registry.write_plan(registry={
        "config": str(local_registry.config), "url": url, "restart": local_registry.restart_command,
        "health_timeout_seconds": 30})

    result = run_migrator(plan)
    assert result.returncode == 0, result.stderr
    assert "s3" in storage_of(local_registry.config)
    assert client.write_probe("probe/after") == 202
    assert_bucket_is_the_source(s3, bucket, local_registry.root)
    for (repository, tag), digest in pushed.items():  # skopeo cannot address a prefix: the registry's answers
        assert client.pull_image(repository, tag) == digest, f"{repository}:{tag}"


BROKEN_LAYER = b"a layer whose link a disk-full write left empty" * 200


def push_broken_image(client: RegistryClient, registry: LocalRegistry) -> Path:
    """broken/app:v1 with one layer link left empty (as after a disk-full write), the registry restarted (its
    in-memory blob cache forgotten); returns that link."""
    client.push_image("broken/app", "v1", [BROKEN_LAYER])
    digest = hashlib.sha256(BROKEN_LAYER).hexdigest()
    link = registry.root / f"docker/registry/v2/repositories/broken/app/_layers/sha256/{digest}/link"
    link.write_bytes(b"")
    registry.stop()
    registry.start()
    assert client.head_blob("broken/app", f"sha256:{digest}") != 200, "the filesystem registry should fail it too"
    return link


def test_an_image_broken_in_the_source_is_reported_not_blamed_on_s3(local_registry, s3, bucket, tmp_path):
    """Item 7: what fails on the filesystem too is reported as broken in the source, by image, and the migration
    goes on (registry.broken_in_source: report, the default)."""
    client = RegistryClient(local_registry.url)
    pushed = push_images(client, 3, seed=7)
    push_broken_image(client, local_registry)
    plan = local_registry.write_plan(registry={
        "config": str(local_registry.config), "url": local_registry.url, "restart": local_registry.restart_command,
        "health_timeout_seconds": 30, "image_sample": 50})

    result = run_migrator(plan)
    assert result.returncode == 0, result.stderr
    assert "check the s3 settings" not in result.stderr
    assert "broken in the source" in result.stderr and "broken/app:v1" in result.stderr
    report = json.loads((plan.parent / "plan.state/report.json").read_text())
    assert report["images"]["broken_in_source"] == ["broken/app:v1"]
    assert "s3" in storage_of(local_registry.config)
    assert_bucket_is_the_source(s3, bucket, local_registry.root)
    assert_all_pull(client, pushed)


def test_broken_in_source_block_stops_before_the_window_and_a_repair_reaches_the_bucket(local_registry, s3, bucket):
    """Item 7: registry.broken_in_source: block stops the run before the window, naming the broken objects; once
    a re-push rewrites the empty link in place, the next run migrates the repaired image."""
    client = RegistryClient(local_registry.url)
    pushed = push_images(client, 2, seed=8)
    link = push_broken_image(client, local_registry)
    plan = local_registry.write_plan(registry={
        "config": str(local_registry.config), "url": local_registry.url, "restart": local_registry.restart_command,
        "health_timeout_seconds": 30, "broken_in_source": "block"})
    config_before = local_registry.config.read_bytes()

    blocked = run_migrator(plan)
    assert blocked.returncode == 1, blocked.stderr
    assert "registry.broken_in_source is block" in blocked.stderr and str(link.relative_to(local_registry.root)) in \
        blocked.stderr, blocked.stderr
    assert local_registry.config.read_bytes() == config_before and client.write_probe("probe/between") == 202

    pushed[("broken/app", "v1")] = client.push_image("broken/app", "v1", [BROKEN_LAYER])  # the repair
    assert len(link.read_bytes()) == 71, "the re-push did not rewrite the link in place"
    repaired = run_migrator(plan)
    assert repaired.returncode == 0, repaired.stderr
    assert s3.get_object(Bucket=bucket, Key=f"reg/{link.relative_to(local_registry.root)}")["Body"].read() == \
        link.read_bytes()
    assert_bucket_is_the_source(s3, bucket, local_registry.root)
    assert_all_pull(client, pushed)


def test_the_operators_edits_of_gitlab_rb_after_a_safe_stop_survive_the_rerun(local_registry, s3, bucket, tmp_path):
    """Item 5 on Omnibus: after a safe stop the operator adds a line to gitlab.rb and reconfigures (its rendering
    now sets http.draintimeout); the re-run keeps both, in gitlab.rb and in the config.yml it writes."""
    client = RegistryClient(local_registry.url)
    pushed = push_images(client, 3, seed=15)
    omnibus = FakeOmnibus(local_registry, tmp_path)
    plan = omnibus.write_plan(binary=str(shadow_failing_once(tmp_path, failing_call=2)))
    stopped = run_migrator(plan)
    assert stopped.returncode == 1 and "back on the filesystem, read-write" in stopped.stderr, stopped.stderr
    edit = "registry['http_secret'] = 'rotated-secret'\n"
    omnibus.gitlab_rb.write_text(omnibus.gitlab_rb.read_text() + edit)
    omnibus.template.write_text(omnibus.template.read_text().replace("  secret: local-drill-secret\n",
                                                                     "  secret: local-drill-secret\n  draintimeout: 10s\n"))
    omnibus.reconfigure()
    local_registry.stop()
    local_registry.start()

    resumed = run_migrator(plan)
    assert resumed.returncode == 0, resumed.stderr
    assert edit in omnibus.gitlab_rb.read_text()
    config = yaml.safe_load(local_registry.config.read_text())
    assert config["http"]["draintimeout"] == "10s" and "s3" in config["storage"]
    assert_all_pull(client, pushed)


@pytest.mark.parametrize("point", ["restore-written@1", "restore-restarted@1"])
def test_a_run_killed_at_each_step_of_its_restore_is_finished_and_proven_by_the_rerun(local_registry, s3, bucket,
                                                                                     tmp_path, point):
    """Item 1, the resume drill: a failure inside the window starts the restore; SIGKILL right after the original
    config is written (the registry still runs read-only) and right after its restart (it takes writes); a push
    where it can land; the re-run proves the registry's mode by a write probe, finishes, and loses nothing."""
    client = RegistryClient(local_registry.url)
    pushed = push_images(client, 3, seed=23)
    plan = local_registry.write_plan(registry={
        "config": str(local_registry.config), "url": local_registry.url, "restart": local_registry.restart_command,
        "health_timeout_seconds": 30, "binary": str(shadow_failing_once(tmp_path, failing_call=2))})
    killed = run_cli("run", "--yes", plan, env=dict(os.environ, MIGRATOR_FAILPOINT=point))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert StateStore(plan.parent / "plan.state").load().restore_problem, "the restore was not recorded first"
    expected = 405 if point.startswith("restore-written") else 202  # the restart has not run / has run
    assert client.write_probe("probe/between") == expected
    if expected == 405:
        resumed = run_migrator(plan)
        assert resumed.returncode == 0, resumed.stderr
        assert client.write_probe("probe/after") == 202
        assert_bucket_is_the_source(s3, bucket, local_registry.root)
        assert_all_pull(client, pushed)
    else:
        push_between_the_runs_then_resume(client, pushed, plan, local_registry, s3, bucket)
