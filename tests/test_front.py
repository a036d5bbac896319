"""registry.front: the operator's nginx steered to servers of ours and put back byte for byte, against a real nginx.

The oracles are nginx's own access log (which server answered each request, with what status) and the bytes of the
operator's file, compared with what the test wrote."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import run_cli

from migrator import front as front_module
from migrator.errors import InvalidInput
from migrator.front import MARKER, FrontSettings, NginxFront, Server, Worker, same_address, steered_text
from migrator.managed import run_command
from migrator.net import free_port
from migrator.testing.local import LocalRegistry
from tests.clients import ClientLoad, large_image
from tests.nginx import Nginx
from tests.oci import Layout, pull, push

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
                                reason="nginx is not installed (scripts/setup.sh installs it)")

# as omnibus-gitlab renders gitlab-registry.conf (comments and blank lines included)
OMNIBUS_SITE = """# This file is managed by gitlab-ctl. Manual changes will be
# erased! To change the contents below, edit /etc/gitlab/gitlab.rb
# and run `sudo gitlab-ctl reconfigure`.

## Lines starting with two hashes (##) are comments with information.
server { ## HTTPS server
  listen 127.0.0.1:{port};

  server_name localhost;
  server_tokens off; ## Don't show the nginx version number, a security best practice

  client_max_body_size 0;
  chunked_transfer_encoding on;

  access_log  {dir}/gitlab_registry_access.log;
  access_log  {dir}/access.log probe;

  location / {

    proxy_set_header Host $http_host;
    proxy_read_timeout                  900;
    proxy_cache off;
    proxy_buffering off;
    proxy_request_buffering off;
    proxy_http_version 1.1;

    proxy_pass          http://{registry};
  }

} ## end HTTPS server
"""


class Backend:
    """A registry stand-in that names itself in every answer; /slow streams for a while."""

    def __init__(self, name: str):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/slow":
                    self.send_response(200)
                    self.send_header("Content-Length", str(20 * 1024))
                    self.end_headers()
                    for _ in range(20):
                        self.wfile.write(b"x" * 1024)
                        self.wfile.flush()
                        time.sleep(0.1)
                    return
                self.answer()

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.answer()

            def do_HEAD(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.name)))
                self.end_headers()

            def answer(self) -> None:
                body = outer.name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.name = name
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Backend:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backends():
    started = [Backend("registry").start(), Backend("standby").start()]
    yield started
    for backend in started:
        backend.stop()


@pytest.fixture
def nginx(tmp_path, backends):
    server = Nginx(tmp_path / "nginx", OMNIBUS_SITE.replace("{registry}", backends[0].address)).start()
    yield server
    server.stop()


def answer(url: str, method: str = "GET") -> str:
    request = urllib.request.Request(url, data=b"push" if method == "POST" else None, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def front(nginx: Nginx, registry: Backend, state: Path) -> NginxFront:
    return NginxFront(FrontSettings(nginx.site, nginx.reload_command, drain_timeout_seconds=30), registry.address,
                      state, run_command)


def test_steered_text_changes_only_the_proxy_line_and_adds_an_upstream():
    original = OMNIBUS_SITE.replace("{registry}", "127.0.0.1:5000").replace("{port}", "8080")
    steered = steered_text(original, "localhost:5000", [Server("127.0.0.1:6000"), Server("127.0.0.1:6001", backup=True)],
                           "gitlab-registry.conf")
    added = [line for line in steered.splitlines() if line not in original.splitlines()]
    removed = [line for line in original.splitlines() if line not in steered.splitlines()]
    assert removed == ["    proxy_pass          http://127.0.0.1:5000;"]
    assert added == [MARKER, "upstream migrator_registry {", "    server 127.0.0.1:6000 max_fails=0;",
                     "    server 127.0.0.1:6001 max_fails=0 backup;", "}", "    proxy_pass          http://migrator_registry;"]
    assert steered.index("upstream migrator_registry") < steered.index("server { ## HTTPS server")


def test_a_file_without_the_registry_address_is_named():
    original = OMNIBUS_SITE.replace("{registry}", "127.0.0.1:5000").replace("{port}", "8080")
    with pytest.raises(InvalidInput, match="no proxy_pass to the registry at 127.0.0.1:5001"):
        steered_text(original, "127.0.0.1:5001", [Server("127.0.0.1:6000")], "gitlab-registry.conf")


def test_a_reload_takes_new_connections_only_once_every_old_worker_has_stopped_accepting(tmp_path, monkeypatch):
    """nginx starts the new workers before it tells the old ones to finish: until each old worker is titled 'is
    shutting down' it may still accept a client's connection and answer it from the old file (a push begun on the
    new servers then continued on the old)."""
    tables = iter([
        {1: Worker(10, closing=False)},  # before the reload
        {1: Worker(10, closing=False), 2: Worker(10, closing=False)},  # new worker up, the old one still accepts
        {1: Worker(10, closing=True), 2: Worker(10, closing=False)},  # the old one finishes a pull, accepts nothing
    ])
    seen_at = []

    def workers() -> dict:
        seen_at.append(time.time())
        return next(tables)
    monkeypatch.setattr(front_module, "nginx_workers", workers)
    monkeypatch.setattr(front_module, "DRAIN_POLL_SECONDS", 0.01)
    steering = NginxFront(FrontSettings(tmp_path / "site.conf", "true"), "127.0.0.1:5000", tmp_path, run_command)
    assert steering.reload(drain=False) is None
    assert steering.reloaded_at is not None and steering.reloaded_at >= seen_at[2]


@pytest.mark.parametrize("url,address,same", [
    ("http://127.0.0.1:5000", "127.0.0.1:5000", True), ("http://localhost:5000/", ":5000", True),
    ("http://127.0.0.1:5000", "127.0.0.1:5001", False), ("http://registry.internal:5000", "127.0.0.1:5000", False),
    ("http://$backend", "127.0.0.1:5000", False)])
def test_same_address(url, address, same):
    assert same_address(url, address) is same


@pytest.mark.slow
def test_steer_and_restore_through_a_real_nginx(nginx, backends, tmp_path):
    registry, standby = backends
    original = nginx.site.read_bytes()
    steering = front(nginx, registry, tmp_path / "state")
    assert answer(nginx.url) == "registry"
    steering.steer([Server(standby.address)])
    assert steering.is_steered()
    assert {answer(nginx.url), answer(nginx.url, "POST")} == {"standby"}
    steering.restore()
    assert nginx.site.read_bytes() == original
    assert hashlib.sha256(nginx.site.read_bytes()).digest() == hashlib.sha256(original).digest()
    assert answer(nginx.url) == "registry"
    assert not (tmp_path / "state" / "nginx-original").exists()


@pytest.mark.slow
def test_a_backup_server_answers_while_the_primary_is_down(nginx, backends, tmp_path):
    registry, standby = backends
    steering = front(nginx, registry, tmp_path / "state")
    steering.steer([Server(registry.address), Server(standby.address, backup=True)])
    assert answer(nginx.url) == "registry"
    registry.stop()  # the port closes, as during a restart: connects fail and nginx asks the backup
    assert [answer(nginx.url), answer(nginx.url, "POST")] == ["standby", "standby"]
    steering.restore()


@pytest.mark.slow
def test_requests_in_flight_finish_across_the_steering_and_it_waits_for_them(nginx, backends, tmp_path):
    registry, standby = backends
    steering = front(nginx, registry, tmp_path / "state")
    received = []
    reader = threading.Thread(target=lambda: received.append(len(urllib.request.urlopen(nginx.url + "/slow").read())))
    reader.start()
    time.sleep(0.3)  # the slow answer is under way from the registry
    steering.steer([Server(standby.address)])  # returns once the old worker has finished it
    assert received == [20 * 1024]
    reader.join()
    served = [line for line in nginx.requests() if line[1] == "/slow"]
    assert served[0][2] == "200" and served[0][3] == registry.address
    steering.restore()


@pytest.mark.slow
def test_reads_and_writes_go_to_servers_of_their_own_and_a_uri_keeps_one_upstream(nginx, backends, tmp_path):
    registry, standby = backends
    reads = Backend("reads").start()
    try:
        steering = front(nginx, registry, tmp_path / "state")
        steering.steer([Server(standby.address)], [Server(reads.address)])
        assert [answer(nginx.url), answer(nginx.url, "HEAD"), answer(nginx.url, "POST")] == ["reads", "", "standby"]
        assert nginx.requests()[-2][3] == reads.address  # the HEAD too
        steering.restore()
        assert answer(nginx.url) == "registry"
    finally:
        reads.stop()
    with_uri = OMNIBUS_SITE.replace("http://{registry};", "http://127.0.0.1:5000/;")
    steered = steered_text(with_uri, "127.0.0.1:5000", [Server("127.0.0.1:6000")], "site", [Server("127.0.0.1:6001")])
    assert "map $request_method" not in steered and "proxy_pass          http://migrator_registry/;" in steered


@pytest.mark.slow
def test_a_restore_without_drain_leaves_the_pulls_under_way_to_finish_on_their_server(nginx, backends, tmp_path):
    """The window's step 3: clients back on the registry at once; a pull under way on the reads standby is not
    waited for, and still gets every byte."""
    registry, standby = backends
    reads = Backend("reads").start()
    try:
        steering = front(nginx, registry, tmp_path / "state")
        steering.steer([Server(standby.address)], [Server(reads.address)])
        received: list[int] = []
        reader = threading.Thread(target=lambda: received.append(len(urllib.request.urlopen(nginx.url + "/slow").read())))
        reader.start()
        time.sleep(0.3)  # the slow answer (2 s) is under way from the reads standby
        steering.restore(drain=False)
        assert received == []  # returned while the pull goes on
        reader.join()
        assert received == [20 * 1024]
        assert [line[3] for line in nginx.requests() if line[1] == "/slow"] == [reads.address]
    finally:
        reads.stop()


@pytest.mark.slow
def test_a_proxy_pass_through_an_upstream_of_the_registry_is_steered_and_put_back(backends, tmp_path):
    """A trial's file had 'upstream registry_backend { server <registry>; }' and was refused; an upstream that also
    names another server is not the registry alone and still is."""
    registry, standby = backends
    site = OMNIBUS_SITE.replace("http://{registry};", "http://registry_backend;").replace(
        "server {", f"upstream registry_backend {{\n  server {registry.address} max_fails=3;\n  keepalive 8;\n}}\n\nserver {{", 1)
    proxy = Nginx(tmp_path / "nginx", site).start()
    try:
        original = proxy.site.read_bytes()
        steering = front(proxy, registry, tmp_path / "state")
        assert answer(proxy.url) == "registry"
        steering.steer([Server(standby.address)])
        assert answer(proxy.url) == "standby"
        steering.restore()
        assert proxy.site.read_bytes() == original and answer(proxy.url) == "registry"
    finally:
        proxy.stop()
    shared = site.replace("max_fails=3;", "max_fails=3;\n  server 10.0.0.9:5000;")
    with pytest.raises(InvalidInput, match="no proxy_pass to the registry at .* an upstream block"):
        steered_text(shared, registry.address, [Server("127.0.0.1:6000")], "registry.conf")


@pytest.mark.slow
def test_a_file_written_again_while_steered_is_the_operators_and_kept(nginx, backends, tmp_path):
    """A file without migrator's marker while steered was written since by someone else (Omnibus' reconfigure renders
    it afresh, say after a changed setting): putting the front back keeps it rather than the older copy, reloads."""
    registry, standby = backends
    steering = front(nginx, registry, tmp_path / "state")
    steering.steer([Server(standby.address)])
    rendered_again = (OMNIBUS_SITE.replace("{registry}", registry.address).replace("{port}", str(nginx.port))
                      .replace("{dir}", str(nginx.directory))
                      .replace("server_tokens off;", "server_tokens off;\n  client_body_timeout 30s;"))
    nginx.site.write_text(rendered_again)
    steering.restore()
    assert nginx.site.read_text() == rendered_again
    assert answer(nginx.url) == "registry"
    assert not (tmp_path / "state" / "nginx-original").exists()


@pytest.mark.slow
def test_a_steering_nginx_refuses_puts_the_original_back(nginx, backends, tmp_path):
    registry, _ = backends
    original = nginx.site.read_bytes()
    with pytest.raises(InvalidInput, match="did not take the steered .*host not found in upstream"):
        front(nginx, registry, tmp_path / "state").steer([Server("no-such-host.invalid:1")])
    assert nginx.site.read_bytes() == original
    assert answer(nginx.url) == "registry"


@pytest.mark.slow
def test_a_crash_while_steered_is_restored_from_the_kept_original(nginx, backends, tmp_path):
    """A run killed while nginx is steered: the next run's (or rollback's) NginxFront finds the marker and the kept
    original, and puts the operator's bytes back; an operator edit made before the run is kept, not reverted."""
    registry, standby = backends
    nginx.site.write_text(nginx.site.read_text().replace("server_tokens off;", "server_tokens off;  # edited"))
    edited = nginx.site.read_bytes()
    front(nginx, registry, tmp_path / "state").steer([Server(standby.address)])
    after_crash = front(nginx, registry, tmp_path / "state")  # a new process: nothing in memory
    after_crash.check()
    assert after_crash.is_steered()
    after_crash.restore()
    assert nginx.site.read_bytes() == edited
    assert answer(nginx.url) == "registry"


@pytest.mark.slow
def test_a_primary_restart_behind_the_steered_front_costs_clients_nothing(tmp_path):
    """The choreography the window uses: a read-only standby on the same storage takes every request, the primary
    restarts with nobody's request on it, the front goes back. Real docker-registry, nginx and skopeo: no read fails,
    no slow layer pull is cut, and pushes are refused (405) only while the front is steered."""
    primary = LocalRegistry(tmp_path / "primary", "http://127.0.0.1:1", "unused").start()
    standby_port = free_port()
    standby_config = tmp_path / "standby.yml"
    standby_config.write_text(primary.config.read_text().replace(f"127.0.0.1:{primary.port}", f"127.0.0.1:{standby_port}")
                              .replace("storage:\n", "storage:\n  maintenance:\n    readonly:\n      enabled: true\n", 1))
    standby = LocalRegistry(tmp_path / "standby", "http://127.0.0.1:1", "unused", root=primary.root)
    standby.config, standby.port, standby.url = standby_config, standby_port, f"http://127.0.0.1:{standby_port}"
    site = OMNIBUS_SITE.replace("{registry}", f"127.0.0.1:{primary.port}")
    proxy = Nginx(tmp_path / "nginx", site).start()
    try:
        layout = Layout(tmp_path / "seed")
        layout.image("v1", "app")
        layer = large_image(layout, "big", 100 * 1024 * 1024)
        push(layout, "v1", proxy.url[7:], "team/app:v1")
        push(layout, "big", proxy.url[7:], "team/big:v1")
        standby.start()
        steering = NginxFront(FrontSettings(proxy.site, proxy.reload_command), f"127.0.0.1:{primary.port}",
                              tmp_path / "state", run_command)
        with ClientLoad(proxy.url, tmp_path / "load", [("team/app:v1", layout.digest("v1"))],
                        ("team/big", *layer)) as load:
            time.sleep(3)
            steered_at = time.time()
            steering.steer([Server(f"127.0.0.1:{standby_port}")])
            time.sleep(2)
            assert run_command(primary.restart_command) is None
            steering.restore()
            restored_at = time.time()
            time.sleep(4)
        failures = load.failures(refused_from=steered_at, refused_until=restored_at)
        assert not failures, [dataclasses.astuple(f) for f in failures]
        summary = load.summary()
        assert summary["blob"]["ok"] >= 2 and summary["pull"]["ok"] >= 4 and summary["push"]["ok"] >= 2, summary
        assert proxy.site.read_bytes() == site.replace("{port}", str(proxy.port)).replace("{dir}", str(proxy.directory)).encode()
        for reference in load.pushed:
            pull(proxy.url[7:], reference, tmp_path / "check")
    finally:
        proxy.stop()
        standby.stop()
        primary.stop()


def run_under_client_load(url: str, tmp_path: Path, plan: Path, app_digest: str, layer: tuple,
                          standby_takes_writes: bool = True) -> tuple[dict, ClientLoad]:
    """``migrator run`` while readers (team/app:v1, the large ``layer`` of team/big) and writers go through the front
    at ``url``; it ends 0, no client failed outside the window's refusals, no read went unanswered, and a large pull
    was under way across each restart. With ``standby_takes_writes`` (the registry has an http.secret) no restart
    falls inside the refusals; without, both do (the standby is read-only). The run's report.json and the load."""
    with ClientLoad(url, tmp_path / "load", [("team/app:v1", app_digest)], ("team/big", *layer)) as load:
        time.sleep(2)
        result = run_cli("run", "--yes", plan)
        time.sleep(3)  # pushes land on s3 too
    assert result.returncode == 0, result.stderr
    report = json.loads((plan.parent / "plan.state" / "report.json").read_text())
    # without http.secret each process signs upload state with a secret of its own: a push begun on one side of a
    # reload and continued on the other is answered 'blob upload invalid' (even by a read-only registry, which checks
    # the state before the method): a refusal all the same, inside the window only
    # and a push begun on the standby on s3 as the window ends, whose next request an old nginx worker still sends to
    # the read-only registry, is answered 'blob upload unknown' there (its upload is in the bucket): refused too
    also = ("blob upload unknown",) + (() if standby_takes_writes else ("blob upload invalid",))
    failures = load.failures(report["pushes_refused_from"], report["readonly_off_at"], also)
    assert not failures, [dataclasses.astuple(f) for f in failures]
    assert report["reads_refused_seconds"] == 0
    assert_a_large_pull_across_each_restart(load, report)
    refused = (report["pushes_refused_from"], report["readonly_off_at"])
    inside = [r for r in report["restarts"] if r["started_at"] < refused[1] and r["started_at"] + r["seconds"] > refused[0]]
    assert len(inside) == (0 if standby_takes_writes else 2), (refused, inside)
    if standby_takes_writes:
        assert_the_final_delta_waited_for_no_pull(load, report)
    return report, load


def assert_the_final_delta_waited_for_no_pull(load: ClientLoad, report: dict) -> None:
    """Clients went back to the read-only registry when pushes started being refused; a large-layer pull under way
    then (on the reads standby) was still going when the final delta began: it waited for the writes standby's
    requests only. Waiting for nginx's old workers would have added the longest pull in flight to the refusals."""
    back_at = report["pushes_refused_from"]
    final_sync = [phase["started_at"] for phase in report["phases"] if phase["name"] == "final_sync"][-1]
    pulls = [o for o in load.operations if o.kind == "blob" and o.ok]
    assert any(o.started < back_at and o.ended > final_sync for o in pulls), (
        back_at, final_sync, [(o.started, o.ended) for o in pulls if o.ended > back_at - 10])


def assert_a_large_pull_across_each_restart(load: ClientLoad, report: dict) -> None:
    """Every restart of the run (from report.json) had a pull of the 100 MB layer under way from before it began to
    after it ended, and that pull got every byte."""
    restarts = [(restart["started_at"], restart["started_at"] + restart["seconds"]) for restart in report["restarts"]]
    assert restarts
    uncovered = load.moments_without_a_pull_across(restarts)
    assert not uncovered, (uncovered, [dataclasses.astuple(o) for o in load.operations if o.kind == "blob"])


def front_of(registry: LocalRegistry, tmp_path: Path) -> Nginx:
    """A started nginx whose Omnibus-like site proxies to ``registry``."""
    return Nginx(tmp_path / "nginx", OMNIBUS_SITE.replace("{registry}", f"127.0.0.1:{registry.port}")).start()


def plan_behind(registry: LocalRegistry, proxy: Nginx) -> Path:
    """The registry's plan with ``proxy`` as its registry.front."""
    return registry.write_plan(registry={
        "config": str(registry.config), "restart": registry.restart_command, "url": registry.url,
        "health_timeout_seconds": 30, "front": {"nginx": str(proxy.site), "reload": proxy.reload_command}})


@pytest.mark.slow
@pytest.mark.parametrize("secret", [True, False], ids=["http-secret", "no-http-secret"])
def test_a_run_behind_the_front_costs_clients_nothing_but_pushes_inside_the_window(local_registry, tmp_path, secret):
    """The whole 'migrator run' with registry.front, readers and writers going through nginx all along: every read
    answered, no transfer cut, pushes refused only while the final delta is copied and proven (no restart inside:
    the standby takes them meanwhile; read from report.json), the operator's nginx file byte-identical afterwards,
    and every image pushed during the run pulls from s3. Without http.secret (an upload begun on one process would
    fail on the other) the standby is read-only: pushes are refused across the restarts too, nothing else fails."""
    if not secret:
        local_registry.config.write_text(local_registry.config.read_text().replace("  secret: local-drill-secret\n", ""))
        assert run_command(local_registry.restart_command) is None
    proxy = front_of(local_registry, tmp_path)
    try:
        original = proxy.site.read_bytes()
        layout = Layout(tmp_path / "seed")
        layout.image("v1", "app")
        layer = large_image(layout, "big", 100 * 1024 * 1024)
        push(layout, "v1", proxy.url[7:], "team/app:v1")
        push(layout, "big", proxy.url[7:], "team/big:v1")
        plan = plan_behind(local_registry, proxy)
        report, load = run_under_client_load(proxy.url, tmp_path, plan, layout.digest("v1"), layer, secret)
        front = report["front"]  # counted from nginx's own log of the registry's server block
        assert front["reads"] > 0 and front["pushes"] > 0 and front["reads_failed"] == front["pushes_failed"] == 0, front
        assert proxy.site.read_bytes() == original
        assert "s3" in local_registry.config.read_text()
        summary = load.summary()
        assert summary["blob"]["ok"] >= 2 and summary["pull"]["ok"] >= 2 and summary["push"]["ok"] >= 2, summary
        for reference in load.pushed:
            pull(proxy.url[7:], reference, tmp_path / "check")
    finally:
        proxy.stop()


@pytest.mark.slow
@pytest.mark.parametrize("point", ["front-written@1", "front-steered@1", "front-put-back@1"])
def test_a_run_killed_while_it_changes_the_front_is_finished_by_the_next(local_registry, tmp_path, point):
    """SIGKILL at each step that changes nginx: while migrator is dead, nginx still answers through the registry
    itself (the upstream's backup: the standby died with migrator); the next run puts the operator's file back
    first and finishes; the file is byte-identical and every image pulls through nginx from s3."""
    proxy = front_of(local_registry, tmp_path)
    try:
        original = proxy.site.read_bytes()
        layout = Layout(tmp_path / "seed")
        layout.image("v1", "app")
        push(layout, "v1", proxy.url[7:], "team/app:v1")
        plan = plan_behind(local_registry, proxy)
        killed = run_cli("run", "--yes", plan, env=dict(os.environ, MIGRATOR_FAILPOINT=point))
        assert killed.returncode == -9, killed.stderr
        pull(proxy.url[7:], "team/app:v1", tmp_path / "while-dead")  # answered while migrator is dead
        finished = run_cli("run", "--yes", plan)
        assert finished.returncode == 0, finished.stderr
        assert proxy.site.read_bytes() == original
        urllib.request.urlopen(proxy.url + "/v2/", timeout=10).read()
        assert proxy.requests()[-1][3] == f"127.0.0.1:{local_registry.port}", "nginx still serves the steered file"
        assert "s3" in local_registry.config.read_text()
        assert pull(proxy.url[7:], "team/app:v1", tmp_path / "after") == layout.digest("v1")
    finally:
        proxy.stop()
