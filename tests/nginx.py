"""A throw-away nginx on loopback for the tests: a main config of its own that includes the operator-like site file
the test writes, started as a daemon and stopped afterwards. Its access log records, for each request, the method,
the status nginx answered and the upstream that served it."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from migrator.net import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
LOG_FORMAT = "'$request_method $uri $status $upstream_addr $upstream_status $body_bytes_sent $request_time'"


class Nginx:
    def __init__(self, directory: Path, site: str):
        self.directory = directory
        self.port = free_port()
        self.site = directory / "registry.conf"
        self.main = directory / "nginx.conf"
        self.access_log = directory / "access.log"
        directory.mkdir(parents=True, exist_ok=True)
        self.site.write_text(site.replace("{port}", str(self.port)).replace("{dir}", str(directory)))
        self.main.write_text(f"""daemon on;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{}}
http {{
  log_format probe {LOG_FORMAT};
  access_log {self.access_log} probe;
  client_body_temp_path {directory}/body;
  proxy_temp_path {directory}/proxy;
  include {self.site};
}}
""")
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def reload_command(self) -> str:
        return f"{NGINX} -c {self.main} -p {self.directory} -s reload"

    def start(self) -> Nginx:
        subprocess.run([NGINX, "-c", str(self.main), "-p", str(self.directory)], check=True, capture_output=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url, timeout=1)
                return self
            except urllib.error.HTTPError:
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen on {self.url}: {(self.directory / 'error.log').read_text()[-500:]}")

    def stop(self) -> None:
        pid_file = self.directory / "nginx.pid"
        if pid_file.exists():
            subprocess.run(["kill", "-QUIT", pid_file.read_text().strip()], capture_output=True)
            deadline = time.monotonic() + 10
            while pid_file.exists() and time.monotonic() < deadline:
                time.sleep(0.05)

    def requests(self) -> list[list[str]]:
        """The access log, one split line a request."""
        return [line.split() for line in self.access_log.read_text().splitlines()] if self.access_log.exists() else []
