"""Caught before the window, not in it (issue 22, section 4): plan and registry mistakes that used to surface late
or with a misleading message, each checked through the command line, before anything changes."""

from __future__ import annotations

import os

import pytest
import yaml
from conftest import invoke_cli


def write_plan(tmp_path, source, **bucket) -> str:
    path = tmp_path / "plan.yml"
    path.write_text(yaml.safe_dump({"source": str(source), "bucket": {"name": "b", "region": "us-east-1", **bucket}}))
    return str(path)


def test_source_set_to_docker_itself_names_the_directory_to_use(tmp_path):
    root = tmp_path / "registry-root"
    (root / "docker/registry/v2").mkdir(parents=True)
    for wrong in (root / "docker", root / "docker/registry"):
        result = invoke_cli("report", write_plan(tmp_path, wrong))
        assert result.returncode == 2, result.stderr
        assert f"set 'source' to {root}" in result.stderr, result.stderr


def test_source_above_the_rootdirectory_names_the_directory_to_use(tmp_path):
    root = tmp_path / "srv/registry"
    (root / "docker/registry/v2").mkdir(parents=True)
    result = invoke_cli("report", write_plan(tmp_path, tmp_path / "srv"))
    assert result.returncode == 2 and f"set 'source' to {root}" in result.stderr, result.stderr


def test_credentials_in_the_plan_say_where_they_belong_not_unknown_key(tmp_path):
    root = tmp_path / "root"
    (root / "docker/registry/v2").mkdir(parents=True)
    for key in ("secret_key", "access_key", "SecretAccessKey", "aws_session_token", "password"):
        result = invoke_cli("report", write_plan(tmp_path, root, **{key: "SUPERSECRETVALUE"}))
        assert result.returncode == 2, result.stderr
        assert "unknown key" not in result.stderr and "secrets do not belong in a plan" in result.stderr
        assert "AWS_ACCESS_KEY_ID" in result.stderr and "profile" in result.stderr
        assert "SUPERSECRETVALUE" not in result.stderr + result.stdout


def test_a_registry_config_for_another_root_names_both_keys_and_both_paths(tree, make_plan, tmp_path):
    config = tmp_path / "config.yml"
    config.write_text("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /srv/elsewhere\nhttp:\n  addr: :5000\n")
    plan = make_plan(tree.root, registry={"config": str(config), "restart": "true", "url": "http://127.0.0.1:9"})
    result = invoke_cli("report", plan)
    assert result.returncode == 2, result.stderr
    for named in ("registry.config", str(config), "rootdirectory /srv/elsewhere", "source", str(tree.root)):
        assert named in result.stderr, (named, result.stderr)


FAKE_SYSTEMCTL = """#!/bin/sh
# systemctl as a host with one unit, docker-registry.service, whose Environment sets AWS_CA_BUNDLE
case "$1 $2" in
  "cat docker-registry.service") echo "[Service]"; echo "ExecStart=/usr/bin/docker-registry serve /etc/r.yml" ;;
  "show -p") [ "$4" = docker-registry.service ] && echo "Environment=AWS_CA_BUNDLE=/etc/ssl/minio-ca.pem" ;;
  "cat "*) echo "No files found for $2." >&2; exit 1 ;;
esac
"""


@pytest.mark.parametrize("restart, named", [
    ("systemctl restart registry-typo.service", ["registry-typo.service", "systemctl cat"]),
    ("sudo systemctl restart docker-registry.service", ["AWS_CA_BUNDLE", "docker-registry.service", "systemctl edit"]),
])
def test_the_restart_command_is_checked_before_any_copy(tree, make_plan, tmp_path, s3, bucket, restart, named):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)
    (bin_dir / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    (bin_dir / "sudo").chmod(0o755)
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tree.root}\n")
    plan = make_plan(tree.root, registry={"config": str(config), "restart": restart, "url": "http://127.0.0.1:9"})
    result = invoke_cli("run", "--yes", plan, env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}"))
    assert result.returncode == 2, result.stderr
    for word in named + ["registry.restart"]:
        assert word in result.stderr, (word, result.stderr)
    assert not s3.list_objects_v2(Bucket=bucket).get("Contents"), "something was copied before the check"
