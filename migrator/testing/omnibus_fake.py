"""A GitLab Omnibus node on local parts, for the tests and the benchmark: gitlab.rb, a stand-in for Omnibus'
``gitlab-ctl`` (``python -m migrator.testing.omnibus_fake ARGS``, behind a wrapper script), and a local docker-registry
running with the config.yml that stand-in renders. The stand-in is faithful where migrator depends on it:

- ``reconfigure``: a Chef run of ``FAKE_RECONFIGURE_SECONDS`` (default 0), then config.yml rendered from gitlab.rb
  as Omnibus' ``registry-config.yml.erb`` does: ``storage: <registry['storage'].to_json>`` (default: filesystem at
  ``FAKE_DEFAULT_ROOT``, plus the ``delete`` key Omnibus adds from ``storage_delete_enabled``) and, when
  ``registry['database']`` is set, ``database: <to_json>``; every other line from the template. The registry is
  restarted only if the rendered file changed (Chef's ``notifies :restart``).
- ``restart registry``: the registry restart alone (runit), seconds.
- the nginx Omnibus bundles in front of the registry (``FakeOmnibus(..., nginx=True)``): ``reconfigure`` also renders
  ``/var/opt/gitlab/nginx/conf/gitlab-registry.conf`` (under the fake's root) as omnibus-gitlab's
  ``nginx-gitlab-registry.conf.erb`` renders it for a plain-http ``registry_external_url`` (``proxy_pass
  http://<registry['registry_http_addr']>``, ``proxy_request_buffering off``, no upstream block,
  ``registry_nginx['custom_gitlab_server_config']`` at the end of the server block) and a main nginx.conf of the
  fake's own (``log_format gitlab_access``, ``nginx['custom_nginx_config']``, the registry's file included). A file
  that differs from its rendering is rewritten and nginx restarted (Chef's ``notifies :restart``: runit's TERM, a
  fast shutdown that cuts requests in flight); nginx not running is started (Debian's ``/usr/sbin/nginx``, daemonised
  from the fake's config on loopback, no service).
- ``hup nginx``: SIGHUP to nginx's master, a graceful reload (old workers finish their requests); ``stop nginx``.

Settings come from the environment (a wrapper script exports them): FAKE_GITLAB_RB, FAKE_TEMPLATE (config.yml with
a ``storage: {{storage}}`` line and a ``{{database}}`` line), FAKE_RENDERED, FAKE_RESTART (the shell command that
restarts the registry), FAKE_DEFAULT_ROOT, FAKE_GITLAB_CTL_LOG (one line per action, with the time); with nginx,
FAKE_ROOT (where ``/var/opt/gitlab`` and ``/var/log/gitlab`` are) and FAKE_REGISTRY_HTTP_ADDR (the default of
``registry['registry_http_addr']``).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from migrator.net import free_port
from migrator.testing.local import LocalRegistry

GITLAB_RB = """external_url 'https://gitlab.example.com'
# operator's comment: keep me
registry_external_url 'https://registry.example.com'
registry['enable'] = true
"""


def ruby_literal(ruby: str) -> Any:
    """A Ruby literal of gitlab.rb (hash, array, string, number, true/false/nil) as Python data."""
    python = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnil\b", "None", ruby)))
    return ast.literal_eval(python.replace("=>", ":"))


def assignment(text: str, key: str) -> Any:
    """The last ``registry['<key>'] = {...}`` in gitlab.rb, as Python data (None when absent)."""
    matches = list(re.finditer(rf"^registry\['{key}'\]\s*=\s*(\{{[^\n]*\}}|\{{.*?^\}})\s*$", text, re.S | re.M))
    if not matches:
        return None
    return ruby_literal(matches[-1].group(1))


def setting(text: str, section: str, key: str, default: Any = None) -> Any:
    """The last one-line ``<section>['<key>'] = <literal>`` in gitlab.rb (``default`` when absent)."""
    matches = re.findall(rf"^{section}\['{key}'\]\s*=\s*(.+?)\s*$", text, re.M)
    return ruby_literal(matches[-1]) if matches else default


def to_json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def render() -> str:
    gitlab_rb = open(os.environ["FAKE_GITLAB_RB"]).read()
    storage = assignment(gitlab_rb, "storage") or {"filesystem": {"rootdirectory": os.environ["FAKE_DEFAULT_ROOT"]}}
    storage.setdefault("delete", {"enabled": True})
    database = assignment(gitlab_rb, "database")
    lines = []
    for line in open(os.environ["FAKE_TEMPLATE"]).read().splitlines(True):
        if line.strip() == "storage: {{storage}}":
            lines.append(f"storage: {to_json(storage)}\n")
        elif line.strip() == "{{database}}":
            if database is not None:
                lines.append(f"database: {to_json(database)}\n")
        else:
            lines.append(line)
    return "".join(lines)


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

# nginx-gitlab-registry.conf.erb as Chef's Erubis renders it (lines holding only <% %> removed) for plain http,
# without Let's Encrypt, real-IP settings or client certificates
REGISTRY_SITE = """# This file is managed by gitlab-ctl. Manual changes will be
# erased! To change the contents below, edit /etc/gitlab/gitlab.rb
# and run `sudo gitlab-ctl reconfigure`.

## Lines starting with two hashes (##) are comments with information.
## Lines starting with one hash (#) are configuration parameters that can be uncommented.
##
###################################
##         configuration         ##
###################################


server { ## HTTPS server
{listen}
  server_name {fqdn};
  server_tokens off; ## Don't show the nginx version number, a security best practice

  client_max_body_size 0;
  chunked_transfer_encoding on;


  ## Real IP Module Config
  ## http://nginx.org/en/docs/http/ngx_http_realip_module.html

  ## HSTS Config
  ## https://www.nginx.com/blog/http-strict-transport-security-hsts-and-nginx/
  add_header Strict-Transport-Security "max-age={hsts_max_age}";

  access_log  {log_directory}/gitlab_registry_access.log gitlab_access;
  error_log   {log_directory}/gitlab_registry_error.log error;

  location / {

{proxy_set_headers}
    proxy_read_timeout                  900;
    proxy_cache off;
    proxy_buffering off;
    proxy_request_buffering off;
    proxy_http_version 1.1;

    proxy_pass          http://{registry_http_addr};
  }

  {custom_gitlab_server_config}
} ## end HTTPS server
"""

# the fake's own main config (Omnibus' nginx.conf runs in the foreground under runit; this one daemonises)
NGINX_MAIN = """daemon on;
worker_processes 1;
pid {nginx_dir}/nginx.pid;
error_log {log_directory}/error.log info;
events {}
http {
  log_format gitlab_access '$remote_addr - $remote_user [$time_local] "$request_method $request_uri $server_protocol" '
                           '$status $body_bytes_sent "$http_referer" "$http_user_agent" $gzip_ratio';
  client_body_temp_path {nginx_dir}/client_body_temp;
  proxy_temp_path {nginx_dir}/proxy_temp;
  {custom_nginx_config}
  include {nginx_dir}/conf/gitlab-registry.conf;
}
"""


def fill(template: str, **values: object) -> str:
    """``template`` with each ``{name}`` replaced (nginx's own braces left alone)."""
    return re.sub(r"\{(\w+)\}", lambda match: str(values[match.group(1)]), template)


def nginx_paths(root: Path) -> tuple[Path, Path]:
    """nginx's directory (``/var/opt/gitlab/nginx``) and its log directory (``/var/log/gitlab/nginx``) under ``root``."""
    return root / "var/opt/gitlab/nginx", root / "var/log/gitlab/nginx"


def render_registry_site(gitlab_rb: str, root: Path, registry_http_addr: str) -> str:
    """gitlab-registry.conf as omnibus-gitlab renders it from gitlab.rb (plain http)."""
    external = re.search(r"^registry_external_url\s+['\"]([^'\"]+)['\"]", gitlab_rb, re.M)
    url = re.match(r"^(https?)://([^/:]+)(?::(\d+))?", external.group(1) if external else "http://localhost")
    assert url is not None and url.group(1) == "http", "the fake renders gitlab-registry.conf for plain http only"
    port = setting(gitlab_rb, "registry_nginx", "listen_port", int(url.group(3) or 80))
    addresses = setting(gitlab_rb, "registry_nginx", "listen_addresses", ["*", "[::]"])
    headers = {"Host": "$http_host", "X-Real-IP": "$remote_addr", "X-Forwarded-For": "$proxy_add_x_forwarded_for",
               "X-Forwarded-Proto": "http"}
    return fill(
        REGISTRY_SITE,
        listen="".join(f"  listen {address}:{port};\n" for address in addresses), fqdn=url.group(2),
        hsts_max_age=setting(gitlab_rb, "registry_nginx", "hsts_max_age", 63072000),
        log_directory=nginx_paths(root)[1],
        proxy_set_headers="".join(f"    proxy_set_header {name} {value};\n" for name, value in headers.items()),
        registry_http_addr=setting(gitlab_rb, "registry", "registry_http_addr", registry_http_addr),
        custom_gitlab_server_config=setting(gitlab_rb, "registry_nginx", "custom_gitlab_server_config", ""))


def render_nginx_main(gitlab_rb: str, root: Path) -> str:
    nginx_dir, log_directory = nginx_paths(root)
    return fill(NGINX_MAIN, nginx_dir=nginx_dir, log_directory=log_directory,
                             custom_nginx_config=setting(gitlab_rb, "nginx", "custom_nginx_config", ""))


def nginx_master(root: Path) -> Optional[int]:
    """The pid of the fake's running nginx master, if any."""
    try:
        pid = int((nginx_paths(root)[0] / "nginx.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def start_nginx(root: Path) -> int:
    nginx_dir = nginx_paths(root)[0]
    log("start nginx")
    return subprocess.call([NGINX, "-c", str(nginx_dir / "conf/nginx.conf"), "-p", str(nginx_dir)])


def stop_nginx(root: Path) -> int:
    """runit's ``sv stop``: TERM (nginx's fast shutdown), then wait for the master to go."""
    pid = nginx_master(root)
    log("stop nginx")
    if pid is None:
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while nginx_master(root) == pid and time.monotonic() < deadline:
        time.sleep(0.05)
    return 0


def hup_nginx(root: Path) -> int:
    """``gitlab-ctl hup nginx`` (runit's ``sv hup``): nginx reloads its files gracefully."""
    pid = nginx_master(root)
    log("hup nginx")
    if pid is None:
        print("fail: nginx: runsv not running", file=sys.stderr)
        return 1
    os.kill(pid, signal.SIGHUP)
    return 0


def reconfigure_nginx(root: Path) -> int:
    """Render nginx's files; a changed one restarts a running nginx (Chef's ``notifies :restart``)."""
    gitlab_rb = open(os.environ["FAKE_GITLAB_RB"]).read()
    conf = nginx_paths(root)[0] / "conf"
    changed = []
    for path, text in ((conf / "gitlab-registry.conf", render_registry_site(gitlab_rb, root,
                                                                            os.environ["FAKE_REGISTRY_HTTP_ADDR"])),
                       (conf / "nginx.conf", render_nginx_main(gitlab_rb, root))):
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(path.name)
    log(f"reconfigure rendered gitlab-registry.conf: {'changed' if 'gitlab-registry.conf' in changed else 'unchanged'}")
    if nginx_master(root) is None:
        return start_nginx(root)
    if changed:
        log("restart nginx")
        stop_nginx(root)
        return start_nginx(root)
    return 0


def log(message: str) -> None:
    with open(os.environ["FAKE_GITLAB_CTL_LOG"], "a") as handle:
        handle.write(f"{time.time():.3f} {message}\n")


def restart_registry() -> int:
    log("restart registry")
    return subprocess.call(os.environ["FAKE_RESTART"], shell=True)


def main(argv: list[str]) -> int:
    if argv == ["restart", "registry"]:
        return restart_registry()
    nginx_root = Path(os.environ["FAKE_ROOT"]) if os.environ.get("FAKE_ROOT") else None
    if nginx_root is not None and argv in (["hup", "nginx"], ["stop", "nginx"]):
        return (hup_nginx if argv[0] == "hup" else stop_nginx)(nginx_root)
    if argv != ["reconfigure"]:
        print(f"fake gitlab-ctl: unsupported {' '.join(argv)}", file=sys.stderr)
        return 2
    log("reconfigure started")
    time.sleep(float(os.environ.get("FAKE_RECONFIGURE_SECONDS", "0")))
    rendered = os.environ["FAKE_RENDERED"]
    text = render()
    try:
        changed = open(rendered).read() != text
    except FileNotFoundError:
        changed = True
    if changed:
        with open(rendered, "w") as handle:
            handle.write(text)
    log(f"reconfigure rendered config.yml: {'changed' if changed else 'unchanged'}")
    failed = restart_registry() if changed else 0
    return failed or (reconfigure_nginx(nginx_root) if nginx_root is not None else 0)


class FakeOmnibus:
    """gitlab.rb + fake gitlab-ctl around a LocalRegistry whose config.yml the fake renders; with ``nginx``, the
    nginx Omnibus bundles in front of it too (``nginx_url``), listening on a loopback port of its own."""

    def __init__(self, registry: LocalRegistry, workdir: Path, reconfigure_seconds: float = 0,
                 restart: str | None = None, nginx: bool = False):
        self.registry = registry
        self.workdir = workdir
        self.gitlab_rb = workdir / "gitlab.rb"
        self.gitlab_rb.write_text(GITLAB_RB)
        self.root: Optional[Path] = None  # with nginx: where /var/opt/gitlab and /var/log/gitlab are
        if nginx:
            self.root = workdir / "root"
            nginx_dir, log_directory = nginx_paths(self.root)
            (nginx_dir / "conf").mkdir(parents=True)
            log_directory.mkdir(parents=True)
            self.nginx_site = nginx_dir / "conf/gitlab-registry.conf"
            self.nginx_access_log = log_directory / "gitlab_registry_access.log"
            self.nginx_port = free_port()
            self.nginx_url = f"http://127.0.0.1:{self.nginx_port}"
            self.gitlab_rb.write_text(GITLAB_RB.replace("'https://registry.example.com'",
                                                        f"'http://registry.example.com:{self.nginx_port}'")
                                      + "registry_nginx['listen_addresses'] = ['127.0.0.1']\n")
        self.template = workdir / "registry-config.yml.erb"
        text = registry.config.read_text()
        storage = re.search(r"^storage:\n(?:[ #].*\n|\n)*", text, re.M)
        assert storage is not None, f"{registry.config} has no storage section"
        self.template.write_text(text[:storage.start()] + "storage: {{storage}}\n" + text[storage.end():]
                                 + "{{database}}\n")
        self.log = workdir / "gitlab-ctl.log"
        self.ctl = workdir / "gitlab-ctl"
        settings = {"FAKE_GITLAB_RB": self.gitlab_rb, "FAKE_TEMPLATE": self.template, "FAKE_RENDERED": registry.config,
                    "FAKE_RESTART": restart or registry.restart_command, "FAKE_DEFAULT_ROOT": registry.root,
                    "FAKE_GITLAB_CTL_LOG": self.log}
        if self.root is not None:
            settings.update(FAKE_ROOT=self.root, FAKE_REGISTRY_HTTP_ADDR=f"127.0.0.1:{registry.port}")
        exports = "".join(f"export {name}={shlex.quote(str(value))}\n" for name, value in settings.items())
        self.ctl.write_text(f"#!/bin/sh\n{exports}export FAKE_RECONFIGURE_SECONDS=${{FAKE_RECONFIGURE_SECONDS:-"
                            f"{reconfigure_seconds}}}\nexec {sys.executable} -m migrator.testing.omnibus_fake \"$@\"\n")
        self.ctl.chmod(0o755)
        self.reconfigure()  # the node as installed: config.yml rendered by Omnibus from gitlab.rb
        self.log.write_text("")

    def reconfigure(self) -> None:
        subprocess.run([str(self.ctl), "reconfigure"], check=True, env=dict(os.environ, FAKE_RECONFIGURE_SECONDS="0"))

    def stop_nginx(self) -> None:
        if self.root is not None:
            subprocess.run([str(self.ctl), "stop", "nginx"], check=True)

    def actions(self) -> list[tuple[float, str]]:
        """(time, action) of every gitlab-ctl call since set-up."""
        return [(float(line.split(" ", 1)[0]), line.split(" ", 1)[1]) for line in self.log.read_text().splitlines()]

    def write_plan(self, **registry: Any) -> Path:
        settings = {"config": str(self.gitlab_rb), "gitlab_ctl": str(self.ctl), "url": self.registry.url,
                    "rendered_config": str(self.registry.config), "health_timeout_seconds": 30,
                    "binary": "/usr/bin/docker-registry"}
        return self.registry.write_plan(registry=dict(settings, **registry))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
