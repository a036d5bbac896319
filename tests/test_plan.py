"""Plan loading: every mistake is exit 2 with the key (and line) named."""

from __future__ import annotations

from pathlib import Path

import pytest

from migrator.errors import InvalidInput
from migrator.plan import load_plan, normalise_prefix
from migrator.testing.synthetic import RegistryTree

GOOD = """\
source: {source}
bucket:
  name: my-bucket
  prefix: /registry/
  region: eu-west-1
  endpoint: http://127.0.0.1:9000
registry:
  config: {config}
  restart: systemctl restart docker-registry
  url: http://127.0.0.1:5000
  storage:
    chunksize: 10485760
"""


@pytest.fixture
def source(tmp_path):
    RegistryTree(tmp_path / "root")
    return tmp_path / "root"


def write(tmp_path, text):
    path = tmp_path / "plan.yml"
    path.write_text(text)
    return path


def good(tmp_path, source, **replace):
    config = tmp_path / "config.yml"
    config.write_text("storage: {filesystem: {rootdirectory: /x}}\n")
    text = GOOD.format(source=source, config=config)
    for old, new in replace.items():
        text = text.replace(old, new)
    return write(tmp_path, text)


def test_good_plan_loads_with_defaults(tmp_path, source):
    plan = load_plan(good(tmp_path, source))
    assert plan.source == source.resolve()
    assert plan.key_prefix == "registry/"
    assert plan.registry.format == "yaml"
    assert plan.registry.storage == {"chunksize": 10485760}
    assert plan.state_dir == tmp_path / "plan.state"
    assert plan.sync.max_delete_fraction == 0.05


@pytest.mark.parametrize("prefix,expected", [("", ""), ("/", ""), ("registry", "registry/"), ("/a/b/", "a/b/")])
def test_prefix_normalised_like_the_s3_driver(prefix, expected):
    assert normalise_prefix(prefix) == expected


@pytest.mark.parametrize(
    "text,message",
    [
        ("source: [unclosed\n", "not valid YAML"),
        ("", "empty"),
        ("- a list\n", "must be a mapping"),
        ("bucket: {name: b}\n", "missing required key 'source'"),
        ("source: /tmp\n", "missing required key 'bucket'"),
        ("source: /tmp\nbucket: {prefix: x}\n", "missing required key 'bucket.name'"),
        ("source: /tmp\nbucket: {name: b}\nsurprise: 1\n", "plan.yml:3: unknown key 'surprise'"),
        ("source: /tmp\nbucket:\n  name: b\n  regoin: x\n", "plan.yml:4: unknown key 'bucket.regoin'"),
        ("source: 42\nbucket: {name: b}\n", "'source' must be a string"),
        ("source: /tmp\nbucket: {name: [1]}\n", "'bucket.name' must be a string"),
        ("source: /tmp\nbucket: {name: b}\nsync: {workers: many}\n", "'sync.workers' must be a number"),
        ("source: /tmp\nbucket: {name: b}\nsync: {workers: true}\n", "'sync.workers' must be a number"),
        ("source: /tmp\nbucket: {name: b, secretkey: abc}\n", "'bucket.secretkey' is a secret"),
        ("source: /tmp\nbucket: {name: b}\nsync: {dask: {workers: 2}}\n", "unknown key 'sync.dask.workers'"),
        ("source: /tmp\nbucket: {name: b}\nregistry: {config: /x, url: u, storage: {accesskey: AKIA}}\n",
         "'registry.storage.accesskey' is a secret"),
    ],
)
def test_bad_plans_name_the_problem(tmp_path, text, message):
    with pytest.raises(InvalidInput) as caught:
        load_plan(write(tmp_path, text))
    assert message in str(caught.value)
    assert "abc" not in str(caught.value) and "AKIA" not in str(caught.value)


@pytest.mark.parametrize("sync,message", [("{engine: spark}", "sync.engine must be threads or dask"),
                                          ("{dask: {processes: 0}}", "sync.dask.processes must be at least 1"),
                                          ("{dask: {split_above: 0}}", "sync.dask.split_above must be at least 1")])
def test_bad_engine_settings(tmp_path, source, sync, message):
    with pytest.raises(InvalidInput, match=message):
        load_plan(write(tmp_path, f"source: {source}\nbucket: {{name: b}}\nsync: {sync}\n"))


def test_missing_source(tmp_path):
    with pytest.raises(InvalidInput, match="does not exist"):
        load_plan(write(tmp_path, f"source: {tmp_path}/nope\nbucket: {{name: b}}\n"))


def test_source_without_docker_tree(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="no docker/registry/v2"):
        load_plan(write(tmp_path, f"source: {tmp_path}/empty\nbucket: {{name: b}}\n"))


def test_source_that_is_a_file(tmp_path):
    (tmp_path / "config.yml").write_text("version: 0.1\n")
    with pytest.raises(InvalidInput, match="is a file, not a directory"):
        load_plan(write(tmp_path, f"source: {tmp_path}/config.yml\nbucket: {{name: b}}\n"))


@pytest.mark.parametrize("prefix", ["../escape", "a/../b", "a//b", "reg*", "a\\b"])
def test_prefixes_that_could_reach_outside_are_refused(tmp_path, source, prefix):
    with pytest.raises(InvalidInput, match="bucket.prefix"):
        load_plan(good(tmp_path, source, **{"prefix: /registry/": f"prefix: '{prefix}'"}))


def test_gitlab_rb_is_detected_as_omnibus(tmp_path, source):
    rb = tmp_path / "gitlab.rb"
    rb.write_text("external_url 'https://gitlab.example.com'\n")
    path = good(tmp_path, source)
    path.write_text(path.read_text().replace(str(tmp_path / "config.yml"), str(rb)).replace(
        "  restart: systemctl restart docker-registry\n", ""))
    plan = load_plan(path)
    assert plan.registry.format == "omnibus"
    assert plan.registry.restart is None and plan.registry.gitlab_ctl == "gitlab-ctl"  # the fast path


PLANS = sorted(path.name for path in (Path(__file__).parents[1] / "plans").glob("*.yml"))


@pytest.mark.parametrize("name", PLANS)
def test_example_plans_are_valid(tmp_path, source, name):
    import yaml

    text = (Path(__file__).parents[1] / "plans" / name).read_text()
    data = yaml.safe_load(text)
    data["source"] = str(source)
    if data["bucket"].get("ca_bundle"):
        data["bucket"]["ca_bundle"] = str(tmp_path / "ca.pem")
        (tmp_path / "ca.pem").write_text("")
    (tmp_path / "gitlab.rb").write_text("")
    data["registry"]["config"] = str(tmp_path / Path(data["registry"]["config"]).name)
    plan = load_plan(write(tmp_path, yaml.safe_dump(data)))
    assert plan.bucket.name and plan.registry.url
