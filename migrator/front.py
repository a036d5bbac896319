"""The operator's nginx in front of the registry (``registry.front``), steered during a migration and put back
byte for byte afterwards.

Steering rewrites only the ``proxy_pass`` lines that name the registry's address so that they name an upstream of
our own (inserted just before the first ``server`` block that proxies to the registry), then runs the operator's
reload command: nginx's reload is graceful, so old workers finish the requests they have and new requests go to
the new servers. ``reload`` waits for those old workers to exit, after which nothing still reaches a server that is
no longer in the upstream: it can be restarted without cutting anybody's request. Reads (GET, HEAD) may go to
servers of their own (a ``map`` on the method picks the upstream), so that the writes in flight are known to be
done once the write servers are, whatever pulls are still under way.

The original bytes are kept in the state directory before the first change (an intent the next run, or
``rollback``, acts on after a crash), and ``restore`` writes them back and reloads.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import crossplane

from migrator.errors import InvalidInput, RestoreFailed
from migrator.failpoints import failpoint
from migrator.files import atomic_write

log = logging.getLogger("migrator")

UPSTREAM = "migrator_registry"
READS_UPSTREAM = "migrator_registry_reads"
POOL = "$migrator_registry_pool"  # the upstream a request goes to, by its method
MARKER = "# migrator: steered for a migration; 'migrator run' or 'migrator rollback' puts the original back"
WORKER_TITLE = b"nginx: worker process"
CLOSING_TITLE = b"nginx: worker process is shutting down"  # set as an old worker stops accepting connections
RELOAD_TIMEOUT_SECONDS = 30.0
DRAIN_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class FrontSettings:
    """``registry.front``: the nginx file that proxies to the registry, and the command that reloads nginx."""

    nginx: Path
    reload: str
    url: Optional[str] = None  # the registry's URL through nginx, for the probes; default: the server's listen
    drain_timeout_seconds: float = 600.0  # how long old workers may take to finish their requests after a reload


@dataclass(frozen=True)
class Server:
    """One server of the steered upstream: ``backup`` servers get requests only when the others fail to connect."""

    address: str  # host:port
    backup: bool = False

    def line(self) -> str:
        # max_fails=0: a primary that failed once is still tried first on the next request
        return f"    server {self.address} max_fails=0{' backup' if self.backup else ''};"


def _host_port(url: str) -> Optional[tuple[str, int]]:
    match = re.match(r"^https?://([^/:\s]+|\[[^\]]+\])(?::(\d+))?(?:/|$)", url)
    if not match:
        return None
    return match.group(1).strip("[]"), int(match.group(2) or (443 if url.startswith("https") else 80))


LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0", ""}


def same_address(url: str, address: str) -> bool:
    """Whether ``proxy_pass`` URL ``url`` goes to ``address`` (host:port; a loopback host matches any loopback)."""
    target = _host_port(url)
    host, _, port = address.rpartition(":")
    if target is None or not port.isdigit():
        return False
    if target[1] != int(port):
        return False
    return target[0] == host or (target[0] in LOOPBACK and host in LOOPBACK)


def upstreams_of(parsed: list, registry_address: str) -> set[str]:
    """Names of the ``upstream`` blocks in ``parsed`` whose servers are all ``registry_address``."""
    names = set()

    def walk(block: list) -> None:
        for directive in block:
            if directive["directive"] == "upstream" and directive["args"] and "block" in directive:
                servers = [d["args"][0] for d in directive["block"] if d["directive"] == "server" and d["args"]]
                if servers and all(same_address(f"http://{server}", registry_address) for server in servers):
                    names.add(directive["args"][0])
            elif "block" in directive:
                walk(directive["block"])

    walk(parsed)
    return names


def _goes_to(url: str, registry_address: str, upstreams: set[str]) -> bool:
    """Whether ``proxy_pass`` URL ``url`` names the registry: its address, or an upstream of it alone."""
    named = re.match(r"^https?://([^/:;\s]+)(?:/|$)", url)
    return same_address(url, registry_address) or bool(named and named.group(1) in upstreams)


def proxies_to(original: str, registry_address: str, source_name: str) -> list[tuple[int, dict]]:
    """(line, enclosing server block) of each ``proxy_pass`` in ``original`` that goes to ``registry_address``,
    directly or through an ``upstream`` block whose servers are all the registry.

    Raises InvalidInput when there is none (the plan names the wrong file or address)."""
    found: list[tuple[int, dict]] = []
    parsed = _parse_text(original, source_name)
    upstreams = upstreams_of(parsed, registry_address)

    def walk(block: list, server: Optional[dict]) -> None:
        for directive in block:
            if directive["directive"] == "server" and "block" in directive:
                walk(directive["block"], directive)
            elif directive["directive"] == "proxy_pass" and directive["args"] and \
                    _goes_to(directive["args"][0], registry_address, upstreams):
                if server is None:
                    raise InvalidInput(f"{source_name}: the proxy_pass on line {directive['line']} is outside a server "
                                       "block; registry.front.nginx must name the file with the registry's server block")
                found.append((directive["line"], server))
            elif "block" in directive:
                walk(directive["block"], server)

    walk(parsed, None)
    if not found:
        raise InvalidInput(f"{source_name} has no proxy_pass to the registry at {registry_address} (its address, or "
                           "an upstream block in the same file whose servers are all that address); set "
                           "registry.front.nginx to the nginx file whose proxy_pass sends requests to the registry")
    return found


def access_logs(server: dict) -> list[Path]:
    """The files the server block logs its requests to (``access_log`` at its level or in its locations)."""
    found = []

    def walk(block: list) -> None:
        for directive in block:
            if directive["directive"] == "access_log" and directive["args"] and directive["args"][0] != "off" \
                    and not directive["args"][0].startswith("syslog:"):
                found.append(Path(directive["args"][0]))
            elif "block" in directive:
                walk(directive["block"])

    walk(server["block"])
    return list(dict.fromkeys(found))


# a request line in nginx's combined format and those like it (GitLab's gitlab_access): "METHOD URI HTTP/1.1" STATUS
_REQUEST = re.compile(rb'"([A-Z]+) (\S+)[^"]*" (\d{3}) ')
WRITES = (b"POST", b"PUT", b"PATCH", b"DELETE")


def count_requests(path: Path, offset: int) -> dict:
    """What clients asked of the registry through nginx from ``offset`` of its access log on: reads (GET, HEAD)
    and pushes (POST, PUT, PATCH, DELETE), and of those the ones refused read-only (405) and failed (5xx, or
    499: the client gave up on an answer)."""
    counts = {"reads": 0, "reads_failed": 0, "pushes": 0, "pushes_refused": 0, "pushes_failed": 0}
    with open(path, "rb") as handle:
        handle.seek(offset)
        for line in handle:
            match = _REQUEST.search(line)
            if match is None or not match.group(2).startswith(b"/v2/"):
                continue
            status = int(match.group(3))
            failed = status >= 500 or status == 499
            if match.group(1) in WRITES:
                counts["pushes"] += 1
                counts["pushes_refused"] += status == 405
                counts["pushes_failed"] += failed
            else:
                counts["reads"] += 1
                counts["reads_failed"] += failed
    return counts


def listen_url(server: dict, source_name: str) -> str:
    """The plain-http URL the server block listens on, on this host (its first ``listen``)."""
    listen = next((d["args"] for d in server["block"] if d["directive"] == "listen" and d["args"]), None)
    if listen is None or "ssl" in listen or listen[0].startswith("unix:"):
        raise InvalidInput(f"{source_name}: the registry's server block listens {'with TLS' if listen else 'nowhere'}"
                           "; set registry.front.url to the registry's URL through nginx (https://host:port)")
    host, _, port = listen[0].rpartition(":")
    host = host.strip("[]")
    return f"http://{'127.0.0.1' if host in ('', '*', '0.0.0.0', '::') else host}:{port or listen[0]}"


_PROXY_URL = re.compile(r"(https?://)(\[[^\]]+\]|[^/;\s]+)(\S*)")


def _uri_part(proxy_line: str) -> str:
    """The URI after the host in a ``proxy_pass`` line ('' for ``proxy_pass http://127.0.0.1:5000;``)."""
    match = _PROXY_URL.search(proxy_line)
    return match.group(3).rstrip(";") if match else ""


def steered_text(original: str, registry_address: str, servers: list[Server], source_name: str,
                 read_servers: Optional[list[Server]] = None) -> str:
    """``original`` with its ``proxy_pass`` lines to ``registry_address`` sent to our upstream of ``servers``; with
    ``read_servers``, GET and HEAD go to an upstream of those instead. A ``proxy_pass`` with a URI part keeps one
    upstream for all (nginx would take a URI given through a variable as the whole request URI)."""
    found = proxies_to(original, registry_address, source_name)
    lines = original.splitlines(keepends=True)
    proxies = [line for line, _ in found]
    split = bool(read_servers) and not any(_uri_part(lines[number - 1]) for number in proxies)
    target = POOL if split else UPSTREAM
    for number in proxies:
        lines[number - 1] = _PROXY_URL.sub(lambda m: f"{m.group(1)}{target}{m.group(3)}", lines[number - 1], count=1)
    block = [MARKER]
    if split:
        block += [f"map $request_method {POOL} {{", f"    GET {READS_UPSTREAM};", f"    HEAD {READS_UPSTREAM};",
                  f"    default {UPSTREAM};", "}", f"upstream {READS_UPSTREAM} {{",
                  *(server.line() for server in read_servers or ()), "}"]
    block += [f"upstream {UPSTREAM} {{", *(server.line() for server in servers), "}"]
    first_server = min(server["line"] for _, server in found) - 1
    indent = lines[first_server][:len(lines[first_server]) - len(lines[first_server].lstrip(" \t"))]
    lines[first_server:first_server] = [f"{indent}{line}\n" for line in block]
    return "".join(lines)


def _parse_text(text: str, source_name: str) -> list:
    """crossplane's parse of ``text`` (it reads files: a private temporary copy)."""
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as handle:
        handle.write(text)
    try:
        payload = crossplane.parse(handle.name, single=True, check_ctx=False, check_args=False, comments=False)
    finally:
        os.unlink(handle.name)
    errors = payload["errors"] or [e for c in payload["config"] for e in c["errors"]]
    if errors:
        raise InvalidInput(f"{source_name} is not a file nginx can read: {errors[0]['error']}")
    return payload["config"][0]["parsed"]


class NginxFront:
    """The operator's nginx file, its kept original, and the reload that makes nginx use either."""

    def __init__(self, settings: FrontSettings, registry_address: str, backup_dir: Path,
                 run: Callable[[str], Optional[str]]):
        self.settings = settings
        self.registry_address = registry_address
        self.backup = backup_dir / "nginx-original"
        self.run = run  # runs a shell command: None on success, else what went wrong
        # when the last reload's new workers took every new connection: they were seen and every old worker of
        # their master had stopped accepting (time.time()); before that an old worker may still take a request
        self.reloaded_at: Optional[float] = None

    def check(self) -> None:
        """Before anything changes: the file is readable and proxies to the registry (InvalidInput otherwise)."""
        try:
            text = self.settings.nginx.read_text()
        except OSError as exc:
            raise InvalidInput(f"registry.front.nginx {self.settings.nginx} cannot be read ({exc.strerror})") from None
        steered_text(self.original_text() if MARKER in text else text, self.registry_address, [Server("127.0.0.1:1")],
                     str(self.settings.nginx))

    def url(self) -> str:
        """The registry's URL through nginx: ``registry.front.url``, else where its server block listens."""
        if self.settings.url:
            return self.settings.url.rstrip("/")
        _, server = proxies_to(self.original_text(), self.registry_address, str(self.settings.nginx))[0]
        return listen_url(server, str(self.settings.nginx))

    def access_logs(self) -> list[Path]:
        """The access logs of the server blocks that proxy to the registry."""
        found = proxies_to(self.original_text(), self.registry_address, str(self.settings.nginx))
        return list(dict.fromkeys(log for _, server in found for log in access_logs(server)))

    def original_text(self) -> str:
        return self.original().decode()

    def original(self) -> bytes:
        """The operator's bytes: the kept copy while one exists (the live file may be ours), else the live file."""
        if self.backup.exists():
            return self.backup.read_bytes()
        return self.settings.nginx.read_bytes()

    def is_steered(self) -> bool:
        return MARKER.encode() in self.settings.nginx.read_bytes()

    def keep_original(self) -> None:
        """Keep the operator's bytes before the first change (fsync'd: the intent a crashed run is restored from).
        A live file without our marker is the operator's, edits included: it replaces an older copy."""
        live = self.settings.nginx.read_bytes()
        if MARKER.encode() in live:
            if not self.backup.exists():
                raise InvalidInput(f"{self.settings.nginx} carries migrator's steering but its original is not in "
                                   f"{self.backup.parent}; put the operator's file back by hand")
            return
        atomic_write(self.backup, live)

    def steer(self, servers: list[Server], read_servers: Optional[list[Server]] = None) -> None:
        """Send the registry's requests to ``servers`` (reads to ``read_servers`` when given), reload, and wait for
        the old workers to finish theirs."""
        self.keep_original()
        text = steered_text(self.original_text(), self.registry_address, servers, str(self.settings.nginx),
                            read_servers)
        atomic_write(self.settings.nginx, text)
        failpoint("front-written")
        problem = self.reload()
        if problem is not None:
            self.restore()
            raise InvalidInput(f"nginx did not take the steered {self.settings.nginx} ({problem}); the original was "
                               "put back. Check registry.front.reload")
        failpoint("front-steered")
        named = ", ".join(f"{s.address}{' (backup)' if s.backup else ''}" for s in servers)
        reads = f"; reads to {', '.join(s.address for s in read_servers if not s.backup)}" if read_servers else ""
        log.info("front: %s now sends the registry's requests to %s%s", self.settings.nginx, named, reads)

    def restore(self, drain: bool = True) -> None:
        """The operator's bytes back (when a copy was kept), nginx reloaded and drained (``drain``: else only
        reloaded: old workers may still finish requests on our servers); the copy removed after.
        nginx is reloaded even when the file already holds them: a run killed between the write and the reload
        left nginx serving the steered file. A live file without our marker is the operator's and is kept as it
        is: it was rendered again since (GitLab Omnibus' ``gitlab-ctl reconfigure`` while a killed run left it
        steered), and the kept copy may be older than what the operator's settings render now."""
        if not self.backup.exists():
            return
        original = self.backup.read_bytes()
        live = self.settings.nginx.read_bytes()
        if MARKER.encode() in live:
            atomic_write(self.settings.nginx, original)
            failpoint("front-put-back")
        elif live != original:
            log.info("front: %s was written again since it was steered (a gitlab-ctl reconfigure?); kept as it is",
                     self.settings.nginx)
            original = live
        problem = self.reload(drain)
        if problem is not None:
            raise RestoreFailed(f"the original {self.settings.nginx} was written back, but nginx did not reload "
                                f"({problem}); reload nginx by hand, then run 'migrator rollback PLAN'")
        log.info("front: %s is the operator's again (sha256 %s)", self.settings.nginx,
                 hashlib.sha256(original).hexdigest()[:12])
        self.backup.unlink()

    def reload(self, drain: bool = True) -> Optional[str]:
        """Run the reload command and wait until nginx serves the file as it is now: a master started new workers
        and (``drain``) every worker it had before has finished its requests and exited. None on success, else the
        problem."""
        before = nginx_workers()
        self.reloaded_at = None
        problem = self.run(self.settings.reload)
        if problem is not None:
            return problem
        started = time.monotonic()
        while True:
            now = nginx_workers()
            reloaded = {worker.master for pid, worker in now.items() if pid not in before}
            old = [worker for pid, worker in now.items() if pid in before and worker.master in reloaded]
            waited = time.monotonic() - started
            if reloaded and self.reloaded_at is None and all(worker.closing for worker in old):
                self.reloaded_at = time.time()  # new requests go to the new file's servers from here
            if self.reloaded_at is not None and (not old or not drain):
                return None
            if not reloaded and waited > RELOAD_TIMEOUT_SECONDS:
                return (f"no nginx master started new workers within {RELOAD_TIMEOUT_SECONDS:.0f}s of "
                        f"{self.settings.reload!r} (see nginx's error log)")
            if waited > self.settings.drain_timeout_seconds:
                log.warning("front: %d nginx workers still finish requests from before the reload after %.0fs "
                            "(registry.front.drain_timeout_seconds); going on", len(old), waited)
                return None
            time.sleep(DRAIN_POLL_SECONDS)


class Worker(NamedTuple):
    """An nginx worker process: its master's pid, and whether it has stopped accepting connections (a reload or a
    graceful stop told it to finish its requests and exit)."""

    master: int
    closing: bool


def nginx_workers() -> dict[int, Worker]:
    """nginx worker processes on this host (their process title says so), by pid."""
    workers = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                title = handle.read()
            if not title.startswith(WORKER_TITLE):
                continue
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                master = int(handle.read().rsplit(b")", 1)[1].split()[1])
            workers[int(entry.name)] = Worker(master, title.startswith(CLOSING_TITLE))
        except (OSError, IndexError, ValueError):
            continue
    return workers
