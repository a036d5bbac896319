"""Local parts for the demo, the tests and the benchmarks: a docker-registry and a moto S3 server on loopback.

``python -m migrator.testing.local restart --config C --pidfile P`` is the restart command a plan uses for a
registry started here: stop the running one, start a new one detached, wait until it listens.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

from migrator.managed import registry_environment
from migrator.net import free_port

REGISTRY_BINARY = "/usr/bin/docker-registry"


def _wait_http(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            time.sleep(0.1)
    return False


def _stop_pid(pidfile: Path, timeout: float = 15) -> None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running and not a zombie (a zombie's parent may be another process that has not reaped it yet)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def start_registry(config: Path, pidfile: Path, logfile: Path, url: str, timeout: float = 30) -> int:
    """Start docker-registry detached (it outlives the caller); returns its pid once it answers."""
    with open(logfile, "ab") as log:
        process = subprocess.Popen([REGISTRY_BINARY, "serve", str(config)], stdout=log, stderr=log,
                                   stdin=subprocess.DEVNULL, env=registry_environment(), start_new_session=True)
    pidfile.write_text(f"{process.pid}\n")
    if not _wait_http(url + "/v2/", timeout):
        raise RuntimeError(f"docker-registry did not answer at {url} within {timeout}s; see {logfile}")
    return process.pid


def stop_registry(pidfile: Path) -> None:
    _stop_pid(pidfile)


class MotoServer:
    """``moto_server`` on a free loopback port."""

    def __init__(self, port: Optional[int] = None, logfile: Optional[Path] = None, command: Optional[list] = None):
        self.command = command  # another way to start it (a wrapper); default: moto_server
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.logfile = logfile
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> MotoServer:
        out = open(self.logfile, "ab") if self.logfile else subprocess.DEVNULL
        executable = Path(sys.executable).with_name("moto_server")
        command = self.command or ([str(executable)] if executable.exists() else [sys.executable, "-m", "moto.server"])
        self.process = subprocess.Popen(command + ["-H", "127.0.0.1", "-p", str(self.port)], stdout=out, stderr=out,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        if not _wait_http(self.endpoint + "/moto-api/", 30):
            self.stop()
            raise RuntimeError(f"moto_server did not start on port {self.port}")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


class DaskProcesses:
    """A Dask cluster on loopback as an operator starts one: ``dask scheduler`` and ``dask worker`` processes (no
    nanny: a killed worker stays dead). ``wrap`` prefixes a worker's command (e.g. to give it another view of the
    filesystem)."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler: Optional[subprocess.Popen] = None
        self.workers: dict[str, subprocess.Popen] = {}

    def _spawn(self, name: str, command: list) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "ab")
        from migrator.cluster import DASK_CONFIG

        env = {**os.environ, **{"DASK_" + key.upper().replace(".", "__").replace("-", "_"): str(value)
                                for key, value in DASK_CONFIG.items()}}
        return subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                                env=env)

    def start(self, workers: int = 2) -> DaskProcesses:
        dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
        self.scheduler = self._spawn("scheduler", [*dask, "--host", "127.0.0.1", "--port", str(self.port),
                                                   "--no-dashboard"])
        for index in range(workers):
            self.add_worker(f"worker-{index + 1}")
        return self

    def add_worker(self, name: str, wrap: Optional[list] = None, timeout: float = 60, threads: int = 4) -> None:
        command = [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--name", name, "--no-nanny",
                   "--nthreads", str(threads), "--no-dashboard", "--local-directory", str(self.workdir / name)]
        self.workers[name] = self._spawn(name, (wrap or []) + command)
        from distributed import Client

        with Client(self.address, timeout=timeout) as client:
            deadline = time.monotonic() + timeout
            while name not in {w.get("name") for w in client.scheduler_info()["workers"].values()}:
                if time.monotonic() > deadline or self.workers[name].poll() is not None:
                    raise RuntimeError(f"dask worker {name} did not join; see {self.workdir / name}.log")
                time.sleep(0.2)

    def kill(self, name: str) -> None:
        """SIGKILL one worker (as a host lost mid-task would be)."""
        os.killpg(self.workers[name].pid, signal.SIGKILL)
        self.workers[name].wait()

    def stop(self) -> None:
        for process in [*self.workers.values(), self.scheduler]:
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m migrator.testing.local")
    parser.add_argument("action", choices=["start", "stop", "restart"])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--pidfile", type=Path, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--log", type=Path, default=None)
    args = parser.parse_args(argv)
    logfile = args.log or args.pidfile.with_suffix(".log")
    if args.action in ("stop", "restart"):
        stop_registry(args.pidfile)
    if args.action in ("start", "restart"):
        start_registry(args.config, args.pidfile, logfile, args.url)
    return 0


if __name__ == "__main__":
    sys.exit(main())


REGISTRY_CONFIG = """\
# docker-registry on loopback, started by migrator.testing.local
version: 0.1
log:
  level: warn
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  secret: local-drill-secret
  headers:
    X-Content-Type-Options: [nosniff]
"""


class LocalRegistry:
    """A docker-registry on the filesystem under ``workdir`` with a plan that migrates it to ``bucket``."""

    def __init__(self, workdir: Path, s3_endpoint: str, bucket: str, prefix: str = "", root: Optional[Path] = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root = Path(root) if root else self.workdir / "registry-root"
        (self.root / "docker/registry/v2").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = self.workdir / "config.yml"
        self.pidfile = self.workdir / "registry.pid"
        self.logfile = self.workdir / "registry.log"
        self.s3_endpoint = s3_endpoint
        self.bucket = bucket
        self.prefix = prefix
        self.config.write_text(REGISTRY_CONFIG.format(root=self.root, port=self.port))

    @property
    def restart_command(self) -> str:
        return (f"{sys.executable} -m migrator.testing.local restart --config {self.config} --pidfile {self.pidfile} "
                f"--url {self.url} --log {self.logfile}")

    def start(self) -> LocalRegistry:
        start_registry(self.config, self.pidfile, self.logfile, self.url)
        return self

    def stop(self) -> None:
        stop_registry(self.pidfile)

    def write_plan(self, name: str = "plan.yml", **sections: Any) -> Path:
        """A plan for this registry; ``sections`` override top-level keys (e.g. sync={...})."""
        import yaml

        plan = {
            "source": str(self.root),
            "bucket": {"name": self.bucket, "prefix": self.prefix, "region": "us-east-1", "endpoint": self.s3_endpoint},
            "registry": {"config": str(self.config), "restart": self.restart_command, "url": self.url,
                         "health_timeout_seconds": 30},
            "sync": {"workers": 8, "shard_workers": 4},
        }
        plan.update(sections)
        path = self.workdir / name
        path.write_text(yaml.safe_dump(plan, sort_keys=False))
        return path
