"""The migration plan: a YAML file, checked key by key before anything is touched."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from migrator.errors import InvalidInput
from migrator.front import FrontSettings
from migrator.parts import MAX_PART, MIN_PART, MiB

SECRET_KEYS = {"accesskey", "secretkey", "awsaccesskeyid", "awssecretaccesskey", "sessiontoken", "awssessiontoken",
               "accesskeyid", "secretaccesskey", "password", "token"}  # compared without case, '_' or '-'
CREDENTIALS_GO = ("credentials come from the AWS chain: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the "
                  "environment, a profile (bucket.profile, ~/.aws/credentials) or an instance role")


def is_secret_key(key: object) -> bool:
    """A key naming a credential, however it is spelled (secret_key, SecretAccessKey, aws-session-token...)."""
    return str(key).lower().replace("_", "").replace("-", "") in SECRET_KEYS


@dataclass(frozen=True)
class BucketSettings:
    name: str
    prefix: str = ""
    region: str = "us-east-1"
    endpoint: Optional[str] = None
    profile: Optional[str] = None
    driver: str = "s3"  # the registry's driver name: s3, or s3_v2 (GitLab's fork)
    checksums: str = "auto"  # botocore's checksum setting; auto: when_required for endpoints other than AWS
    payload_signing: str = "auto"  # request bodies' SHA-256 in their signature: always, never; auto: over http only
    ca_bundle: Optional[Path] = None  # PEM certificates to trust for an https endpoint (a private CA, self-signed)

    @property
    def trusted_ca(self) -> Optional[Path]:
        """The certificates every client (boto3, obstore, the registry client following the 307) trusts for the
        endpoint: ``bucket.ca_bundle``, else ``AWS_CA_BUNDLE`` as the aws CLI and boto3 take it."""
        if self.ca_bundle:
            return self.ca_bundle
        return Path(os.environ["AWS_CA_BUNDLE"]) if os.environ.get("AWS_CA_BUNDLE") else None


@dataclass(frozen=True)
class RegistrySettings:
    config: Path
    restart: Optional[str]  # None on Omnibus: the fast path (gitlab-ctl restart registry, one reconfigure after)
    url: str
    format: str = "yaml"
    storage: dict = field(default_factory=dict)
    write_credentials: bool = False
    rendered_config: Path = Path("/var/opt/gitlab/registry/config.yml")
    health_timeout_seconds: float = 120.0
    redirect: dict = field(default_factory=dict)  # {disable: true}: the registry serves blobs itself after cut-over
    image_sample: int = 200  # tags pulled through the registry on s3 before writes are turned on, besides the window's
    restart_seconds: float = 10.0  # how long a restart takes, for 'report' until a run has measured one
    gitlab_ctl: str = "gitlab-ctl"  # Omnibus' control command (fast path: restart registry; reconfigure after)
    binary: Optional[str] = None  # the registry executable (default docker-registry, Omnibus: embedded registry)
    broken_in_source: str = "report"  # images the source itself cannot serve: report (migrated as they are) or block
    front: Optional[FrontSettings] = None  # the operator's nginx in front of the registry, steered for the window


@dataclass(frozen=True)
class SyncSettings:
    workers: int = 32
    shard_workers: int = 4
    multipart_threshold_mb: int = 64
    multipart_chunksize_mb: int = 16
    retry_mode: str = "standard"
    max_attempts: int = 10
    max_delete_fraction: float = 0.05
    max_delta_passes: int = 5
    delta_stop_below: int = 100
    change_feed: bool = True  # the final pass re-syncs only what the kernel saw change (fanotify; else full walk)
    max_memory_mb: int = 256  # file content held in memory by uploads at once (files are read whole below multipart)
    put: str = "obstore"  # small objects: obstore (Rust object_store) or direct (a hand-signed request on boto3's pool)
    engine: str = "threads"  # threads, or dask: online passes' shards as tasks on a Dask cluster (migrator/cluster.py)
    dask: dict = field(default_factory=dict)  # {scheduler: null (a local cluster) or tcp://host:8786, processes: N,
    #                                           split_above: files in one task before its shard is split}


@dataclass(frozen=True)
class Plan:
    path: Path
    source: Path
    bucket: BucketSettings
    registry: Optional[RegistrySettings]
    state_dir: Path
    sync: SyncSettings

    @property
    def front(self) -> Optional[FrontSettings]:
        """``registry.front``, or None (also without a ``registry:`` section)."""
        return self.registry.front if self.registry is not None else None

    @property
    def key_prefix(self) -> str:
        """What every key the registry uses starts with: the rootdirectory, normalised."""
        return normalise_prefix(self.bucket.prefix)


def normalise_prefix(prefix: str) -> str:
    """The S3 driver strips the leading '/' of rootdirectory; '' and '/' both mean the bucket root."""
    stripped = prefix.strip("/")
    return f"{stripped}/" if stripped else ""


OMNIBUS_REGISTRY_NGINX = "/var/opt/gitlab/nginx/conf/gitlab-registry.conf"  # rendered by gitlab-ctl reconfigure

# Schema: key -> (type(s), required). Nested dicts are schemas of their own.
_BUCKET = {
    "name": (str, True),
    "prefix": ((str, type(None)), False),
    "region": (str, False),
    "endpoint": ((str, type(None)), False),
    "profile": ((str, type(None)), False),
    "driver": (str, False),
    "checksums": (str, False),
    "payload_signing": (str, False),
    "ca_bundle": ((str, type(None)), False),
}
_REGISTRY = {
    "config": (str, True),
    "restart": ((str, type(None)), False),
    "url": (str, True),
    "format": ((str, type(None)), False),
    "storage": (dict, False),
    "write_credentials": (bool, False),
    "rendered_config": (str, False),
    "health_timeout_seconds": ((int, float), False),
    "redirect": ({"disable": (bool, False)}, False),
    "image_sample": (int, False),
    "restart_seconds": ((int, float), False),
    "gitlab_ctl": (str, False),
    "binary": ((str, type(None)), False),
    "broken_in_source": (str, False),
    "front": ({"nginx": (str, False), "reload": (str, False), "url": ((str, type(None)), False),
               "drain_timeout_seconds": ((int, float), False)}, False),
}
_SYNC = {
    "workers": (int, False),
    "shard_workers": (int, False),
    "multipart_threshold_mb": (int, False),
    "multipart_chunksize_mb": (int, False),
    "retry_mode": (str, False),
    "max_attempts": (int, False),
    "max_delete_fraction": ((int, float), False),
    "max_delta_passes": (int, False),
    "delta_stop_below": (int, False),
    "change_feed": (bool, False),
    "max_memory_mb": (int, False),
    "put": (str, False),
    "engine": (str, False),
    "dask": ({"scheduler": ((str, type(None)), False), "processes": ((int, type(None)), False),
              "split_above": (int, False)}, False),
}
_PLAN = {
    "source": (str, True),
    "bucket": (_BUCKET, True),
    "registry": ((_REGISTRY, type(None)), False),
    "state": ((str, type(None)), False),
    "sync": ((_SYNC, type(None)), False),
}


def _type_name(expected: Any) -> str:
    options = expected if isinstance(expected, tuple) else (expected,)
    names = []
    for option in options:
        if isinstance(option, dict) or option is dict:
            names.append("a mapping")
        elif option is type(None):
            names.append("null")
        elif option is bool:
            names.append("true/false")
        else:
            names.append({str: "a string", int: "a number", float: "a number"}[option])
    return " or ".join(dict.fromkeys(names))


def _check(node: yaml.Node, schema: dict, where: str, plan_path: Path) -> dict:
    """Validate a mapping node against a schema; returns plain Python values."""
    if not isinstance(node, yaml.MappingNode):
        raise InvalidInput(f"{plan_path}:{node.start_mark.line + 1}: {where or 'the plan'} must be a mapping")
    values: dict = {}
    for key_node, value_node in node.value:
        key = key_node.value
        line = key_node.start_mark.line + 1
        dotted = f"{where}.{key}" if where else key
        if is_secret_key(key):
            raise InvalidInput(f"{plan_path}:{line}: '{dotted}' is a secret, and secrets do not belong in a plan: "
                               f"remove it; {CREDENTIALS_GO}")
        if key not in schema:
            allowed = ", ".join(schema)
            raise InvalidInput(f"{plan_path}:{line}: unknown key '{dotted}' (allowed here: {allowed})")
        expected, _ = schema[key]
        options = expected if isinstance(expected, tuple) else (expected,)
        sub_schema = next((o for o in options if isinstance(o, dict)), None)
        if sub_schema is not None and isinstance(value_node, yaml.MappingNode):
            values[key] = _check(value_node, sub_schema, dotted, plan_path)
            continue
        value = yaml.safe_load(yaml.serialize(value_node))
        plain = tuple(dict if isinstance(o, dict) else o for o in options)
        if isinstance(value, bool) and bool not in plain:
            ok = False
        else:
            ok = isinstance(value, plain)
        if not ok:
            raise InvalidInput(
                f"{plan_path}:{line}: '{dotted}' must be {_type_name(expected)}, not {type(value).__name__} {value!r}"
            )
        if isinstance(value, dict):
            _refuse_secrets(value, dotted, line, plan_path)
        values[key] = value
    for key, (_, required) in schema.items():
        if required and key not in values:
            raise InvalidInput(f"{plan_path}: missing required key '{where + '.' if where else ''}{key}'")
    return values


def _refuse_secrets(mapping: dict, where: str, line: int, plan_path: Path) -> None:
    for key, value in mapping.items():
        if is_secret_key(key):
            raise InvalidInput(f"{plan_path}:{line}: '{where}.{key}' is a secret, and secrets do not belong in a plan: "
                               f"remove it; {CREDENTIALS_GO} (registry.write_credentials: true copies them from the "
                               "environment into the registry config)")
        if isinstance(value, dict):
            _refuse_secrets(value, f"{where}.{key}", line, plan_path)


def _root_near(source: Path, depth: int = 3) -> Optional[Path]:
    """The rootdirectory a misplaced ``source`` points near: its parent when it is ``docker/`` (or inside it), else
    the one directory below it (at most ``depth`` levels) that holds docker/registry/v2."""
    for above in [source, *source.parents][:depth + 1]:
        if above.name == "docker" and (above / "registry" / "v2").is_dir():
            return above.parent
    found = []
    for dirpath, dirnames, _ in os.walk(source):
        level = len(Path(dirpath).relative_to(source).parts)
        if (Path(dirpath) / "docker" / "registry" / "v2").is_dir():
            found.append(Path(dirpath))
            dirnames.clear()
        elif level >= depth:
            dirnames.clear()
    return found[0] if len(found) == 1 else None


def _resolve(base: Path, value: str) -> Path:
    return (base / os.path.expanduser(value)).resolve()


def _check_prefix(prefix: str, plan_path: Path) -> None:
    parts = prefix.strip("/").split("/")
    if prefix.strip("/") and any(p in ("", ".", "..") for p in parts):
        raise InvalidInput(
            f"{plan_path}: bucket.prefix {prefix!r} has an empty, '.' or '..' path segment; "
            "use a plain path such as 'registry' (keys then start with registry/docker/)"
        )
    if any(ch in prefix for ch in "*?[]\\") or any(ord(ch) < 32 for ch in prefix):
        raise InvalidInput(f"{plan_path}: bucket.prefix {prefix!r} has wildcard or control characters; use a plain path")


def load_plan(path: str | os.PathLike) -> Plan:
    """Read and check a plan file; raises InvalidInput naming the key (and line) at fault."""
    plan_path = Path(path).resolve()
    try:
        text = plan_path.read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read plan {plan_path}: {exc.strerror}; check the path") from None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InvalidInput(f"{plan_path}{where}: not valid YAML ({problem}); fix the syntax") from None
    if root is None:
        raise InvalidInput(f"{plan_path}: the plan is empty; see plans/ for examples")
    values = _check(root, _PLAN, "", plan_path)
    base = plan_path.parent

    source = _resolve(base, values["source"])
    if not source.exists():
        raise InvalidInput(f"source {source} does not exist; set 'source' to the directory that contains docker/")
    if not source.is_dir():
        raise InvalidInput(f"source {source} is a file, not a directory; set 'source' to the directory that contains docker/")
    if not (source / "docker" / "registry" / "v2").is_dir():
        right = _root_near(source)
        if right is not None:
            raise InvalidInput(f"source {source} has no docker/registry/v2: it is not the registry's rootdirectory, "
                               f"{right} is (the directory that contains docker/); set 'source' to {right}")
        raise InvalidInput(
            f"source {source} has no docker/registry/v2; set 'source' to the registry's filesystem "
            "rootdirectory (the directory that contains docker/)"
        )

    bucket_values = values["bucket"]
    if not bucket_values["name"].strip():
        raise InvalidInput(f"{plan_path}: bucket.name is empty")
    if bucket_values.get("prefix") is None:
        bucket_values["prefix"] = ""
    _check_prefix(bucket_values["prefix"], plan_path)
    if bucket_values.get("driver", "s3") not in ("s3", "s3_v2"):
        raise InvalidInput(f"{plan_path}: bucket.driver must be s3 or s3_v2 (GitLab's fork), "
                           f"not {bucket_values['driver']!r}")
    if bucket_values.get("checksums", "auto") not in ("auto", "when_required", "when_supported"):
        raise InvalidInput(f"{plan_path}: bucket.checksums must be auto, when_required or when_supported, "
                           f"not {bucket_values['checksums']!r}")
    if bucket_values.get("payload_signing", "auto") not in ("auto", "always", "never"):
        raise InvalidInput(f"{plan_path}: bucket.payload_signing must be auto, always or never, "
                           f"not {bucket_values['payload_signing']!r}")
    if bucket_values.get("ca_bundle"):
        bucket_values["ca_bundle"] = _resolve(base, bucket_values["ca_bundle"])
        if not bucket_values["ca_bundle"].is_file():
            raise InvalidInput(f"{plan_path}: bucket.ca_bundle {bucket_values['ca_bundle']} is not a file; point it "
                               "at the PEM certificate(s) the endpoint's certificate is signed with")
    bucket = BucketSettings(**bucket_values)

    registry = None
    if values.get("registry"):
        reg = dict(values["registry"])
        config = _resolve(base, reg.pop("config"))
        fmt = reg.pop("format", None) or ("omnibus" if config.name.endswith(".rb") else "yaml")
        if fmt not in ("yaml", "omnibus"):
            raise InvalidInput(f"{plan_path}: registry.format must be 'yaml' or 'omnibus', not {fmt!r}")
        restart = reg.pop("restart", None)
        if not restart and fmt != "omnibus":
            raise InvalidInput(f"{plan_path}: registry.restart is required (the shell command that restarts the registry)")
        if "rendered_config" in reg:
            reg["rendered_config"] = _resolve(base, reg["rendered_config"])
        if reg.get("broken_in_source", "report") not in ("report", "block"):
            raise InvalidInput(f"{plan_path}: registry.broken_in_source must be report or block, "
                               f"not {reg['broken_in_source']!r}")
        if reg.get("front") is not None:
            front = dict(reg["front"])
            if fmt == "omnibus":
                if restart:
                    raise InvalidInput(
                        f"{plan_path}: registry.front with registry.restart on Omnibus: each reconfigure inside the "
                        "window renders gitlab-registry.conf again, so Chef rewrites the steered file and restarts "
                        "nginx (cutting requests in flight) while the registry restarts; remove registry.restart "
                        "(the fast path restarts the registry alone and reconfigures once nginx is given back)")
                front.setdefault("nginx", OMNIBUS_REGISTRY_NGINX)
                front.setdefault("reload", f"{reg.get('gitlab_ctl', 'gitlab-ctl')} hup nginx")
            for key, what in (("nginx", "the nginx file whose proxy_pass goes to the registry"),
                              ("reload", "the command that reloads nginx gracefully")):
                if key not in front:
                    raise InvalidInput(f"{plan_path}: registry.front.{key} is required ({what})")
            front["nginx"] = _resolve(base, front["nginx"])
            if front.get("drain_timeout_seconds", 1) <= 0:
                raise InvalidInput(f"{plan_path}: registry.front.drain_timeout_seconds must be above 0")
            reg["front"] = FrontSettings(**front)
        registry = RegistrySettings(config=config, format=fmt, restart=restart, **reg)

    sync = SyncSettings(**(values.get("sync") or {}))
    if sync.retry_mode not in ("adaptive", "standard", "legacy"):
        raise InvalidInput(f"{plan_path}: sync.retry_mode must be adaptive, standard or legacy")
    if sync.workers < 1 or sync.shard_workers < 1 or sync.max_attempts < 1 or sync.max_memory_mb < 1:
        raise InvalidInput(f"{plan_path}: sync.workers, sync.shard_workers, sync.max_attempts and sync.max_memory_mb "
                           "must be at least 1")
    if not MIN_PART <= sync.multipart_chunksize_mb * MiB <= MAX_PART or sync.multipart_threshold_mb < 1:
        raise InvalidInput(f"{plan_path}: sync.multipart_chunksize_mb must be between 5 and 5120 (S3's part sizes; "
                           "larger objects get larger parts by themselves) and sync.multipart_threshold_mb at least 1")
    if sync.put not in ("direct", "obstore"):
        raise InvalidInput(f"{plan_path}: sync.put must be direct or obstore, not {sync.put!r}")
    if sync.put == "obstore" and importlib.util.find_spec("obstore") is None:
        raise InvalidInput(f"{plan_path}: sync.put is obstore, but obstore is not installed: pip install obstore")
    if sync.engine not in ("threads", "dask"):
        raise InvalidInput(f"{plan_path}: sync.engine must be threads or dask, not {sync.engine!r}")
    if sync.dask.get("processes") is not None and sync.dask["processes"] < 1:
        raise InvalidInput(f"{plan_path}: sync.dask.processes must be at least 1")
    if sync.dask.get("split_above", 1) < 1:
        raise InvalidInput(f"{plan_path}: sync.dask.split_above must be at least 1 (files in one task before its "
                           "shard is split)")
    if not 0 <= sync.max_delete_fraction <= 1:
        raise InvalidInput(f"{plan_path}: sync.max_delete_fraction must be between 0 and 1")

    state = values.get("state")
    state_dir = _resolve(base, state) if state else plan_path.with_suffix(".state")
    return Plan(path=plan_path, source=source, bucket=bucket, registry=registry, state_dir=state_dir, sync=sync)
