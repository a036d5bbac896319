"""The registry under management: its configuration, how a change takes effect, and what its API answers.

``ManagedRegistry`` is the one interface the pipeline uses, with three implementations:

- ``DistributionRegistry``: Docker Distribution's YAML config and the plan's ``restart`` command;
- ``OmnibusRegistry`` (the fast path): gitlab.rb's managed block *and* the config.yml Omnibus would render from it,
  then ``gitlab-ctl restart registry`` (seconds); one ``gitlab-ctl reconfigure`` after the read-only window proves
  Omnibus keeps what was written;
- ``OmnibusReconfigureRegistry`` (the slow path, when a plan names ``restart:``): gitlab.rb only, and that command
  (``gitlab-ctl reconfigure``) renders and restarts, inside the window.

Every restart is watched from outside: ``GET /v2/`` every 50 ms, so the report says how long reads got no answer.
The registry's own binary also serves a configuration read-only on a loopback port (``shadow``), which lets the
pipeline ask the registry on s3 before the production registry is restarted onto it, and runs ``garbage-collect``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import yaml

from migrator.errors import InvalidInput
from migrator.failpoints import failpoint
from migrator.plan import BucketSettings, RegistrySettings
from migrator.registry_config import (
    OmnibusConfig,
    RegistryConfig,
    TargetState,
    YamlConfig,
    redact,
    unified_diff,
)
from migrator.registry_http import RegistryClient

COMMAND_TIMEOUT_SECONDS = 900  # a reconfigure may run registry database migrations
SAMPLE_INTERVAL_SECONDS = 0.05
OMNIBUS_BINARY = "/opt/gitlab/embedded/bin/registry"
DATABASE_HEADER = "gitlab-container-registry-database-enabled"
PR_SET_PDEATHSIG = 1


@dataclass
class Restart:
    """One restart (or reconfigure) as clients saw it; spans are wall-clock [start, end] seconds."""

    command: str
    started_at: float
    seconds: float = 0.0
    unanswered: list = field(default_factory=list)  # spans when GET /v2/ got no 200/401 answer
    problem: Optional[str] = None

    @property
    def unanswered_seconds(self) -> float:
        return sum(end - start for start, end in self.unanswered)

    def to_json(self, in_window: bool) -> dict:
        record = asdict(self)
        record.pop("problem")
        record.update(seconds=round(self.seconds, 3), in_window=in_window,
                      unanswered=[[round(start, 3), round(end, 3)] for start, end in self.unanswered],
                      unanswered_seconds=round(self.unanswered_seconds, 3))
        return record


class AnswerSampler:
    """While a command runs: ``GET /v2/`` every 50 ms on a thread, and the spans without an answer (what a pull
    started then would have met)."""

    def __init__(self, url: str):
        self.client = RegistryClient(url, timeout=1.0)
        self.spans: list[list[float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="answer-sampler", daemon=True)

    def __enter__(self) -> AnswerSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        refused_since: Optional[float] = None
        while True:
            stopping = self._stop.is_set()
            moment = time.time()
            answered = self.client.health() in (200, 401)
            if not answered and refused_since is None:
                refused_since = moment
            elif answered and refused_since is not None:
                self.spans.append([refused_since, moment])
                refused_since = None
            if stopping:
                break
            self._stop.wait(SAMPLE_INTERVAL_SECONDS)
        if refused_since is not None:
            self.spans.append([refused_since, time.time()])


def run_command(command: str, timeout: float = COMMAND_TIMEOUT_SECONDS) -> Optional[str]:
    """Run a shell command; None when it exits 0, else what went wrong (secrets redacted). Without AWS_CA_BUNDLE
    (``registry_environment``): a command that starts the registry itself passes its environment on, and the
    registry's s3 driver panics with it, at the cut-over."""
    try:
        completed = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=timeout,
                                   stdin=subprocess.DEVNULL, env=registry_environment())
    except subprocess.TimeoutExpired:
        return f"command {command!r} did not finish in {timeout:.0f}s"
    if completed.returncode != 0:
        return (f"command {command!r} failed with exit code {completed.returncode}: "
                f"{redact((completed.stderr or completed.stdout).strip())[-500:]}")
    return None


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when migrator dies, so a kill -9 never leaves a second registry serving."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def registry_environment() -> dict:
    """The registry's S3 driver panics at start while AWS_CA_BUNDLE is set."""
    return {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}


class ManagedRegistry:
    """One registry under management: config files, restart strategy, probes (see the module docstring)."""

    name = ""
    reconfigures_after_window = False

    def __init__(self, settings: RegistrySettings, bucket: BucketSettings, key_prefix: str, backup_dir: Path):
        self.settings = settings
        self.bucket = bucket
        self.key_prefix = key_prefix
        self.client = RegistryClient(settings.url, ca_bundle=bucket.trusted_ca)
        self.config = self.open_config(backup_dir)
        self.clients_url = settings.url  # where clients reach it (a front's URL): restarts are sampled there

    def open_config(self, backup_dir: Path) -> RegistryConfig:
        raise NotImplementedError

    @property
    def restart_command(self) -> str:
        raise NotImplementedError

    @property
    def default_binary(self) -> str:
        raise NotImplementedError

    def binary(self) -> Optional[str]:
        """The registry executable (``registry.binary``), when this host has it."""
        return shutil.which(self.settings.binary or self.default_binary)

    def executable(self) -> str:
        """``binary()``, or InvalidInput naming ``registry.binary`` when this host does not have it."""
        binary = self.binary()
        if binary is None:
            raise InvalidInput(f"the registry executable {self.settings.binary or self.default_binary!r} is not on "
                               "this host; set registry.binary to the registry's binary")
        return binary

    def restart_from_plan(self) -> str:
        """``registry.restart``: the plan requires it everywhere but on Omnibus' fast path."""
        if not self.settings.restart:
            raise InvalidInput("registry.restart is not set; name the shell command that restarts the registry")
        return self.settings.restart

    # --- configuration ----------------------------------------------------------------------

    def target(self, on_s3: bool, readonly: bool, uses_database: bool = False) -> TargetState:
        """The configuration to run with: the original (filesystem), or on the bucket with the plan's settings."""
        if not on_s3:
            return TargetState(s3=None, readonly=readonly)
        return TargetState(s3=self.s3_settings(), readonly=readonly, redirect=self.settings.redirect or None,
                           driver=self.bucket.driver, database=self.database_setting(uses_database))

    def database_setting(self, uses_database: bool) -> Optional[dict]:
        """What to write for GitLab's metadata database with the s3 driver (None: leave it alone)."""
        return None

    def s3_settings(self) -> dict:
        """The s3 driver section the registry will run with."""
        settings = {"region": self.bucket.region, "bucket": self.bucket.name}
        if self.bucket.endpoint:
            settings["regionendpoint"] = self.bucket.endpoint
        settings["rootdirectory"] = "/" + self.key_prefix.rstrip("/")
        settings.update(self.settings.storage)
        if self.settings.write_credentials:
            settings["accesskey"] = os.environ["AWS_ACCESS_KEY_ID"]
            settings["secretkey"] = os.environ["AWS_SECRET_ACCESS_KEY"]
        return settings

    def take_backup(self) -> None:
        self.config.take_backup()

    def write(self, target: TargetState) -> None:
        """Write the files that make ``target`` take effect at the next restart (atomic, idempotent)."""
        self.config.write(self.config.render(target))

    def write_original(self) -> None:
        """The original files back, byte for byte."""
        self.config.write(self.config.original_text())

    def files(self, target: Optional[TargetState]) -> list[tuple[Path, str, str]]:
        """(path, original text, text for ``target``; None: as the file is now) of each file this registry writes."""
        config = self.config
        return [(config.path, config.original_text(), config.current_text() if target is None else config.render(target))]

    def diff(self, target: Optional[TargetState] = None) -> str:
        """The unified diff of every file ``target`` changes (None: as they are now), secrets redacted."""
        return "".join(unified_diff(redact(before), redact(after), path.name) for path, before, after in self.files(target))

    # --- restarts ---------------------------------------------------------------------------

    def apply(self, target: TargetState) -> Restart:
        """Write, restart, wait for health and check the effective config; ``problem`` says what failed."""
        self.write(target)
        failpoint("config-written")
        restart = self.restart()
        failpoint("restarted")
        if restart.problem is None:
            restart.problem = self.config.check_applied(target)
        return restart

    def restore(self) -> Restart:
        """The original config back in place and restarted."""
        self.write_original()
        failpoint("restore-written")
        restart = self.restart()
        failpoint("restore-restarted")
        return restart

    def restart(self) -> Restart:
        """The restart command, watched: how long it took and how long reads got no answer."""
        return self.watched(self.restart_command)

    def watched(self, command: str) -> Restart:
        """Run ``command``, sampling the registry's answers until it is healthy again."""
        restart = Restart(command=command, started_at=time.time())
        started = time.monotonic()
        with AnswerSampler(self.clients_url) as sampler:
            restart.problem = run_command(command)
            if restart.problem is None and not self.client.wait_healthy(self.settings.health_timeout_seconds):
                restart.problem = (f"the registry did not become healthy within "
                                   f"{self.settings.health_timeout_seconds:.0f}s after {command!r} "
                                   f"(GET {self.settings.url}/v2/)")
        restart.seconds = time.monotonic() - started
        restart.unanswered = sampler.spans
        return restart

    def after_window(self, target: TargetState) -> Optional[Restart]:
        """What follows the window once the registry is proven read-write on s3 (Omnibus: one reconfigure)."""
        return None

    # --- what the registry answers ----------------------------------------------------------

    def database_header(self) -> Optional[str]:
        """GitLab's fork says on ``GET /v2/`` whether it runs with its metadata database (None: not said)."""
        try:
            return self.client.request("GET", "/v2/").headers.get(DATABASE_HEADER)
        except OSError:
            return None

    def uses_database(self) -> bool:
        """Whether GitLab's registry runs with its metadata database now: its answer to GET /v2/ when it gives one,
        else the original config's ``database.enabled`` (true only; 'prefer' without the database is off)."""
        header = self.database_header()
        if header is not None:
            return header.lower() == "true"
        database = self.config.original_running().get("database") or {}
        return database.get("enabled") in (True, "true")

    def draintimeout(self) -> Optional[str]:
        """``http.draintimeout`` of the original config (None: unset, requests in flight are cut at a restart)."""
        http = self.config.original_running().get("http") or {}
        value = http.get("draintimeout")
        return str(value) if value not in (None, 0, "0", "0s") else None

    @contextlib.contextmanager
    def shadow(self, target: TargetState, work_dir: Path, port: int, scratch: bool = False,
               writable: bool = False, drain_seconds: float = 0.0) -> Iterator[RegistryClient]:
        """This registry's own binary serving ``target`` read-only on 127.0.0.1:``port`` (no TLS, no debug
        listener, no notifications), stopped afterwards: the registry's answers on s3, asked before the
        production registry runs with it. Raises InvalidInput naming the log when it does not come up.

        ``scratch``: read-write instead, for a push under a throw-away rootdirectory (``target`` names it): deletes
        enabled, no auth, and an in-memory cache instead of a shared redis, so nothing outside it learns of the push.
        ``writable``: ``target`` as it is (read-write when it says so), notifications kept: a standby that takes
        clients' pushes while the registry restarts (stop it only once nobody's request is on it).
        ``drain_seconds``: stopped by SIGTERM with that ``http.draintimeout``: it takes no new connection and ends
        once the requests it has are answered (or the time is up), instead of being killed at once."""
        config = yaml.safe_load(self.config.running_text(target))
        storage = config["storage"]
        if scratch:
            storage["delete"] = {"enabled": True}
            storage["cache"] = {"blobdescriptor": "inmemory"}
            storage["maintenance"] = {"uploadpurging": {"enabled": False}}
            for section in ("auth", "redis"):
                config.pop(section, None)
        elif not writable:
            storage["maintenance"] = dict(storage.get("maintenance") or {}, readonly={"enabled": True})
        http = {k: v for k, v in (config.get("http") or {}).items() if k not in ("tls", "debug", "letsencrypt")}
        config["http"] = dict(http, addr=f"127.0.0.1:{port}")
        if drain_seconds:
            config["http"]["draintimeout"] = f"{drain_seconds:.0f}s"
        if not writable:
            config.pop("notifications", None)
        work_dir.mkdir(parents=True, exist_ok=True)
        path = work_dir / "shadow-config.yml"
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        log_path = work_dir / "shadow-registry.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen([self.executable(), "serve", str(path)], stdout=log, stderr=log,
                                       stdin=subprocess.DEVNULL, env=registry_environment(),
                                       preexec_fn=_die_with_parent)
        prefix = str(http.get("prefix") or "").strip("/")  # http.prefix is kept: the shadow serves under it too
        client = RegistryClient(f"http://127.0.0.1:{port}/{prefix}", ca_bundle=self.bucket.trusted_ca)
        try:
            if not client.wait_healthy(30, gone=lambda: process.poll() is not None):
                tail = redact(log_path.read_text(errors="replace"))[-600:]
                raise InvalidInput(f"the registry binary {self.binary()} did not serve the s3 configuration "
                                   f"(log {log_path}): {tail}")
            yield client
        finally:
            if drain_seconds:
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(drain_seconds + 5)
            process.kill()  # nobody's request is on it (or its drain is over): a SIGTERM would cost a second
            process.wait()
            with contextlib.suppress(OSError):
                path.unlink()  # it may hold credentials

    def garbage_collect(self, delete_untagged: bool, dry_run: bool) -> subprocess.CompletedProcess:
        """The registry's own ``garbage-collect`` on the config it runs with."""
        command = [self.executable(), "garbage-collect", *(["--dry-run"] if dry_run else []),
                   *(["--delete-untagged"] if delete_untagged else []), str(self.config.running_path)]
        return subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              env=registry_environment(), timeout=None)


class DistributionRegistry(ManagedRegistry):
    """Docker Distribution (or GitLab's fork from source): its YAML config and the plan's restart command."""

    name = "Docker Distribution"

    def open_config(self, backup_dir: Path) -> YamlConfig:
        return YamlConfig(self.settings.config, backup_dir)

    @property
    def restart_command(self) -> str:
        return self.restart_from_plan()

    @property
    def default_binary(self) -> str:
        return "docker-registry"


class OmnibusRegistry(ManagedRegistry):
    """GitLab Omnibus, fast path: both files written, ``gitlab-ctl restart registry``, one reconfigure after."""

    name = "GitLab Omnibus"
    reconfigures_after_window = True
    config: OmnibusConfig

    def open_config(self, backup_dir: Path) -> OmnibusConfig:
        return OmnibusConfig(self.settings.config, backup_dir, self.settings.rendered_config)

    @property
    def restart_command(self) -> str:
        return f"{self.settings.gitlab_ctl} restart registry"

    @property
    def default_binary(self) -> str:
        return OMNIBUS_BINARY

    def database_setting(self, uses_database: bool) -> Optional[dict]:
        """GitLab ≥ 19.0 defaults the metadata database to ``prefer``, which on a bucket without the
        filesystem-in-use marker starts on an empty database: pin it off unless the registry already uses it."""
        return None if uses_database else {"enabled": False}

    def write(self, target: TargetState) -> None:
        """gitlab.rb first (what any later reconfigure renders), then the config.yml it would render."""
        super().write(target)
        failpoint("omnibus-between-writes")
        self.config.write_running(self.config.running_text(target))

    def write_original(self) -> None:
        super().write_original()
        self.config.write_running(self.config.original_running_text())

    def files(self, target: Optional[TargetState]) -> list[tuple[Path, str, str]]:
        config = self.config
        after = config.running_path.read_text() if target is None else config.running_text(target)
        return super().files(target) + [(config.running_path, config.original_running_text(), after)]

    def after_window(self, target: TargetState) -> Optional[Restart]:
        """One ``gitlab-ctl reconfigure``, then the rendered config must still be ``target`` and the registry
        healthy: Omnibus keeps what was written (it restarts the registry only if its rendering differs)."""
        restart = self.watched(f"{self.settings.gitlab_ctl} reconfigure")
        if restart.problem is None:
            difference = self.config.check_applied(target)
            if difference:
                restart.problem = f"after gitlab-ctl reconfigure the rendered {self.config.running_path}: {difference}"
        return restart


class OmnibusReconfigureRegistry(OmnibusRegistry):
    """GitLab Omnibus, slow path (``restart:`` named in the plan): gitlab.rb only; the command renders and restarts."""

    reconfigures_after_window = False

    @property
    def restart_command(self) -> str:
        return self.restart_from_plan()

    def write(self, target: TargetState) -> None:
        ManagedRegistry.write(self, target)

    def write_original(self) -> None:
        ManagedRegistry.write_original(self)

    def files(self, target: Optional[TargetState]) -> list[tuple[Path, str, str]]:
        return ManagedRegistry.files(self, target)

    def after_window(self, target: TargetState) -> Optional[Restart]:
        return None


def open_registry(settings: RegistrySettings, bucket: BucketSettings, key_prefix: str,
                  backup_dir: Path) -> ManagedRegistry:
    """The managed registry for a plan's ``registry:`` section."""
    if not settings.config.is_file():
        raise InvalidInput(f"registry config {settings.config} does not exist or is not a file; fix registry.config")
    kind: type[ManagedRegistry]
    if settings.format != "omnibus":
        kind = DistributionRegistry
    elif settings.restart:
        kind = OmnibusReconfigureRegistry
    else:
        kind = OmnibusRegistry
    return kind(settings, bucket, key_prefix, backup_dir)


SYSTEMCTL_RESTARTS = ("restart", "try-restart", "reload-or-restart", "try-reload-or-restart", "start")


def restart_command_problem(command: str) -> Optional[str]:
    """Why ``command`` cannot restart the registry, found without running it (None: nothing found): its program is
    not found or cannot run (``command -v``); a systemd unit it restarts does not exist (``systemctl cat``) or
    starts the registry with AWS_CA_BUNDLE set, which Distribution 2.8's s3 driver panics on."""
    words = shlex.split(command)
    program = words[0]
    found = subprocess.run(["sh", "-c", 'command -v "$1"', "sh", program], capture_output=True, text=True)
    if found.returncode != 0 or (os.sep in program and not os.access(program, os.X_OK)):
        return f"runs {program!r}, which is not an executable on PATH (command -v finds no such command)"
    for unit in systemd_units(words):
        shown = subprocess.run(["systemctl", "cat", unit], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if shown.returncode != 0:
            return (f"restarts the systemd unit {unit}, but 'systemctl cat {unit}' fails "
                    f"({redact(shown.stderr.strip())[-200:]}): name the registry's unit")
        environment = subprocess.run(["systemctl", "show", "-p", "Environment", unit], capture_output=True, text=True,
                                     stdin=subprocess.DEVNULL).stdout
        if "AWS_CA_BUNDLE=" in environment:
            return (f"restarts the systemd unit {unit}, whose Environment sets AWS_CA_BUNDLE: the registry's s3 driver "
                    "(Distribution 2.8) panics on start with it (LoadCustomCABundleError), after the switch to s3. "
                    f"Remove it from the unit ('systemctl edit {unit}', then 'systemctl daemon-reload') and add the "
                    "endpoint's CA to the host's trust store")
    return None


def systemd_units(words: list[str]) -> list[str]:
    """The units a ``systemctl restart UNIT...`` in a command's words restarts (sudo and options allowed)."""
    names = [os.path.basename(word) for word in words]
    if "systemctl" not in names:
        return []
    rest = [word for word in words[names.index("systemctl") + 1:] if not word.startswith("-")]
    if not rest or rest[0] not in SYSTEMCTL_RESTARTS:
        return []
    units = []
    for word in rest[1:]:
        if word in ("&&", "||", ";", "|"):
            break
        units.append(word)
    return units

