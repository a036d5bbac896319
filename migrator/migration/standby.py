"""``registry.front`` in the window: a standby (the registry's own binary on the same storage) that answers every
client while the registry restarts, and the operator's nginx steered to it and given back (``migrator.front``).
Clients then see no restart: reads are answered throughout and no request is cut (each reload waits for nginx's
old workers to finish theirs). A standby takes pushes when the registry's config signs upload state with an
``http.secret`` (an upload begun on one process then goes on on the other): on the filesystem while the registry
restarts read-only, on s3 while it restarts onto s3, so pushes are refused only between the two, while the final
delta is copied and proven. Without a secret it is read-only, and pushes are refused from the first steering.

A standby that takes pushes on the filesystem is two processes: one for writes, one for reads (nginx picks by the
method). When clients go back to the read-only registry before the final delta, only the writes standby must be
done: it is stopped gracefully (no new connection, its requests answered), while pulls under way go on on the reads
standby, stopped once the next steering has drained nginx's old workers."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from migrator.errors import InvalidInput
from migrator.front import NginxFront, Server, count_requests
from migrator.managed import ManagedRegistry, run_command
from migrator.net import free_port
from migrator.plan import FrontSettings
from migrator.registry_config import TargetState
from migrator.registry_http import RegistryClient

log = logging.getLogger("migrator")


def registry_address(url: str) -> str:
    """host:port of the registry's own URL (``registry.url``): what the front's ``proxy_pass`` names."""
    parsed = urlparse(url)
    return f"{parsed.hostname}:{parsed.port or (443 if parsed.scheme == 'https' else 80)}"


def standby_takes_pushes(registry: ManagedRegistry) -> bool:
    """Whether a standby beside ``registry`` may take pushes: every process must sign upload state with the same
    ``http.secret`` (without one each makes up its own, and an upload begun on the registry would fail on the
    standby)."""
    http = registry.config.original_running().get("http") or {}
    return bool(isinstance(http, dict) and http.get("secret"))


class Front:
    """The operator's nginx for one run, and the standby it is steered to while the registry restarts."""

    def __init__(self, settings: FrontSettings, registry: ManagedRegistry, url: str, state_dir: Path):
        self.registry = registry
        self.address = registry_address(url)
        self.nginx = NginxFront(settings, self.address, state_dir / "front-backup", run_command)
        self.work_dir = state_dir / "standby"
        self.drain_seconds = settings.drain_timeout_seconds
        self._writes = contextlib.ExitStack()  # the standby that takes writes (all requests when no reads standby)
        self._reads = contextlib.ExitStack()  # the standbys that serve reads, kept until nginx is drained of them
        self._serving: Optional[TargetState] = None  # what the standby nginx is steered to serves

    def check(self, put_back: bool) -> None:
        """Before anything changes: the file proxies to the registry and the registry answers through it.
        ``put_back``: a run killed while nginx was steered has the operator's file put back first (its standby died
        with it; nginx has been asking the registry, its backup, since)."""
        self.nginx.check()
        if not self.registry.binary():
            raise InvalidInput("registry.front needs the registry's own binary on this host for the standby that "
                               "answers while the registry restarts: set registry.binary")
        if put_back:
            self.nginx.restore()
        self.registry.clients_url = self.nginx.url()
        if not self.client().wait_healthy(10):
            raise InvalidInput(f"the registry does not answer GET /v2/ through the front at {self.nginx.url()}; "
                               "check registry.front (nginx, url) and that nginx runs")

    def log_offsets(self) -> dict[str, int]:
        """Where each access log of the registry's server block ends now: a run counts its requests from here."""
        return {str(path): path.stat().st_size for path in self.nginx.access_logs() if path.is_file()}

    def requests_since(self, offsets: dict[str, int]) -> Optional[dict]:
        """Requests nginx answered for the registry since ``offsets`` (None without an access log to read)."""
        counted = [count_requests(Path(path), offset) for path, offset in offsets.items() if Path(path).is_file()]
        if not counted:
            return None
        return {key: sum(counts[key] for counts in counted) for key in counted[0]}

    def client(self) -> RegistryClient:
        """The registry as clients reach it: through nginx."""
        return RegistryClient(self.nginx.url(), ca_bundle=self.registry.bucket.trusted_ca)

    def to_standby(self, target: TargetState) -> None:
        """Start the standby serving ``target`` (read-write when it is; on the filesystem a second one, read-only,
        then serves the reads: the final delta waits for the writes one alone) and send every request to it; the
        registry stays in each upstream as a backup, so nginx asks it should a standby die with migrator. The
        standbys from before are stopped once nginx is drained of them. A standby already serving ``target`` is
        kept."""
        if self._serving == target and self.nginx.is_steered():
            return
        writes, reads = contextlib.ExitStack(), contextlib.ExitStack()
        with contextlib.ExitStack() as started:
            started.enter_context(writes)
            started.enter_context(reads)
            port = self._start(writes, target, writable=not target.readonly)
            servers = [Server(f"127.0.0.1:{port}"), Server(self.address, backup=True)]
            read_servers = None
            if not target.readonly and target.s3 is None:  # on s3 nothing waits for its writes: one process is enough
                reads_port = self._start(reads, dataclasses.replace(target, readonly=True), writable=False)
                read_servers = [Server(f"127.0.0.1:{reads_port}"), Server(self.address, backup=True)]
            self.nginx.steer(servers, read_servers)
            started.pop_all()  # steered: they serve clients now
        self.close()  # nginx's old workers are done with the standbys from before
        self._writes, self._reads, self._serving = writes, reads, target

    def _start(self, stack: contextlib.ExitStack, target: TargetState, writable: bool) -> int:
        """A standby serving ``target`` on a port of its own, stopped with ``stack``; its port."""
        port = free_port()
        stack.enter_context(self.registry.shadow(target, self.work_dir / str(port), port, writable=writable,
                                                 drain_seconds=self.drain_seconds))
        return port

    def give_back(self, wait_for_reads: bool = True) -> None:
        """nginx back on the operator's file, and the standbys stopped once nothing reaches them any more. Without
        ``wait_for_reads``, only the writes standby is waited for (stopped gracefully: it ends once the requests
        it has are answered); the reads standby serves the pulls under way until the next steering or ``close``."""
        self.nginx.restore(drain=wait_for_reads)
        self._writes.close()
        self._serving = None
        if wait_for_reads:
            self.close()

    def close(self) -> None:
        """Every standby stopped (each gracefully: the requests it still has are answered first)."""
        self._writes.close()
        self._reads.close()
        self._serving = None
