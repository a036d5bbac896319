"""Fixtures: moto_server and docker-registry on free loopback ports, synthetic registry trees, plans."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import botocore.loaders
import botocore.session
import pytest
import yaml
from click.testing import CliRunner

from migrator.cli import main
from migrator.testing.local import REGISTRY_BINARY, LocalRegistry, MotoServer
from migrator.testing.rgw import RadosGateway, RadosGatewayUnavailable
from migrator.testing.synthetic import RegistryTree, populate


@pytest.fixture(scope="session", autouse=True)
def one_botocore_loader():
    """One botocore data loader for the whole session: every client (the tests' and migrator's) reads the S3 model
    and the endpoint rules once instead of parsing their JSON again for each client built."""
    loader = botocore.loaders.create_loader()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(botocore.session, "create_loader", lambda search_paths_str=None: loader)
        yield loader


@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-access-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-key-do-not-print")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """moto_server for the session, without its per-request scan of moto's own package (tests/quick_moto.py)."""
    command = [sys.executable, str(Path(__file__).with_name("quick_moto.py"))]
    server = MotoServer(logfile=tmp_path_factory.mktemp("moto") / "moto.log", command=command).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rgw(tmp_path_factory):
    """A throw-away Ceph RGW (http and https) for the session, with the suite's credentials; the tests that use it
    skip, saying why, where it cannot start (scripts/setup.sh installs it)."""
    gateway = RadosGateway(tmp_path_factory.mktemp("rgw"), access_key="test-access-key",
                           secret_key="test-secret-key-do-not-print")
    try:
        gateway.start()
    except RadosGatewayUnavailable as exc:
        pytest.skip(f"Ceph RGW cannot run on this machine: {exc}")
    yield gateway
    gateway.stop()


@pytest.fixture(scope="session")
def kms_moto_server(tmp_path_factory):
    """A moto_server whose SSE-KMS objects have ETags that are not MD5s (tests/kms_moto.py), as on AWS."""
    command = [sys.executable, str(Path(__file__).with_name("kms_moto.py"))]
    server = MotoServer(logfile=tmp_path_factory.mktemp("kms-moto") / "moto.log", command=command).start()
    yield server
    server.stop()


@pytest.fixture
def s3(moto_server):
    return boto3.client("s3", endpoint_url=moto_server.endpoint, region_name="us-east-1",
                        aws_access_key_id="test-access-key", aws_secret_access_key="test-secret-key-do-not-print")


@pytest.fixture
def bucket(s3):
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def tree(tmp_path):
    registry_tree = RegistryTree(tmp_path / "src")
    populate(registry_tree, images=12)
    return registry_tree


@pytest.fixture
def make_plan(tmp_path, moto_server, bucket):
    """Write a plan (no registry section unless given) for the tree and bucket; returns its path."""

    def make(source: Path, prefix: str = "", name: str = "plan.yml", **sections) -> Path:
        plan = {
            "source": str(source),
            "bucket": {"name": bucket, "prefix": prefix, "region": "us-east-1", "endpoint": moto_server.endpoint},
            "sync": {"workers": 4, "shard_workers": 4},
        }
        plan.update(sections)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(plan, sort_keys=False))
        return path

    return make


UPLOADS = re.compile(r"^docker/registry/v2/repositories/(?:[^_/][^/]*/)+_uploads(?:/|$)")


def source_files(root: Path) -> dict[str, bytes]:
    """The test oracle for what the bucket must hold: every file under ``docker/``, links followed as the registry
    follows them, only ``repositories/<name>/_uploads/`` left out. Deliberately plain ``os.walk`` and its own
    ``_uploads`` rule, sharing nothing with the walker or the layout module under test."""
    found = {}
    for dirpath, _, filenames in os.walk(Path(root) / "docker", followlinks=True):
        for name in filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            if not UPLOADS.match(rel) and full.is_file():
                found[rel] = full.read_bytes()
    return found


def bucket_contents(s3, bucket: str, prefix: str = "") -> dict[str, bytes]:
    """Every object under the prefix, by key without the prefix."""
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", ()):
            found[item["Key"][len(prefix):]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def listing(s3, bucket: str) -> dict[str, str]:
    """Key → ETag for the whole bucket: compared before/after to prove nothing changed."""
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", ()):
            found[item["Key"]] = item["ETag"]
    return found


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def apply_changes(data: dict, changes: dict) -> None:
    """A plan's ``data`` with ``changes`` applied: dotted keys (``bucket.name``), None deletes."""
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = data
        for parent in parents:
            node = node.setdefault(parent, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value


def run_cli(*args, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real console entry point in a subprocess (exit codes, stdout and stderr as an operator sees them)."""
    return subprocess.run([sys.executable, "-m", "migrator", "--quiet", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env)


def invoke_cli(*args, env: dict | None = None, quiet: bool = True) -> subprocess.CompletedProcess:
    """The same command line as ``run_cli``, run in this process through click's ``CliRunner``: exit code, stdout and
    stderr as ``run_cli`` returns them, without a new interpreter. For what a subprocess adds nothing to (not for
    failpoints, signals or a terminal). The logging the command sets up is taken down again afterwards."""
    root = logging.getLogger()
    kept_handlers, kept_level = list(root.handlers), root.level
    kept_levels = {name: logging.getLogger(name).level for name in ("botocore", "boto3", "s3transfer", "urllib3")}
    command = ["--quiet", *map(str, args)] if quiet else list(map(str, args))
    try:
        # env replaces the environment, as for a subprocess: what it leaves out is unset for the command
        replaced = None if env is None else {name: None for name in os.environ if name not in env} | env
        result = CliRunner().invoke(main, command, env=replaced, catch_exceptions=False)
    finally:
        for handler in list(root.handlers):
            if handler not in kept_handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in kept_handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(kept_level)
        for name, level in kept_levels.items():
            logging.getLogger(name).setLevel(level)
    return subprocess.CompletedProcess(["migrator", *command], result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def local_registry(tmp_path, moto_server, bucket):
    """A real docker-registry on the filesystem, plan-ready, stopped afterwards."""
    if not Path(REGISTRY_BINARY).exists() and not shutil.which("docker-registry"):
        pytest.fail("docker-registry is not installed: run 'apt-get install -y docker-registry' (see README)")
    registry = LocalRegistry(tmp_path / "registry", moto_server.endpoint, bucket, prefix="reg")
    registry.start()
    yield registry
    registry.stop()
