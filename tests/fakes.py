"""Fakes for the migration's unit tests: a bucket held in a dict, a registry that records what it was told, and a
Context built from them (no moto, no docker-registry)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import botocore.exceptions

from migrator.errors import InvalidInput
from migrator.journal import Journal
from migrator.migration.context import Context, Options
from migrator.plan import BucketSettings, Plan, RegistrySettings, SyncSettings
from migrator.s3 import RequestCounter, StoredObject
from migrator.state import RunState, StateStore
from migrator.sync import Progress


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class FakeBucket:
    """rel -> (bytes, LastModified); answers what ``s3.Bucket`` answers the phases, and counts nothing."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, float]] = {}
        self.counter = RequestCounter()
        self.etags_are_md5 = True
        self.deleted: list[str] = []

    def put(self, rel: str, data: bytes, modified: Optional[float] = None) -> None:
        self.objects[rel] = (data, time.time() if modified is None else modified)

    def key(self, rel: str) -> str:
        return rel

    def rel(self, key: str) -> str:
        return key

    def listing(self, prefix: str) -> Iterator[StoredObject]:
        for rel in sorted(self.objects):
            if rel.startswith(prefix):
                data, modified = self.objects[rel]
                yield StoredObject(rel, len(data), f'"{md5(data)}"', modified)

    def head(self, rel: str) -> Optional[dict]:
        if rel not in self.objects:
            return None
        data = self.objects[rel][0]
        return {"ContentLength": len(data), "ETag": f'"{md5(data)}"'}

    def content_md5(self, rel: str, etag: str, encryption: Optional[str] = None, customer_key: bool = False) -> str:
        return md5(self.objects[rel][0])

    def head_md5(self, rel: str, head: dict) -> str:
        return md5(self.objects[rel][0])

    def get_bytes(self, rel: str) -> bytes:
        if rel not in self.objects:
            raise botocore.exceptions.ClientError({"Error": {"Code": "NoSuchKey"}}, "GetObject")
        return self.objects[rel][0]

    def delete_keys(self, rels: list[str]) -> None:
        for rel in rels:
            self.objects.pop(rel, None)
            self.deleted.append(rel)

    def remove_prefix(self, prefix: str) -> None:
        self.delete_keys([stored.rel for stored in self.listing(prefix)])


class FakeClient:
    """The registry's HTTP answers: healthy, and writes accepted unless told otherwise."""

    def __init__(self) -> None:
        self.write_status = 202
        self.user = None

    def health(self) -> int:
        return 200

    def wait_healthy(self, timeout: float) -> bool:
        return True

    def write_probe(self, repository: str) -> int:
        return self.write_status


@dataclass
class FakeConfig:
    path: Path
    backup_dir: Path

    @property
    def backup(self) -> Path:
        return self.backup_dir / "config.yml"

    running: dict = field(default_factory=lambda: {"http": {"secret": "fake-secret"}})  # the config as parsed

    def drop_backup(self) -> None:
        self.backup.unlink(missing_ok=True)

    def original_running(self) -> dict:
        return self.running


@dataclass
class FakeRegistry:
    """A registry that records restores and says what a ``ManagedRegistry`` says."""

    root: Path
    restart_command: str = "true"
    restores: int = 0
    restore_problem: Optional[str] = None
    on_original: bool = True  # the config files hold the original (a restore wrote it back)
    client: FakeClient = field(default_factory=FakeClient)

    def __post_init__(self) -> None:
        self.config = FakeConfig(self.root / "config.yml", self.root / "config-backup")

    def restore(self):  # noqa: ANN201 - a Restart
        from migrator.managed import Restart

        self.restores += 1
        return Restart("restore", time.time(), problem=self.restore_problem)

    def diff(self, target: object = None) -> str:
        return ""

    def files(self, target: object = None) -> list[tuple[Path, str, str]]:
        return [(self.config.path, "original", "original" if self.on_original else "read-only")]

    def binary(self) -> Optional[str]:
        return None

    def draintimeout(self) -> Optional[str]:
        return self.config.running.get("http", {}).get("draintimeout")

    def executable(self) -> str:
        binary = self.binary()
        if binary is None:
            raise InvalidInput("the registry executable is not on this host")
        return binary


def plan(tmp_path: Path, registry: Optional[str] = "yaml", restart: Optional[str] = "true") -> Plan:
    """A plan over ``tmp_path/root``: without a registry (``registry=None``), Distribution's (``yaml``) or
    Omnibus' (``omnibus``; ``restart=None``: the fast path)."""
    source = tmp_path / "root"
    (source / "docker").mkdir(parents=True, exist_ok=True)
    settings = None
    if registry is not None:
        settings = RegistrySettings(config=tmp_path / "config.yml", restart=restart, url="http://127.0.0.1:1",
                                    format=registry)
    return Plan(tmp_path / "plan.yml", source, BucketSettings(name="bucket"), settings, tmp_path / "state",
                SyncSettings(change_feed=False))


def context(tmp_path: Path, registry: Optional[str] = "yaml", restart: Optional[str] = "true",
            options: Optional[Options] = None) -> Context:
    """A Context of fakes (a real state directory and journal under ``tmp_path``)."""
    the_plan = plan(tmp_path, registry, restart)
    store = StateStore(the_plan.state_dir)
    store.ensure_directory()
    journal = Journal(the_plan.state_dir / "journal.sqlite")
    managed = FakeRegistry(tmp_path) if registry is not None else None
    return Context(the_plan, options or Options(yes=True), Progress(), store, RunState(), FakeBucket(),  # type: ignore[arg-type]
                   journal, None, managed)  # type: ignore[arg-type]
