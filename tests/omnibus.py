"""A GitLab Omnibus node for the tests: gitlab.rb, the fake ``gitlab-ctl`` (tests/fake_gitlab_ctl.py) on a
wrapper script, and the local docker-registry running with the config.yml that fake renders."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from migrator.local import LocalRegistry

GITLAB_RB = """external_url 'https://gitlab.example.com'
# operator's comment: keep me
registry_external_url 'https://registry.example.com'
registry['enable'] = true
"""


class FakeOmnibus:
    """gitlab.rb + fake gitlab-ctl around a LocalRegistry whose config.yml the fake renders."""

    def __init__(self, registry: LocalRegistry, workdir: Path, reconfigure_seconds: float = 0):
        self.registry = registry
        self.workdir = workdir
        self.gitlab_rb = workdir / "gitlab.rb"
        self.gitlab_rb.write_text(GITLAB_RB)
        self.template = workdir / "registry-config.yml.erb"
        text = registry.config.read_text()
        storage = re.search(r"^storage:\n(?:[ #].*\n|\n)*", text, re.M)
        self.template.write_text(text[:storage.start()] + "storage: {{storage}}\n" + text[storage.end():]
                                 + "{{database}}\n")
        self.log = workdir / "gitlab-ctl.log"
        self.ctl = workdir / "gitlab-ctl"
        settings = {"FAKE_GITLAB_RB": self.gitlab_rb, "FAKE_TEMPLATE": self.template, "FAKE_RENDERED": registry.config,
                    "FAKE_RESTART": registry.restart_command, "FAKE_DEFAULT_ROOT": registry.root,
                    "FAKE_GITLAB_CTL_LOG": self.log}
        exports = "".join(f"export {name}='{value}'\n" for name, value in settings.items())
        self.ctl.write_text(f"#!/bin/sh\n{exports}export FAKE_RECONFIGURE_SECONDS=${{FAKE_RECONFIGURE_SECONDS:-"
                            f"{reconfigure_seconds}}}\nexec {sys.executable} {Path(__file__).with_name('fake_gitlab_ctl.py')} "
                            '"$@"\n')
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
