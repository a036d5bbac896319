"""Registry config editing: round-trip YAML, the Omnibus managed block, atomic writes."""

from __future__ import annotations

import os
import stat

import pytest
import yaml

from migrator.errors import InvalidInput
from migrator.registry_config import (
    BEGIN,
    END,
    OmnibusConfig,
    TargetState,
    YamlConfig,
    redact,
    ruby_literal,
    unified_diff,
)

CONFIG = """\
# Operator's registry config
version: 0.1
log:
    level: info     # keep this comment
storage:
    cache:
        blobdescriptor: inmemory
    filesystem:
        rootdirectory: /var/lib/docker-registry
    delete:
        enabled: true
    redirect:
        disable: false
http:
    addr: :5000
    headers:
        X-Content-Type-Options: [nosniff]
"""

S3 = {"region": "us-east-1", "bucket": "b", "rootdirectory": "/reg"}


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "config.yml"
    path.write_text(CONFIG)
    os.chmod(path, 0o640)
    yaml_config = YamlConfig(path, tmp_path / "backup")
    yaml_config.take_backup()
    return yaml_config


def changed_lines(before: str, after: str) -> list[str]:
    return [line for line in unified_diff(before, after, "c").splitlines()
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def test_read_only_adds_only_the_maintenance_keys(config):
    text = config.render(TargetState(None, True))
    assert changed_lines(CONFIG, text) == ["+    maintenance:", "+        readonly:", "+            enabled: true"]
    assert yaml.safe_load(text)["storage"]["maintenance"]["readonly"]["enabled"] is True


def test_cutover_replaces_only_the_driver_in_place(config):
    text = config.render(TargetState(S3, False))
    assert changed_lines(CONFIG, text) == [
        "-    filesystem:", "-        rootdirectory: /var/lib/docker-registry",
        "+    s3:", "+        region: us-east-1", "+        bucket: b", "+        rootdirectory: /reg"]
    assert list(yaml.safe_load(text)["storage"]) == ["cache", "s3", "delete", "redirect"]


def test_render_is_from_the_original_and_idempotent(config):
    config.write(config.render(TargetState(None, True)))
    assert config.render(TargetState(S3, True)) == config.render(TargetState(S3, True))
    config.write(config.render(TargetState(S3, False)))
    assert "maintenance" not in config.current_text()  # the original had none
    assert config.write(config.original_text()) is True
    assert config.current_text() == CONFIG


def test_atomic_write_keeps_mode(config):
    config.write(config.render(TargetState(None, True)))
    assert stat.S_IMODE(os.stat(config.path).st_mode) == 0o640
    assert not [p for p in config.path.parent.iterdir() if p.name.endswith(".tmp")]


def test_backup_is_never_overwritten(config):
    config.write(config.render(TargetState(None, True)))
    config.take_backup()
    assert config.backup.read_text() == CONFIG


def test_check_applied(config):
    assert config.check_applied(TargetState(None, False)) is None
    assert "expected s3" in config.check_applied(TargetState(S3, False))
    assert "read-only" in config.check_applied(TargetState(None, True))


RENDERED = """\
version: 0.1
storage:
  filesystem:
    rootdirectory: /var/opt/gitlab/gitlab-rails/shared/registry
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
"""


@pytest.fixture
def omnibus(tmp_path):
    rb = tmp_path / "gitlab.rb"
    rb.write_text("external_url 'https://gitlab.example.com'\n# registry_external_url 'https://r'\n")
    rendered = tmp_path / "config.yml"
    rendered.write_text(RENDERED)
    config = OmnibusConfig(rb, tmp_path / "backup", rendered)
    config.take_backup()
    return config


def test_omnibus_block_carries_the_whole_storage_section(omnibus):
    text = omnibus.render(TargetState(dict(S3, secretkey="s3cr3t"), True))
    assert text.startswith(omnibus.original_text())
    block = text[len(omnibus.original_text()):]
    assert block.startswith(BEGIN) and block.rstrip().endswith(END)
    assert "'s3' => {" in block and "'bucket' => 'b'" in block and "'filesystem'" not in block
    assert "'delete' => {\n    'enabled' => true\n  }" in block
    assert "'readonly' => {" in block
    assert "s3cr3t" not in redact(block)


def test_omnibus_original_has_no_block(omnibus):
    assert omnibus.render(TargetState(None, False)) == omnibus.original_text()


def test_omnibus_unbalanced_block_is_refused(omnibus):
    omnibus.path.write_text(omnibus.current_text() + BEGIN + "\nregistry['storage'] = {}\n")
    with pytest.raises(InvalidInput, match="unbalanced"):
        omnibus.effective_storage()


def test_ruby_literal_escapes():
    assert ruby_literal({"a": "it's", "n": 5, "t": True, "x": None}) == (
        "{\n  'a' => 'it\\'s',\n  'n' => 5,\n  't' => true,\n  'x' => nil\n}")
