"""A GitLab Omnibus node on local parts, for the tests and the benchmark: gitlab.rb, a stand-in for Omnibus'
``gitlab-ctl`` (``python -m migrator.testing.omnibus_fake ARGS``, behind a wrapper script), and a local docker-registry
running with the config.yml that stand-in renders. The stand-in is faithful where migrator depends on it:

- ``reconfigure``: a Chef run of ``FAKE_RECONFIGURE_SECONDS`` (default 0), then config.yml rendered from gitlab.rb
  as Omnibus' ``registry-config.yml.erb`` does: ``storage: <registry['storage'].to_json>`` (default: filesystem at
  ``FAKE_DEFAULT_ROOT``, plus the ``delete`` key Omnibus adds from ``storage_delete_enabled``) and, when
  ``registry['database']`` is set, ``database: <to_json>``; every other line from the template. The registry is
  restarted only if the rendered file changed (Chef's ``notifies :restart``).
- ``restart registry``: the registry restart alone (runit), seconds.

Settings come from the environment (a wrapper script exports them): FAKE_GITLAB_RB, FAKE_TEMPLATE (config.yml with
a ``storage: {{storage}}`` line and a ``{{database}}`` line), FAKE_RENDERED, FAKE_RESTART (the shell command that
restarts the registry), FAKE_DEFAULT_ROOT, FAKE_GITLAB_CTL_LOG (one line per action, with the time).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from migrator.testing.local import LocalRegistry

GITLAB_RB = """external_url 'https://gitlab.example.com'
# operator's comment: keep me
registry_external_url 'https://registry.example.com'
registry['enable'] = true
"""


def assignment(text: str, key: str):
    """The last ``registry['<key>'] = {...}`` in gitlab.rb, as Python data (None when absent)."""
    matches = list(re.finditer(rf"^registry\['{key}'\]\s*=\s*(\{{[^\n]*\}}|\{{.*?^\}})\s*$", text, re.S | re.M))
    if not matches:
        return None
    ruby = matches[-1].group(1)
    python = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnil\b", "None", ruby)))
    return ast.literal_eval(python.replace("=>", ":"))


def to_json(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def render() -> str:
    gitlab_rb = open(os.environ["FAKE_GITLAB_RB"]).read()
    storage = assignment(gitlab_rb, "storage") or {"filesystem": {"rootdirectory": os.environ["FAKE_DEFAULT_ROOT"]}}
    storage.setdefault("delete", {"enabled": True})
    database = assignment(gitlab_rb, "database")
    lines = []
    for line in open(os.environ["FAKE_TEMPLATE"]).read().splitlines(True):
        if line.strip() == "storage: {{storage}}":
            lines.append(f"storage: {to_json(storage)}\n")
        elif line.strip() == "{{database}}":
            if database is not None:
                lines.append(f"database: {to_json(database)}\n")
        else:
            lines.append(line)
    return "".join(lines)


def log(message: str) -> None:
    with open(os.environ["FAKE_GITLAB_CTL_LOG"], "a") as handle:
        handle.write(f"{time.time():.3f} {message}\n")


def restart_registry() -> int:
    log("restart registry")
    return subprocess.call(os.environ["FAKE_RESTART"], shell=True)


def main(argv: list[str]) -> int:
    if argv == ["restart", "registry"]:
        return restart_registry()
    if argv != ["reconfigure"]:
        print(f"fake gitlab-ctl: unsupported {' '.join(argv)}", file=sys.stderr)
        return 2
    log("reconfigure started")
    time.sleep(float(os.environ.get("FAKE_RECONFIGURE_SECONDS", "0")))
    rendered = os.environ["FAKE_RENDERED"]
    text = render()
    try:
        changed = open(rendered).read() != text
    except FileNotFoundError:
        changed = True
    if changed:
        with open(rendered, "w") as handle:
            handle.write(text)
    log(f"reconfigure rendered config.yml: {'changed' if changed else 'unchanged'}")
    return restart_registry() if changed else 0


class FakeOmnibus:
    """gitlab.rb + fake gitlab-ctl around a LocalRegistry whose config.yml the fake renders."""

    def __init__(self, registry: LocalRegistry, workdir: Path, reconfigure_seconds: float = 0,
                 restart: str | None = None):
        self.registry = registry
        self.workdir = workdir
        self.gitlab_rb = workdir / "gitlab.rb"
        self.gitlab_rb.write_text(GITLAB_RB)
        self.template = workdir / "registry-config.yml.erb"
        text = registry.config.read_text()
        storage = re.search(r"^storage:\n(?:[ #].*\n|\n)*", text, re.M)
        assert storage is not None, f"{registry.config} has no storage section"
        self.template.write_text(text[:storage.start()] + "storage: {{storage}}\n" + text[storage.end():]
                                 + "{{database}}\n")
        self.log = workdir / "gitlab-ctl.log"
        self.ctl = workdir / "gitlab-ctl"
        settings = {"FAKE_GITLAB_RB": self.gitlab_rb, "FAKE_TEMPLATE": self.template, "FAKE_RENDERED": registry.config,
                    "FAKE_RESTART": restart or registry.restart_command, "FAKE_DEFAULT_ROOT": registry.root,
                    "FAKE_GITLAB_CTL_LOG": self.log}
        exports = "".join(f"export {name}={shlex.quote(str(value))}\n" for name, value in settings.items())
        self.ctl.write_text(f"#!/bin/sh\n{exports}export FAKE_RECONFIGURE_SECONDS=${{FAKE_RECONFIGURE_SECONDS:-"
                            f"{reconfigure_seconds}}}\nexec {sys.executable} -m migrator.testing.omnibus_fake \"$@\"\n")
        self.ctl.chmod(0o755)
        self.reconfigure()  # the node as installed: config.yml rendered by Omnibus from gitlab.rb
        self.log.write_text("")

    def reconfigure(self) -> None:
        subprocess.run([str(self.ctl), "reconfigure"], check=True, env=dict(os.environ, FAKE_RECONFIGURE_SECONDS="0"))

    def actions(self) -> list[tuple[float, str]]:
        """(time, action) of every gitlab-ctl call since set-up."""
        return [(float(line.split(" ", 1)[0]), line.split(" ", 1)[1]) for line in self.log.read_text().splitlines()]

    def write_plan(self, **registry) -> Path:
        settings = {"config": str(self.gitlab_rb), "gitlab_ctl": str(self.ctl), "url": self.registry.url,
                    "rendered_config": str(self.registry.config), "health_timeout_seconds": 30,
                    "binary": "/usr/bin/docker-registry"}
        return self.registry.write_plan(registry=dict(settings, **registry))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
