"""What an operator watches and keeps: `status --json` while a run goes on, report.html in a real browser, and no
probe leftovers on either backend."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import listing, run_cli
from PIL import Image
from terminal import Terminal
from test_e2e import push_images

from migrator.html_report import PUSHES_COLOUR, WINDOW_COLOUR
from migrator.registry_http import RegistryClient

pytestmark = pytest.mark.slow

WINDOW_PHASES = {"readonly_on", "final_sync", "verify_window", "cutover", "readonly_off"}


def test_status_json_follows_a_run_and_report_html_shows_its_window(local_registry, s3, bucket, tmp_path):
    client = RegistryClient(local_registry.url)
    push_images(client, 6, seed=21)
    plan = local_registry.write_plan(registry={"config": str(local_registry.config), "url": local_registry.url,
                                               "restart": f"sleep 1.5; {local_registry.restart_command}"})
    run = subprocess.Popen([sys.executable, "-m", "migrator", "--quiet", "run", "--yes", str(plan)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    snapshots = []
    deadline = time.monotonic() + 120
    while run.poll() is None and time.monotonic() < deadline:
        status = run_cli("status", "--json", plan)
        assert status.returncode == 0, status.stderr
        snapshots.append(json.loads(status.stdout))
        if snapshots[-1]["read_only"] and snapshots[-1]["phase"] in WINDOW_PHASES:
            break
        time.sleep(0.1)
    out, err = run.communicate(timeout=180)
    assert run.returncode == 0, err
    running = [s for s in snapshots if s["running"]]
    assert running and all(s["phase"] for s in running)
    assert any(s["progress"]["walked"] or s["progress"]["uploaded_objects"] for s in running), snapshots
    in_window = [s for s in running if s["read_only"]]
    assert in_window and in_window[-1]["read_only_since"] and in_window[-1]["phase"] in WINDOW_PHASES
    finished = json.loads(run_cli("status", "--json", plan).stdout)
    assert not finished["running"] and finished["outcome"] == "done" and finished["read_only"] is False
    paths = ("report:", "page:", "undo:", "registry:")  # lines that end in a path or URL
    assert all(len(line) <= 80 for line in out.splitlines() if not line.startswith(paths)), out

    assert not [k for k in listing(s3, bucket) if "migrator-probe" in k], "probe leftovers in the bucket"
    assert not (local_registry.root / "docker/registry/v2/repositories/migrator-probe").exists()
    page = plan.parent / "plan.state" / "report.html"
    report = json.loads((plan.parent / "plan.state" / "report.json").read_text())
    assert f'{report["read_only_window_seconds"]:.1f} s' in page.read_text()
    assert not re.search(r"<script|<link|\b(src|href)=", page.read_text())  # self-contained: nothing to fetch
    screenshot = screenshot_of(page, tmp_path)
    colour = tuple(int(WINDOW_COLOUR[i:i + 2], 16) for i in (1, 3, 5))
    raw = Image.open(screenshot).convert("RGB").tobytes()
    shaded = sum(1 for i in range(0, len(raw), 3) if all(abs(a - (b * 0.45 + 255 * 0.55)) < 12
                                                         for a, b in zip(raw[i:i + 3], colour)))
    assert shaded > 200, "the read-only window is not visible in the timeline"
    pushes = tuple(int(PUSHES_COLOUR[i:i + 2], 16) for i in (1, 3, 5))
    refused = sum(1 for i in range(0, len(raw), 3) if all(abs(a - b) < 12 for a, b in zip(raw[i:i + 3], pushes)))
    assert refused > 100, "the pushes-refused row is not visible in the timeline"
    assert f'{report["pushes_refused_seconds"]:.1f} s</b>' in page.read_text()
    again = run_cli("report", "--html", tmp_path / "copy.html", plan)
    assert again.returncode == 0 and (tmp_path / "copy.html").read_text() == page.read_text()


def screenshot_of(page: Path, tmp_path: Path) -> Path:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (scripts/setup.sh installs Debian's chromium): report.html not rendered")
    target = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'chromium-profile'}", "--hide-scrollbars",
                    "--window-size=1280,1000", f"--screenshot={target}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    return target


def test_report_estimates_the_window_run_then_has(local_registry, tmp_path):
    """Restarts included: the estimate's restart comes from one timed restart (what an operator knows of theirs)."""
    push_images(RegistryClient(local_registry.url), 8, seed=23)
    started = time.monotonic()
    subprocess.run(local_registry.restart_command, shell=True, check=True)
    restart = time.monotonic() - started
    plan = local_registry.write_plan(registry={"config": str(local_registry.config), "url": local_registry.url,
                                               "restart": local_registry.restart_command, "restart_seconds": restart})
    assert run_cli("sync", plan).returncode == 0  # pre-seeded days ahead, as operators do
    out = tmp_path / "estimate.json"
    assert run_cli("report", plan, "--json", out).returncode == 0
    estimate = json.loads(out.read_text())["estimated_read_only_window_seconds"]
    assert run_cli("run", "--yes", plan).returncode == 0
    measured = json.loads((plan.parent / "plan.state" / "report.json").read_text())["read_only_window_seconds"]
    print(f"estimated {estimate}, measured {measured:.2f}s")
    assert measured / 2 <= estimate["total"] <= measured * 2, (estimate, measured)


def test_status_watch_without_a_run_waits_for_one_until_ctrl_c(tree, make_plan):
    watch = Terminal("status", "--watch", "--interval", "0.2", make_plan(tree.root))
    watch.wait_for(r"outcome: not started\nwaiting for a run to start \(Ctrl-C to stop\)")
    watch.interrupt()
    assert watch.exit_code(timeout=30) == 0, watch.text()
