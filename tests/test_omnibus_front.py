"""registry.front on GitLab Omnibus: the nginx Omnibus bundles (the fake gitlab-ctl's, a real Debian nginx) steered
through its generated gitlab-registry.conf and ``gitlab-ctl hup nginx``, with the fast path's one reconfigure after
the window.

Oracles: what clients got (skopeo, raw HTTP pulls through nginx), the bytes of gitlab-registry.conf against what the
fake's reconfigure renders, the fake gitlab-ctl's own log of what it was asked, and an access log of nginx's that
names the server which answered each request (set up as an operator would, through gitlab.rb)."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import run_cli

from migrator.errors import InvalidInput
from migrator.plan import load_plan
from migrator.testing.local import LocalRegistry
from migrator.testing.omnibus_fake import NGINX, FakeOmnibus
from tests.clients import large_image
from tests.oci import Layout, pull, push
from tests.test_front import run_under_client_load

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed (scripts/setup.sh installs it)")


def omnibus_behind_nginx(registry: LocalRegistry, tmp_path: Path) -> FakeOmnibus:
    """A fake Omnibus node with its nginx, whose operator added (in gitlab.rb) an access log naming the upstream."""
    omnibus = FakeOmnibus(registry, tmp_path, nginx=True)
    upstream_log = tmp_path / "upstream.log"
    with omnibus.gitlab_rb.open("a") as handle:
        handle.write("nginx['custom_nginx_config'] = \"log_format upstream '$request_method $uri $status "
                     "$upstream_addr';\"\n"
                     f"registry_nginx['custom_gitlab_server_config'] = \"access_log {upstream_log} upstream;\"\n")
    omnibus.reconfigure()
    omnibus.log.write_text("")
    return omnibus


def answered_by(omnibus: FakeOmnibus, tmp_path: Path) -> str:
    """Which server nginx sent a fresh GET /v2/ to (from the operator's upstream log; nginx writes a request's line
    after its answer, so the line is waited for)."""
    log = tmp_path / "upstream.log"
    before = len(log.read_text().splitlines())
    urllib.request.urlopen(omnibus.nginx_url + "/v2/", timeout=10).read()
    deadline = time.monotonic() + 10
    while len(lines := log.read_text().splitlines()) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    return lines[before].split(" ", 3)[3]


def reconfigure_renders_it_so(omnibus: FakeOmnibus) -> bool:
    """Whether a reconfigure now finds gitlab-registry.conf as it renders it (and so leaves nginx alone)."""
    omnibus.reconfigure()
    return omnibus.actions()[-1][1] == "reconfigure rendered gitlab-registry.conf: unchanged"


@pytest.mark.slow
def test_registry_front_on_omnibus_defaults_to_hup_and_refuses_the_reconfigure_path(local_registry, tmp_path):
    omnibus = FakeOmnibus(local_registry, tmp_path)
    front = load_plan(omnibus.write_plan(front={})).registry.front
    assert front is not None and str(front.nginx) == "/var/opt/gitlab/nginx/conf/gitlab-registry.conf"
    assert front.reload == f"{omnibus.ctl} hup nginx"
    with pytest.raises(InvalidInput, match="restarts nginx .cutting requests in flight. while the registry restarts"):
        load_plan(omnibus.write_plan(front={}, restart=f"{omnibus.ctl} reconfigure"))


@pytest.mark.slow
def test_an_omnibus_run_behind_its_nginx_costs_clients_nothing_but_pushes_inside_the_window(local_registry, tmp_path):
    """The whole 'migrator run' on Omnibus' fast path with registry.front naming the generated gitlab-registry.conf:
    readers and writers through Omnibus' nginx all along; every read answered, a 100 MB layer pull under way across
    each restart and none cut, pushes refused only while the final delta is copied (no restart inside); nginx only ever hup'd
    (never restarted by a reconfigure), gitlab-registry.conf what the reconfigure renders, every pushed image pulls
    from s3."""
    omnibus = omnibus_behind_nginx(local_registry, tmp_path)
    try:
        original = omnibus.nginx_site.read_bytes()
        registry = omnibus.nginx_url[7:]
        layout = Layout(tmp_path / "seed")
        layout.image("v1", "app")
        layer = large_image(layout, "big", 100 * 1024 * 1024)
        push(layout, "v1", registry, "team/app:v1")
        push(layout, "big", registry, "team/big:v1")
        plan = omnibus.write_plan(front={"nginx": str(omnibus.nginx_site)})  # reload: gitlab-ctl hup nginx
        report, load = run_under_client_load(omnibus.nginx_url, tmp_path, plan, layout.digest("v1"), layer)
        front = report["front"]  # counted from Omnibus' gitlab_registry_access.log (gitlab_access format)
        assert front["reads"] > 0 and front["pushes"] > 0 and front["reads_failed"] == front["pushes_failed"] == 0, front
        assert front["pushes_refused"] > 0, front
        actions = [action for _, action in omnibus.actions()]
        # the preflight's reload on the operator's file, then a standby around each restart (nginx hup'd to it and
        # back): the restarts are outside the refusals
        assert actions == ["hup nginx", "hup nginx", "restart registry", "hup nginx", "hup nginx", "restart registry",
                           "hup nginx",
                           "reconfigure started",
                           "reconfigure rendered config.yml: unchanged",
                           "reconfigure rendered gitlab-registry.conf: unchanged"], actions
        assert omnibus.nginx_site.read_bytes() == original and reconfigure_renders_it_so(omnibus)
        assert answered_by(omnibus, tmp_path) == f"127.0.0.1:{local_registry.port}"
        assert "s3" in local_registry.config.read_text()
        summary = load.summary()
        assert summary["blob"]["ok"] >= 2 and summary["pull"]["ok"] >= 2 and summary["push"]["ok"] >= 2, summary
        for reference in load.pushed:
            pull(registry, reference, tmp_path / "check")
    finally:
        omnibus.stop_nginx()


@pytest.mark.slow
@pytest.mark.parametrize("point,then", [("front-written@1", "run"), ("front-steered@1", "run"),
                                        ("front-put-back@1", "run"), ("front-steered@1", "reconfigure, run"),
                                        ("front-steered@1", "rollback")])
def test_an_omnibus_run_killed_while_it_changes_nginx_is_finished(local_registry, tmp_path, point, then):
    """SIGKILL at each step that changes Omnibus' nginx; while migrator is dead nginx answers through the registry
    itself (the steered upstream's backup). Then 'run' again, or the operator's 'gitlab-ctl reconfigure' (which renders
    gitlab-registry.conf afresh and restarts nginx) and 'run', or 'rollback': gitlab-registry.conf is what a
    reconfigure renders, nginx sends requests to the registry, and the image pulls through nginx."""
    omnibus = omnibus_behind_nginx(local_registry, tmp_path)
    try:
        original = omnibus.nginx_site.read_bytes()
        registry = omnibus.nginx_url[7:]
        layout = Layout(tmp_path / "seed")
        layout.image("v1", "app")
        push(layout, "v1", registry, "team/app:v1")
        plan = omnibus.write_plan(front={"nginx": str(omnibus.nginx_site)})
        killed = run_cli("run", "--yes", plan, env=dict(os.environ, MIGRATOR_FAILPOINT=point))
        assert killed.returncode == -9, killed.stderr
        pull(registry, "team/app:v1", tmp_path / "while-dead")  # answered while migrator is dead
        status = run_cli("status", plan).stdout
        assert ("file still carries migrator's steering" in status) is (point != "front-put-back@1"), status
        if then.startswith("reconfigure"):  # the operator's way of putting Omnibus' files back
            omnibus.reconfigure()
            assert "restart nginx" in [action for _, action in omnibus.actions()]
            assert omnibus.nginx_site.read_bytes() == original
        finished = run_cli("rollback" if then == "rollback" else "run", "--yes", plan)
        assert finished.returncode == 0, finished.stderr
        assert omnibus.nginx_site.read_bytes() == original and reconfigure_renders_it_so(omnibus)
        assert answered_by(omnibus, tmp_path) == f"127.0.0.1:{local_registry.port}", "nginx still steered"
        assert ("s3" in local_registry.config.read_text()) is (then != "rollback")
        assert pull(registry, "team/app:v1", tmp_path / "after") == layout.digest("v1")
        assert not (plan.parent / "plan.state" / "front-backup" / "nginx-original").exists()
        if then == "rollback":  # a run killed after a rollback is not reported by the rollback's outcome
            killed = run_cli("run", "--yes", plan, env=dict(os.environ, MIGRATOR_FAILPOINT=point))
            assert killed.returncode == -9, killed.stderr
            status = run_cli("status", plan).stdout
            assert "rolled back" not in status and "killed?" in status, status
    finally:
        omnibus.stop_nginx()


@pytest.mark.slow
def test_a_reconfigure_after_the_window_that_restarts_nginx_is_named(local_registry, tmp_path):
    """gitlab.rb changed nginx's settings since the last reconfigure: the fast path's reconfigure after the window
    renders gitlab-registry.conf differently and Omnibus restarts nginx. migrator cannot prevent it (the operator's
    change) but says so; nginx ends on the new rendering, sending requests to the registry on s3."""
    omnibus = omnibus_behind_nginx(local_registry, tmp_path)
    try:
        with omnibus.gitlab_rb.open("a") as handle:
            handle.write("registry_nginx['hsts_max_age'] = 3600\n")  # not reconfigured yet
        plan = omnibus.write_plan(front={"nginx": str(omnibus.nginx_site)})
        result = run_cli("run", "--yes", plan)
        assert result.returncode == 0, result.stderr
        assert "Omnibus restarted nginx, cutting requests in flight" in result.stderr
        assert "restart nginx" in [action for _, action in omnibus.actions()]
        assert b"max-age=3600" in omnibus.nginx_site.read_bytes() and reconfigure_renders_it_so(omnibus)
        assert answered_by(omnibus, tmp_path) == f"127.0.0.1:{local_registry.port}"
    finally:
        omnibus.stop_nginx()
