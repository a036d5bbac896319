"""``registry.front`` in the window: a standby (the registry's own binary on the same storage) that answers every
client while the registry restarts, and the operator's nginx steered to it and given back (``migrator.front``).
Clients then see no restart: reads are answered throughout and no request is cut (each reload waits for nginx's
old workers to finish theirs). A standby takes pushes when the registry's config signs upload state with an
``http.secret`` (an upload begun on one process then goes on on the other): on the filesystem while the registry
restarts read-only, on s3 while it restarts onto s3, so pushes are refused only between the two, while the final
delta is copied and proven. Without a secret it is read-only, and pushes are refused from the first steering."""

from __future__ import annotations

import contextlib
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
        self._standby = contextlib.ExitStack()
        self._serving: Optional[TargetState] = None  # what the running standby serves

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

    def standby_takes_writes(self) -> bool:
        return standby_takes_pushes(self.registry)

    def to_standby(self, target: TargetState) -> None:
        """Start the standby serving ``target`` (read-write when it is) and send every request to it; the registry
        stays in the upstream as a backup, so nginx asks it should the standby die with migrator. A standby
        already serving ``target`` is kept."""
        if self._serving == target and self.nginx.is_steered():
            return
        port = free_port()
        self._standby.close()
        self._serving = None
        self._standby.enter_context(self.registry.shadow(target, self.work_dir, port, writable=not target.readonly))
        self._serving = target
        self.nginx.steer([Server(f"127.0.0.1:{port}"), Server(self.address, backup=True)])

    def give_back(self) -> None:
        """nginx back on the operator's file (drained: nothing reaches the standby any more), the standby stopped."""
        self.nginx.restore()
        self.close()

    def close(self) -> None:
        self._standby.close()
        self._serving = None
