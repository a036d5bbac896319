"""The window as clients see it: readers and writers looping against the registry for a whole migration, three
ways in one run on the same tree and registry: ``migrator run`` with ``registry.front`` (clients through nginx),
``migrator run`` without it (clients straight to the registry) and the manual procedure (read-only restart, the
aws steps, the restart onto s3; clients straight to the registry).

The figures come from the clients' own operations (``tests/clients.py``: skopeo pulls by tag and digest, slow raw
pulls of a 100 MiB layer, skopeo pushes retried until they land), not from migrator's report, which is shown
beside them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import yaml

from bench.tree import churn
from migrator.testing.local import LocalRegistry
from tests.clients import ClientLoad, Operation, large_image
from tests.nginx import Nginx
from tests.oci import Layout, push

LAYER_BYTES = 100 * 2**20
# the proxy as a registry's is usually written: one server block, proxy_pass straight to the registry
SITE = """server {
  listen 127.0.0.1:{port};
  client_max_body_size 0;
  chunked_transfer_encoding on;
  access_log {dir}/registry_access.log;
  location / {
    proxy_set_header Host $http_host;
    proxy_read_timeout 900;
    proxy_buffering off;
    proxy_request_buffering off;
    proxy_http_version 1.1;
    proxy_pass http://{registry};
  }
}
"""
SCENARIOS = ("front", "direct", "manual")


def client_figures(operations: list[Operation]) -> dict:
    """What the clients met: reads (pulls and large-layer pulls) that failed, and for how long the pull loop got
    no image; large pulls cut part-way (a refused connection is not a cut); pushes refused read-only or failed
    otherwise, and the seconds pushes were held back (for each image whose push met a refusal or an error: from
    that first attempt to the attempt that landed)."""
    reads = [op for op in operations if op.kind in ("pull", "blob")]
    pushes = [op for op in operations if op.kind == "push"]
    return {"reads": len(reads), "reads_failed": sum(not op.ok for op in reads),
            "reads_unanswered_seconds": held_back([op for op in operations if op.kind == "pull"]),
            "large_pulls": sum(op.kind == "blob" for op in reads),
            "large_pulls_cut": sum(op.kind == "blob" and not op.ok and "refused" not in op.error.lower()
                                   for op in reads),
            "pushes": sum(op.ok for op in pushes), "pushes_refused": sum(op.refused for op in pushes),
            "pushes_failed": sum(not op.ok and not op.refused for op in pushes),
            "pushes_held_seconds": held_back(pushes),
            "errors": sorted({op.error.strip().splitlines()[-1][-120:] for op in operations
                              if not op.ok and not op.refused and op.error.strip()})[:4]}


def held_back(operations: list[Operation]) -> float:
    """Seconds from each failed attempt (the first of a run of failures of one loop) to the next that succeeded."""
    held, failing_since = 0.0, None
    for op in sorted(operations, key=lambda op: op.started):
        if not op.ok:
            failing_since = op.started if failing_since is None else failing_since
        elif failing_since is not None:
            held += op.ended - failing_since
            failing_since = None
    return held


def read_only(config_text: str) -> str:
    """The manual procedure's first edit: the registry's config with ``storage.maintenance.readonly.enabled``."""
    config = yaml.safe_load(config_text)
    config["storage"].setdefault("maintenance", {})["readonly"] = {"enabled": True}
    return yaml.safe_dump(config, sort_keys=False)


def client_windows(source: Path, endpoint: str, work: Path, changes: int,
                   measure: Callable[[list[str]], dict], seed_journal: Callable[[Path], int]) -> dict:
    """Each scenario under the same client load, the churn landing as the read-only restart begins; the registry
    is given back to the filesystem (``migrator rollback``) between them."""
    registry = LocalRegistry(work / "clients-registry", endpoint, "migrator-initial", root=source).start()
    proxy = Nginx(work / "clients-nginx", SITE.replace("{registry}", f"127.0.0.1:{registry.port}")).start()
    original = registry.config.read_text()
    layout = Layout(work / "clients-seed")
    layout.image("v1", "app")
    layer = large_image(layout, "big", LAYER_BYTES)
    push(layout, "v1", registry.url[7:], "team/app:v1")
    push(layout, "big", registry.url[7:], "team/big:v1")
    results: dict = {}
    s3_config = ""  # the registry's config after a migrator run: what the manual procedure cuts over to
    try:
        for seed, scenario in enumerate(SCENARIOS, start=21):
            print(f"clients: {scenario} ...", flush=True)
            url = proxy.url if scenario == "front" else registry.url
            with ClientLoad(url, work / f"load-{scenario}", [("team/app:v1", layout.digest("v1"))],
                            ("team/big", *layer)) as load:
                time.sleep(3)
                if scenario == "manual":
                    results[scenario] = manual_procedure(registry, source, endpoint, original, s3_config, changes,
                                                         seed, measure)
                else:
                    results[scenario] = migrator_run(registry, proxy if scenario == "front" else None, work, changes,
                                                     seed, measure, seed_journal)
                    s3_config = registry.config.read_text()
                time.sleep(3)  # pushes land on s3 too
            results[scenario]["clients"] = client_figures(load.operations)
            if scenario != "manual":
                rollback = subprocess.run([sys.executable, "-m", "migrator", "--quiet", "rollback", "--yes", "--force",
                                           results[scenario].pop("plan")], capture_output=True, text=True)
                if rollback.returncode != 0:
                    raise RuntimeError(f"rollback after the {scenario} run failed: {rollback.stderr[-2000:]}")
    finally:
        proxy.stop()
        registry.stop()
    return results


def migrator_run(registry: LocalRegistry, proxy: Nginx | None, work: Path, changes: int, seed: int,
                 measure: Callable[[list[str]], dict], seed_journal: Callable[[Path], int]) -> dict:
    """``migrator run`` against ``registry`` (steering ``proxy`` when given); the report's own window figures."""
    name = "front" if proxy else "direct"
    marker = work / f"clients-churn-{name}.json"
    marker.unlink(missing_ok=True)
    settings: dict = {"config": str(registry.config), "url": registry.url, "binary": "/usr/bin/docker-registry",
                      "health_timeout_seconds": 60,
                      "restart": f"{sys.executable} -m bench.tree {registry.config} {marker} {registry.root} {changes} "
                                 f"{seed} && {registry.restart_command}"}
    if proxy:
        settings["front"] = {"nginx": str(proxy.site), "reload": proxy.reload_command}
    state = work / f"clients-{name}.state"
    subprocess.run(["rm", "-rf", str(state)], check=True)
    plan = registry.write_plan(f"clients-{name}.yml", state=str(state), registry=settings,
                               sync={"max_delete_fraction": 0.5})
    seed_journal(plan)
    run = measure([sys.executable, "-m", "migrator", "--quiet", "run", "--yes", str(plan)])
    report = json.loads((state / "report.json").read_text())
    return {"plan": str(plan), "run_wall": run["wall"], "window": report["read_only_window_seconds"],
            "pushes_refused_report": report["pushes_refused_seconds"],
            "reads_refused_report": report["reads_refused_seconds"], "restarts": len(report["restarts"]),
            "front": report.get("front"), "churn": json.loads(marker.read_text())}


def manual_procedure(registry: LocalRegistry, source: Path, endpoint: str, original: str, s3_config: str,
                     changes: int, seed: int, measure: Callable[[list[str]], dict]) -> dict:
    """As the operator's runbook has it, after a first ``aws s3 sync`` (the bucket holds the tree): config to
    read-only and a restart, ``aws s3 sync --delete`` (dry-run first), the two counts, config to s3 and a restart."""
    started = time.monotonic()
    described = churn(source, changes, seed)  # the last pushes before the flip
    registry.config.write_text(read_only(original))
    subprocess.run(registry.restart_command, shell=True, check=True)
    base = ["--endpoint-url", endpoint, "--exclude", "*/_uploads/*"]
    target = "s3://migrator-initial/docker"
    for command in (["aws", "s3", "sync", f"{source}/docker", target, "--delete", "--dryrun", *base],
                    ["aws", "s3", "sync", f"{source}/docker", target, "--delete", "--only-show-errors", *base],
                    ["sh", "-c", f"find {source}/docker -type f -not -path '*/_uploads/*' | wc -l"],
                    ["sh", "-c", f"aws s3 ls --recursive {target}/ --endpoint-url {endpoint} | grep -v /_uploads/ "
                                 "| wc -l"]):
        measure(command)
    registry.config.write_text(s3_config)
    subprocess.run(registry.restart_command, shell=True, check=True)
    return {"run_wall": time.monotonic() - started, "churn": described, "restarts": 2}


def render_clients(clients: dict, add: Callable[[str], None]) -> None:
    add("### The window as clients see it (readers and writers looping for the whole migration)\n")
    add("| how | reads failed | reads unanswered s | large pulls cut | pushes refused (read-only) | pushes failed "
        "otherwise | pushes held back s | report's pushes refused s | wall s |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    labels = {"front": "**migrator run, `registry.front`** (through nginx)", "direct": "migrator run, no front",
              "manual": "manual procedure (two restarts, aws steps)"}
    for scenario in SCENARIOS:
        row = clients[scenario]
        seen = row["clients"]
        report = row.get("pushes_refused_report")
        add(f"| {labels[scenario]} | {seen['reads_failed']} of {seen['reads']} | {seen['reads_unanswered_seconds']:.2f} | "
            f"{seen['large_pulls_cut']} of {seen['large_pulls']} | {seen['pushes_refused']} | {seen['pushes_failed']} | "
            f"{seen['pushes_held_seconds']:.2f} | {'' if report is None else f'{report:.2f}'} | {row['run_wall']:.1f} |")
    add("\nClients: skopeo pulls by tag and by digest in a loop, two raw pulls of a 100 MiB layer read at 20 MiB/s (one "
        "is always under way; a failed one is retried at once), skopeo pushes retried every 0.2 s until they land. "
        "*Reads unanswered*: from a failed pull to the next that succeeded. *Pushes held back*: from a failed push "
        "attempt to the one that landed. Errors other than read-only refusals: "
        + "; ".join(f"{scenario}: {' / '.join(clients[scenario]['clients']['errors']) or 'none'}"
                    for scenario in SCENARIOS) + ".\n")
