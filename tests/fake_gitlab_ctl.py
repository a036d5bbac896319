"""A stand-in for Omnibus' ``gitlab-ctl``, faithful where migrator depends on it.

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
import subprocess
import sys
import time


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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
