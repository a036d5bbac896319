"""The registry's configuration, behind one small interface: Docker Distribution YAML or Omnibus gitlab.rb.

Every change is rendered from the *original* file (the backup), so rendering is idempotent and a
resumed run writes exactly what an uninterrupted one would. Writes are atomic and keep the file's
mode and owner; YAML is edited round-trip so comments, key order and formatting survive.
"""

from __future__ import annotations

import difflib
import io
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from migrator.errors import InvalidInput
from migrator.files import atomic_write

DRIVERS = ("filesystem", "s3", "s3_v2", "azure", "gcs", "swift", "oss", "inmemory")
S3_DRIVERS = ("s3", "s3_v2")  # GitLab's fork runs s3 as s3_v2 from 19.0; s3_v2 can be named directly
DEFAULT_FILESYSTEM_ROOT = "/var/lib/registry"


@dataclass(frozen=True)
class TargetState:
    """What the registry should run with: the S3 driver settings (None: filesystem) and read-only or not."""

    s3: Optional[dict]
    readonly: bool
    redirect: Optional[dict] = None  # storage.redirect written with the s3 driver (e.g. {"disable": True})
    driver: str = "s3"  # the driver's name in the storage section: s3, or s3_v2 (GitLab's fork)
    database: Optional[dict] = None  # Omnibus: registry['database'] written with the s3 driver ({"enabled": False})


def storage_driver(storage: dict) -> tuple[str, dict]:
    """The driver name and its parameters from a storage section."""
    names = [name for name in storage if name in DRIVERS]
    if len(names) != 1:
        found = ", ".join(names) or "none"
        raise InvalidInput(f"the registry storage section names {len(names)} drivers ({found}); expected exactly one")
    return names[0], storage[names[0]] or {}


def is_readonly(storage: dict) -> bool:
    readonly = ((storage.get("maintenance") or {}).get("readonly") or {})
    return bool(readonly.get("enabled"))


def unified_diff(before: str, after: str, name: str) -> str:
    return "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True), f"a/{name}", f"b/{name}"))


class RegistryConfig:
    """What the pipeline needs from a registry configuration file; originals live in ``backup_dir``."""

    def __init__(self, path: Path, backup_dir: Path):
        self.path = path
        self.backup_dir = backup_dir

    @property
    def backup(self) -> Path:
        return self.backup_dir / self.path.name

    def take_backup(self) -> None:
        """Keep the original file; a later run never overwrites it."""
        backup_once(self.path, self.backup)

    def original_text(self) -> str:
        return self.backup.read_text() if self.backup.exists() else _read(self.path)

    def drop_backup(self) -> None:
        """Forget the original once it is proven back in place, so a later change of the file is not undone."""
        self.backup.unlink(missing_ok=True)

    def current_text(self) -> str:
        return _read(self.path)

    def effective_storage(self) -> dict:
        """The storage section the registry runs with now."""
        raise NotImplementedError

    def original_storage(self) -> dict:
        """The storage section of the original (backed-up) config the registry ran with."""
        return self.original_running()["storage"]

    def render(self, target: TargetState) -> str:
        """The file text for ``target``, derived from the original."""
        raise NotImplementedError

    @property
    def running_path(self) -> Path:
        """The file the registry process reads (Omnibus: the config.yml rendered from gitlab.rb)."""
        return self.path

    def running_text(self, target: TargetState) -> str:
        """What ``running_path`` holds once ``target`` is in effect."""
        return self.render(target)

    def original_running(self) -> dict:
        """The whole original config the registry ran with, parsed."""
        return _parse_yaml(self.original_text(), self.backup)

    def check_applied(self, target: TargetState) -> Optional[str]:
        """After a restart: None if the registry's effective config shows ``target``, else what differs."""
        return _applied_difference(self.effective_storage(), target)

    def write(self, text: str) -> bool:
        """Write ``text`` atomically unless the file already holds it; True if it changed."""
        return write_if_changed(self.path, text)


def write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` atomically unless it already holds it; True if it changed."""
    if _read(path) == text:
        return False
    atomic_write(path, text)
    return True


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read registry config {path}: {exc.strerror}; fix registry.config") from None


def _parse_yaml(text: str, path: Path) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"registry config {path} is not valid YAML ({exc}); fix it or registry.config") from None
    if not isinstance(data, dict) or not isinstance(data.get("storage"), dict):
        raise InvalidInput(f"registry config {path} has no 'storage' section; is registry.config the registry's config.yml?")
    return data


def _applied_difference(storage: dict, target: TargetState) -> Optional[str]:
    driver, params = storage_driver(storage)
    want = target.driver if target.s3 is not None else "filesystem"
    if driver != want:
        return f"driver is {driver}, expected {want}"
    if target.s3 is not None and params.get("bucket") != target.s3.get("bucket"):
        return f"bucket is {params.get('bucket')!r}, expected {target.s3.get('bucket')!r}"
    if is_readonly(storage) != target.readonly:
        return f"read-only is {is_readonly(storage)}, expected {target.readonly}"
    return None


class YamlConfig(RegistryConfig):
    """Docker Distribution's config.yml (Debian docker-registry, source installs, GitLab's fork)."""

    def effective_storage(self) -> dict:
        return _parse_yaml(_read(self.path), self.path)["storage"]

    def render(self, target: TargetState) -> str:
        original = self.original_text()
        rt = YAML()
        rt.preserve_quotes = True
        rt.width = 4096
        indent = _indent_of(original)
        rt.indent(mapping=indent, sequence=indent + 2, offset=indent)
        doc = rt.load(original)
        storage = doc["storage"]
        if target.s3 is not None:
            driver, _ = storage_driver(storage)
            position = list(storage).index(driver)
            del storage[driver]
            storage.insert(position, target.driver, CommentedMap(target.s3))
            if target.redirect:
                redirect = storage.get("redirect")
                if isinstance(redirect, dict):
                    redirect.update(target.redirect)
                else:
                    storage["redirect"] = CommentedMap(target.redirect)
        if target.readonly != is_readonly(storage):
            maintenance = storage.get("maintenance")
            if not isinstance(maintenance, dict):
                maintenance = storage["maintenance"] = CommentedMap()
            readonly = maintenance.get("readonly")
            if not isinstance(readonly, dict):
                readonly = maintenance["readonly"] = CommentedMap()
            readonly["enabled"] = target.readonly
        out = io.StringIO()
        rt.dump(doc, out)
        return out.getvalue()


def _indent_of(text: str) -> int:
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        if stripped and not stripped.startswith("#") and len(stripped) < len(line):
            return len(line) - len(stripped)
    return 2


BEGIN = "# BEGIN migrator (managed block: do not edit)"
END = "# END migrator"


def ruby_literal(value: object, indent: int = 0) -> str:
    """A Python value as a Ruby literal, for registry['storage'] in gitlab.rb."""
    pad = "  " * (indent + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{pad}{ruby_literal(str(k))} => {ruby_literal(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nil"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(ruby_literal(v, indent) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def strip_managed_block(text: str, path: Path) -> str:
    """gitlab.rb without our managed block; an unbalanced block is an error naming the fix."""
    begins = [i for i, line in enumerate(text.splitlines()) if line.strip() == BEGIN]
    ends = [i for i, line in enumerate(text.splitlines()) if line.strip() == END]
    if not begins and not ends:
        return text
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise InvalidInput(
            f"{path} has an unbalanced migrator block ({len(begins)} BEGIN, {len(ends)} END lines); "
            f"restore it from the backup in the state directory or remove the lines between '{BEGIN}' and '{END}'"
        )
    lines = text.splitlines(True)
    del lines[begins[0] : ends[0] + 1]
    return "".join(lines)


class OmnibusConfig(RegistryConfig):
    """Omnibus /etc/gitlab/gitlab.rb: one managed block at the end sets registry['storage'].

    The effective storage section is read from the config.yml Omnibus renders; the block holds the
    original rendered section with the target's changes, so every other storage key stays.
    """

    def __init__(self, path: Path, backup_dir: Path, rendered: Path):
        super().__init__(path, backup_dir)
        self.rendered = rendered

    @property
    def rendered_backup(self) -> Path:
        return self.backup_dir / "rendered-config.yml"

    def take_backup(self) -> None:
        strip_managed_block(self.current_text(), self.path)
        backup_once(self.rendered, self.rendered_backup)
        super().take_backup()

    def drop_backup(self) -> None:
        super().drop_backup()
        self.rendered_backup.unlink(missing_ok=True)

    def effective_storage(self) -> dict:
        strip_managed_block(self.current_text(), self.path)  # validates the block
        return _parse_yaml(_read(self.rendered), self.rendered)["storage"]

    @property
    def running_path(self) -> Path:
        return self.rendered

    def original_running_text(self) -> str:
        return _read(self.rendered_backup if self.rendered_backup.exists() else self.rendered)

    def original_running(self) -> dict:
        return _parse_yaml(self.original_running_text(), self.rendered)

    def target_storage(self, target: TargetState) -> dict:
        """The original rendered storage section with the target's changes, as plain data."""
        storage = dict(self.original_storage())
        if target.s3 is not None:
            driver, _ = storage_driver(storage)
            storage = {(target.driver if k == driver else k): (target.s3 if k == driver else v)
                       for k, v in storage.items()}
            if target.redirect:
                storage["redirect"] = dict(storage.get("redirect") or {}, **target.redirect)
        if target.readonly != is_readonly(storage):
            maintenance = dict(storage.get("maintenance") or {})
            maintenance["readonly"] = dict(maintenance.get("readonly") or {}, enabled=target.readonly)
            storage["maintenance"] = maintenance
        return storage

    def target_database(self, target: TargetState) -> Optional[dict]:
        """The original rendered database section with the target's changes, or None to leave it alone."""
        if target.s3 is None or target.database is None:
            return None
        return dict(self.original_running().get("database") or {}, **target.database)

    def render(self, target: TargetState) -> str:
        base = strip_managed_block(self.original_text(), self.path)
        if target.s3 is None and not target.readonly:
            return base
        lines = [f"registry['storage'] = {ruby_literal(self.target_storage(target))}"]
        database = self.target_database(target)
        if database is not None:
            lines.append(f"registry['database'] = {ruby_literal(database)}")
        block = "\n".join([BEGIN, *lines, END]) + "\n"
        return base + ("" if base.endswith("\n") or not base else "\n") + block

    def running_text(self, target: TargetState) -> str:
        """config.yml as Omnibus renders it from ``render(target)``: its template writes ``storage:`` (and
        ``database:``) as one line of JSON; every other line of the original rendering is kept."""
        text = self.original_running_text()
        if target.s3 is None and not target.readonly:
            return text
        text = replace_top_level(text, "storage", _json_line(self.target_storage(target)))
        database = self.target_database(target)
        if database is not None:
            text = replace_top_level(text, "database", _json_line(database), before=("gc", "redis"))
        return text

    def write_running(self, text: str) -> bool:
        """The fast path's second write: the rendered config.yml, as Omnibus would render it."""
        return write_if_changed(self.rendered, text)


def _json_line(value: dict) -> str:
    """Ruby's ``to_json`` of a hash: compact, UTF-8 as is."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def replace_top_level(text: str, key: str, value: str, before: tuple = ()) -> str:
    """``text`` with the top-level YAML entry ``key`` (its line and the indented lines under it) replaced by
    ``key: value``; when absent, inserted before the first top-level key of ``before``, else appended."""
    lines = text.splitlines(True)
    entry = f"{key}: {value}\n"
    top = [i for i, line in enumerate(lines) if line[:1] not in (" ", "\t", "#", "\n", "")]
    at = next((i for i in top if lines[i].split(":", 1)[0] == key), None)
    if at is None:
        at = next((i for i in top if lines[i].split(":", 1)[0] in before), len(lines))
        if at == len(lines) and lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        return "".join(lines[:at] + [entry] + lines[at:])
    end = next((i for i in top if i > at), len(lines))
    while end - 1 > at and not lines[end - 1].strip():  # blank lines before the next key stay
        end -= 1
    return "".join(lines[:at] + [entry] + lines[end:])


def open_config(path: Path, fmt: str, backup_dir: Path, rendered: Path) -> RegistryConfig:
    if not path.is_file():
        raise InvalidInput(f"registry config {path} does not exist or is not a file; fix registry.config")
    return OmnibusConfig(path, backup_dir, rendered) if fmt == "omnibus" else YamlConfig(path, backup_dir)


def filesystem_root(storage: dict) -> str:
    _, params = storage_driver(storage)
    return str(params.get("rootdirectory") or DEFAULT_FILESYSTEM_ROOT)


def backup_once(path: Path, backup: Path) -> None:
    """Keep the original config; a later run never overwrites it."""
    if backup.exists():
        return
    backup.parent.mkdir(parents=True, exist_ok=True)
    tmp = backup.with_suffix(".tmp")
    shutil.copy2(path, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, backup)


# A key that names a secret, whatever the file's syntax (YAML, gitlab.rb's Ruby, JSON rendered by Omnibus).
_SECRET_KEY = r"[\w.-]*(?:secret|passw(?:or)?d|token|accesskey|authorization|credential|api[_-]?key)[\w.-]*"
_QUOTED_PAIR = re.compile(rf"""(["'])({_SECRET_KEY})\1(\s*(?::|=>)\s*)(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s,}}\]]+)""",
                          re.IGNORECASE)
_RUBY_INDEX = re.compile(rf"""(\[(["']){_SECRET_KEY}\2\]\s*=\s*)(?!\{{)\S.*$""", re.IGNORECASE | re.MULTILINE)
_YAML_PAIR = re.compile(rf"^([-+ ]?[ \t]*(?:-[ \t]+)?{_SECRET_KEY}[ \t]*:[ \t]+)(?![|>][-+]?[ \t]*$)\S.*$",
                        re.IGNORECASE | re.MULTILINE)
_LOOSE_PAIR = re.compile(rf"(?<![\w.-])({_SECRET_KEY})([ \t]*[:=][ \t]+)(?!<redacted>)(?![|>][-+]?[ \t]*$)[^\s,;]+",
                         re.IGNORECASE | re.MULTILINE)  # "... secret: value" inside a log line or an error
_YAML_BLOCK = re.compile(rf"^([-+ ]?[ \t]*)(?:-[ \t]+)?{_SECRET_KEY}[ \t]*:[ \t]*([|>][-+]?)?[ \t]*$", re.IGNORECASE)


def redact(text: str) -> str:
    """A config text (or diff, log line, command output) safe to print: the value of every key that names a secret
    (``secret``, ``password``, ``token``, ``accesskey``/``secretkey``, ``Authorization`` headers, ...) replaced,
    inline or as a YAML block (a list or block scalar under the key)."""
    text = _QUOTED_PAIR.sub(r"\1\2\1\3<redacted>", text)
    text = _RUBY_INDEX.sub(r"\1<redacted>", text)
    text = _YAML_PAIR.sub(r"\1<redacted>", text)
    text = _LOOSE_PAIR.sub(r"\1\2<redacted>", text)
    lines = text.splitlines(keepends=True)
    block: Optional[tuple[int, bool]] = None  # (indent of a secret key without inline value, its value a scalar)
    for number, line in enumerate(lines):
        if not line.strip():
            continue  # a blank line inside a block scalar does not end it
        indent = len(line) - len(line.lstrip(" \t-+"))
        if block is not None and indent > block[0]:
            list_item = line.lstrip(" \t+").startswith("- ") and not re.match(r"[\w.-]+:(\s|$)", line[indent:])
            if block[1] or list_item:
                lines[number] = line[:indent] + "<redacted>" + ("\n" if line.endswith("\n") else "")
            continue
        heading = _YAML_BLOCK.match(line.rstrip("\n"))
        block = (len(heading.group(1)), bool(heading.group(2))) if heading else None
    return "".join(lines)
