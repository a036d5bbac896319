"""Plan keys that are wrong: exit 2 from ``migrator run`` with the key named, decided when the plan is loaded (no
bucket, registry or state directory is touched, so none runs here: CliRunner in this process)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Callable

import pytest
import yaml
from click.testing import CliRunner
from conftest import apply_changes

from migrator.cli import main
from migrator.testing.synthetic import RegistryTree


class Plans:
    """Plans over one source and registry config: valid, with changes applied (dotted keys; None deletes), or raw."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.source = tmp / "root"
        RegistryTree(self.source)
        self.config = tmp / "config.yml"
        self.config.write_text(yaml.safe_dump({"version": 0.1, "storage": {"filesystem": {
            "rootdirectory": str(self.source)}}}))
        self.state = tmp / "state"

    def plan(self, text: str | None = None, **changes: object) -> Path:
        path = self.tmp / f"{uuid.uuid4().hex[:8]}-plan.yml"
        if text is not None:
            path.write_text(text)
            return path
        data: dict = {"source": str(self.source), "state": str(self.state),
                      "bucket": {"name": "bucket", "prefix": "reg", "endpoint": "http://127.0.0.1:9"},
                      "registry": {"config": str(self.config), "restart": "true", "url": "http://127.0.0.1:9"}}
        apply_changes(data, changes)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path


# Each case: name -> function(plans) returning (the plan, message substring); every one exits 2.
PLAN_CASES: dict[str, Callable[[Plans], tuple[Path, str]]] = {
    "malformed YAML": lambda p: (p.plan(text="source: [unclosed\n"), "not valid YAML"),
    "empty plan": lambda p: (p.plan(text=""), "the plan is empty"),
    "unknown key": lambda p: (p.plan(surprise=1), "unknown key 'surprise'"),
    "unknown nested key": lambda p: (p.plan(**{"bucket.regoin": "x"}), "unknown key 'bucket.regoin'"),
    "wrong type (source)": lambda p: (p.plan(source=42), "'source' must be a string"),
    "wrong type (workers)": lambda p: (p.plan(**{"sync.workers": "many"}), "'sync.workers' must be a number"),
    "zero workers": lambda p: (p.plan(**{"sync.workers": 0}), "at least 1"),
    "delete fraction above 1": lambda p: (p.plan(**{"sync.max_delete_fraction": 2}),
                                          "max_delete_fraction must be between 0 and 1"),
    "unknown retry mode": lambda p: (p.plan(**{"sync.retry_mode": "bogus"}), "retry_mode"),
    "missing source": lambda p: (p.plan(source=None), "missing required key 'source'"),
    "missing bucket name": lambda p: (p.plan(**{"bucket.name": None}), "missing required key 'bucket.name'"),
    "source does not exist": lambda p: (p.plan(source="/nonexistent/registry"), "does not exist"),
    "source without docker/": lambda p: (p.plan(source=str(p.tmp)), "no docker/registry/v2"),
    "source is the registry config": lambda p: (p.plan(source=str(p.config)), "is a file, not a directory"),
    "prefix with ..": lambda p: (p.plan(**{"bucket.prefix": "../reg"}), "bucket.prefix"),
    "prefix with //": lambda p: (p.plan(**{"bucket.prefix": "a//docker"}), "bucket.prefix"),
    "prefix with a wildcard": lambda p: (p.plan(**{"bucket.prefix": "reg*"}), "bucket.prefix"),
    "CA bundle that is not a file": lambda p: (p.plan(**{"bucket.ca_bundle": "/nonexistent/ca.pem"}), "bucket.ca_bundle"),
    "secret in the plan": lambda p: (p.plan(**{"bucket.secretkey": "SUPERSECRETVALUE"}), "is a secret"),
    "unknown config format": lambda p: (p.plan(**{"registry.format": "toml"}), "registry.format"),
}


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    return Plans(tmp_path_factory.mktemp("plan-keys"))


@pytest.mark.parametrize("name", sorted(PLAN_CASES))
def test_a_wrong_plan_key_is_exit_2_naming_it_and_changes_nothing(plans, name):
    plan, message = PLAN_CASES[name](plans)
    config = plans.config.read_bytes()
    result = CliRunner().invoke(main, ["--quiet", "run", "--yes", str(plan)])
    assert result.exit_code == 2, f"{name}: {result.output}"
    assert message in result.stderr, f"{name}: {result.stderr}"
    assert "Traceback" not in result.stderr and "SUPERSECRETVALUE" not in result.output
    assert not plans.state.exists() and plans.config.read_bytes() == config
