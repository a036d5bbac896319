"""A stand-in for Omnibus' ``gitlab-ctl reconfigure``: renders registry['storage'] from gitlab.rb into the
registry's config.yml (the whole storage section, as Omnibus does), then restarts the registry.

usage: fake_gitlab_ctl.py reconfigure --gitlab-rb RB --template T --rendered C -- RESTART-COMMAND...
The template is config.yml as Omnibus would render it without registry['storage'] (filesystem).
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys

import yaml


def storage_from_gitlab_rb(text: str):
    """The last ``registry['storage'] = {...}`` assignment, as Python data (None when absent)."""
    matches = list(re.finditer(r"^registry\['storage'\]\s*=\s*(\{.*?^\})", text, re.S | re.M))
    if not matches:
        return None
    ruby = matches[-1].group(1)
    python = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnil\b", "None", ruby)))
    return ast.literal_eval(python.replace("=>", ":"))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["reconfigure"])
    parser.add_argument("--gitlab-rb", required=True)
    parser.add_argument("--template", required=True)
    parser.add_argument("--rendered", required=True)
    argv = sys.argv[1:]
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    restart = argv[split + 1:]
    config = yaml.safe_load(open(args.template))
    storage = storage_from_gitlab_rb(open(args.gitlab_rb).read())
    if storage is not None:
        config["storage"] = storage
    with open(args.rendered, "w") as handle:
        yaml.safe_dump(config, handle, sort_keys=False)
    return subprocess.call(restart)


if __name__ == "__main__":
    sys.exit(main())
