"""Bad input: exit 2 (or 3 for safety refusals), a message naming the problem, and nothing changed:
the bucket listing and the registry config are the same before and after."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import yaml
from conftest import apply_changes, file_hash, listing, run_cli
from test_plan_keys import PLAN_CASES

from migrator.net import free_port
from migrator.registry_config import BEGIN
from migrator.registry_http import RegistryClient
from migrator.state import StateStore
from migrator.testing.local import LocalRegistry, MotoServer

pytestmark = pytest.mark.slow

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test-access-key", "AWS_SECRET_ACCESS_KEY": "test-secret-key-do-not-print"}


@dataclass
class World:
    registry: LocalRegistry
    s3: object
    bucket: str
    moto: MotoServer
    tmp: Path

    def plan(self, name: str = "plan.yml", text: str | None = None, **changes) -> Path:
        """A valid plan with ``changes`` applied (dotted keys; None deletes), or raw ``text``."""
        path = self.tmp / f"{uuid.uuid4().hex[:8]}-{name}"
        if text is not None:
            path.write_text(text)
            return path
        data = yaml.safe_load(self.registry.write_plan("base.yml").read_text())
        data["state"] = str(self.tmp / f"state-{uuid.uuid4().hex[:8]}")
        apply_changes(data, changes)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def config_copy(self, text: str, name: str = "config.yml") -> str:
        path = self.tmp / f"{uuid.uuid4().hex[:8]}-{name}"
        path.write_text(text)
        return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad-input")
    os.environ.update(CREDENTIALS)
    moto = MotoServer(logfile=tmp / "moto.log").start()
    s3 = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1", **{
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"]})
    bucket = f"bad-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    registry = LocalRegistry(tmp / "registry", moto.endpoint, bucket, prefix="reg").start()
    client = RegistryClient(registry.url)
    for index in range(3):
        client.push_image(f"bad/app{index}", "v1", [os.urandom(2000 + index)])
    synced = run_cli("sync", registry.write_plan("seed.yml"))
    assert synced.returncode == 0, synced.stderr
    yield World(registry, s3, bucket, moto, tmp)
    registry.stop()
    moto.stop()


def registry_config_text(world: World, **storage_changes) -> str:
    config = yaml.safe_load(world.registry.config.read_text())
    config["storage"].update(storage_changes)
    return yaml.safe_dump(config)


def case_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(CREDENTIALS, AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/nonexistent",
               AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def empty_tree(world: World) -> str:
    root = world.tmp / f"empty-{uuid.uuid4().hex[:6]}"
    (root / "docker/registry/v2").mkdir(parents=True)
    return str(root)


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# Each case: name -> function(world) returning (cli args, env or None, expected exit code, message substring). Plan keys
# decided when the plan is loaded are tests/test_plan_keys.py's PLAN_CASES (fast: no moto, no registry).
CASES = {
    "empty source, full bucket": lambda w: (["run", "--yes", w.plan(source=empty_tree(w), registry=None)], None, 3,
                                            "found no files"),
    "nonexistent bucket": lambda w: (["run", "--yes", w.plan(**{"bucket.name": "no-such-bucket-here"})], None, 2,
                                     "does not exist"),
    "no credentials": lambda w: (["run", "--yes", w.plan()], case_env(AWS_ACCESS_KEY_ID=None,
                                 AWS_SECRET_ACCESS_KEY=None), 2, "no AWS credentials"),
    "wrong credentials": lambda w: (["run", "--yes", w.plan(**{"bucket.endpoint": w.auth_endpoint})], None, 2,
                                    "denied"),
    "unknown profile": lambda w: (["run", "--yes", w.plan(**{"bucket.profile": "nobody"})], None, 2,
                                  "profile 'nobody' not found"),
    "unreachable endpoint": lambda w: (["run", "--yes", w.plan(**{"bucket.endpoint": closed_port_url()})], None, 2,
                                       "cannot reach the S3 endpoint"),
    "endpoint that is not a URL": lambda w: (["run", "--yes", w.plan(**{"bucket.endpoint": "not a url"})], None, 2,
                                             "bucket.endpoint"),
    "registry not filesystem-backed": lambda w: (["run", "--yes", w.plan(**{"registry.config": w.config_copy(
        registry_config_text(w, filesystem=None, inmemory=None) .replace("filesystem: null", "inmemory: {}"))})],
        None, 2, "inmemory driver"),
    "registry already on s3": lambda w: (["run", "--yes", w.plan(**{"registry.config": w.config_copy(
        yaml.safe_dump({"version": 0.1, "storage": {"s3": {"bucket": "b", "region": "us-east-1"}}}))})], None, 2,
        "uses the s3 driver"),
    "registry root is not the source": lambda w: (["run", "--yes", w.plan(**{"registry.config": w.config_copy(
        registry_config_text(w, filesystem={"rootdirectory": "/srv/elsewhere"}))})], None, 2, "rootdirectory"),
    "registry config missing": lambda w: (["run", "--yes", w.plan(**{"registry.config": "/nonexistent/config.yml"})],
                                          None, 2, "does not exist"),
    "registry config not YAML": lambda w: (["run", "--yes", w.plan(**{"registry.config": w.config_copy(
        "storage: [unclosed\n")})], None, 2, "not valid YAML"),
    "registry config without storage": lambda w: (["run", "--yes", w.plan(**{"registry.config": w.config_copy(
        "version: 0.1\nhttp: {addr: ':5000'}\n")})], None, 2, "no 'storage' section"),
    "registry URL unreachable": lambda w: (["run", "--yes", w.plan(**{"registry.url": closed_port_url()})], None, 2,
                                           "does not answer"),
    "restart command not found": lambda w: (["run", "--yes", w.plan(**{"registry.restart": "/nonexistent/restart"})],
                                            None, 2, "not an executable"),
    "restart command fails": lambda w: (["run", "--yes", w.plan(**{"registry.restart": "false"})], None, 2,
                                        "failed with exit code 1"),
    "state directory not writable": lambda w: (["run", "--yes", w.plan(state=str(w.registry.config) + "/state")],
                                               None, 2, "not writable"),
    "second concurrent run": lambda w: (["run", "--yes", w.locked_plan()], None, 3, "another migrator run"),
    "unbalanced gitlab.rb block": lambda w: (["run", "--yes", w.plan(**{
        "registry.config": w.config_copy(f"external_url 'x'\n{BEGIN}\nregistry['storage'] = {{}}\n", "gitlab.rb"),
        "registry.rendered_config": str(w.registry.config)})], None, 2, "unbalanced"),
    "write_credentials without credentials": lambda w: (["run", "--yes", w.plan(**{"registry.write_credentials": True})],
                                                        case_env(AWS_SECRET_ACCESS_KEY=None), 2,
                                                        "incomplete AWS credentials"),
    "rollback without a backup": lambda w: (["rollback", "--yes", w.plan()], None, 2, "no backup"),
    "verify a nonexistent bucket": lambda w: (["verify", w.plan(**{"bucket.name": "no-such-bucket-here"})], None, 2,
                                              "does not exist"),
}


@pytest.fixture(scope="module")
def auth_moto(world):
    server = MotoServer(logfile=world.tmp / "moto-auth.log")
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    try:
        server.start()
    finally:
        del os.environ["INITIAL_NO_AUTH_ACTION_COUNT"]
    world.auth_endpoint = server.endpoint
    yield server
    server.stop()


def test_there_are_at_least_30_cases():
    assert len(CASES) + len(PLAN_CASES) >= 30


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_changes_nothing(world, auth_moto, name):
    lock_holder = StateStore(world.tmp / f"locked-{uuid.uuid4().hex[:6]}")
    world.locked_plan = lambda: (lock_holder.lock(), world.plan(state=str(lock_holder.directory)))[1]
    args, env, expected, message = CASES[name](world)
    before = (listing(world.s3, world.bucket), file_hash(world.registry.config))
    try:
        result = run_cli(*args, env=env or case_env(), timeout=300)
    finally:
        lock_holder.unlock()
    assert result.returncode == expected, f"{name}: {result.stdout}{result.stderr}"
    assert message in result.stderr, f"{name}: {result.stderr}"
    print(f"\n[{name}] exit {result.returncode}: {result.stderr.strip()}")
    assert "Traceback" not in result.stderr
    assert "SUPERSECRETVALUE" not in result.stderr + result.stdout
    assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in result.stderr + result.stdout
    assert (listing(world.s3, world.bucket), file_hash(world.registry.config)) == before, f"{name} changed something"
    assert RegistryClient(world.registry.url).write_probe("probe/after") == 202


def test_bad_input_via_python_m_too(world):
    result = subprocess.run([sys.executable, "-m", "migrator", "verify", "/nonexistent/plan.yml"],
                            capture_output=True, text=True, env=case_env())
    assert result.returncode == 2 and "cannot read plan" in result.stderr
