"""Drills: SIGKILL at ≥ 20 moments over every phase, and a migration under live pushes and pulls."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml
from conftest import UPLOADS, bucket_contents, source_files
from test_e2e import assert_all_pull, push_images, storage_of

from migrator.registry_http import RegistryClient, RegistryError

pytestmark = pytest.mark.slow

# Named crash points in the order a run meets them (see migrator/failpoints.py), each with the end of its
# phase as a backstop: a phase killed before it is recorded is redone, so every run stops inside its phase.
KILL_POINTS = [
    ("multipart@1", "initial_sync"), ("walk@40", "initial_sync"), ("intent-committed@2", "initial_sync"),
    ("uploaded@5", "initial_sync"), ("before-done:initial_sync", "initial_sync"),
    ("walk@150", "delta_passes"), ("before-done:delta_passes", "delta_passes"),
    ("before-done:online_verification", "online_verification"),
    ("config-written@1", "readonly_on"), ("restarted@1", "readonly_on"), ("before-done:readonly_on", "readonly_on"),
    ("deleted@1", "final_sync"), ("before-done:final_sync", "final_sync"),
    ("before-done:verify_window", "verify_window"),
    ("shadow-started@1", "cutover"), ("before-done:cutover", "cutover"),
    ("config-written@1", "readonly_off"), ("restarted@1", "readonly_off"), ("writes-accepted@1", "readonly_off"),
    ("before-done:readonly_off", "readonly_off"),
]


def run_migrator(plan, env_extra=None, kill_after=None) -> int:
    """`migrator run --yes PLAN`, optionally SIGKILLed after ``kill_after`` seconds; stderr goes to <plan>.stderr."""
    env = dict(os.environ, **(env_extra or {}))
    with open(f"{plan}.stderr", "a") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "migrator", "--quiet", "run", "--yes", str(plan)],
                                   stdout=subprocess.DEVNULL, stderr=stderr, env=env, text=True)
    if kill_after is not None:
        try:
            process.wait(kill_after)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
    process.wait(600)
    return process.returncode


def test_crash_anywhere_then_resume(local_registry, s3, bucket):
    seed = int(os.environ.get("MIGRATOR_TEST_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    client = RegistryClient(local_registry.url)
    pushed = push_images(client, 24, seed=seed)
    pushed[("big/image", "v1")] = client.push_image("big/image", "v1", [rng.randbytes(11 * 1024 * 1024)])
    original = local_registry.config.read_text()
    plan = local_registry.write_plan(sync={"workers": 2, "shard_workers": 2, "multipart_threshold_mb": 1,
                                           "multipart_chunksize_mb": 5, "max_delete_fraction": 0.5})
    kills, log = 0, []
    for point, phase in KILL_POINTS:
        failpoints = {"MIGRATOR_FAILPOINT": f"{point},before-done:{phase}"}
        if point == "deleted@1":  # a tag deleted just before the flip: the final pass has something to delete
            tag = local_registry.root / "docker/registry/v2/repositories/team0/app0/_manifests/tags/v0"
            pushed.pop(("team0/app0", "v0"))
            subprocess.run(["rm", "-rf", str(tag)], check=True)
        if rng.random() < 0.4:  # first a kill at a random moment inside the same phase
            code = run_migrator(plan, failpoints, kill_after=rng.uniform(0.2, 2.0))
            log.append((f"random in {phase}", code))
            kills += code == -signal.SIGKILL
        code = run_migrator(plan, failpoints)
        log.append((point, code))
        kills += code == -signal.SIGKILL
    final = run_migrator(plan)
    assert final == 0, f"seed {seed}: {log}"
    assert kills >= 20, f"seed {seed}: only {kills} kills: {log}"
    shadows = subprocess.run(["pgrep", "-f", str(plan.parent / "plan.state" / "shadow")], capture_output=True, text=True)
    assert not shadows.stdout.split(), "a shadow registry outlived the run that started it"

    storage = storage_of(local_registry.config)
    assert "s3" in storage and not (storage.get("maintenance") or {}).get("readonly", {}).get("enabled"), seed
    assert (plan.parent / "plan.state/config-backup/config.yml").read_text() == original
    copied = {k: v for k, v in bucket_contents(s3, bucket, "reg/").items() if not UPLOADS.match(k)}
    assert copied == source_files(local_registry.root), f"seed {seed}: bucket differs from the source"
    assert_all_pull(client, pushed)
    print(f"crash drill seed {seed}: {kills} kills: {log}")


class Writer(threading.Thread):
    """Pushes new images and moves tags; remembers what each push answered."""

    def __init__(self, url: str, seed: int):
        super().__init__(daemon=True)
        self.client = RegistryClient(url, timeout=10)
        self.rng = random.Random(seed)
        self.stopped = threading.Event()
        self.ok: dict = {}  # (repo, tag) -> digest of the last push that got 201
        self.ok_digests: set = set()
        self.unsure: dict = {}  # (repo, tag) -> digests pushed without an answer after the last success
        self.refused: list = []  # (repo, tag, digest) that got 405
        self.errors = 0

    def run(self) -> None:
        index = 0
        while not self.stopped.is_set():
            index += 1
            repository = f"live{self.rng.randrange(3)}/svc"
            tag = f"t{self.rng.randrange(6)}"  # few tags: most pushes move one
            layers = [self.rng.randbytes(self.rng.randint(200, 20_000))]
            digest = None
            try:
                digest = self.client.push_image(repository, tag, layers)
                self.ok[(repository, tag)] = digest
                self.ok_digests.add(digest)
                self.unsure.pop((repository, tag), None)
            except RegistryError as exc:
                if exc.status == 405:
                    self.refused.append((repository, tag))
                else:
                    self.errors += 1
                    self.unsure.setdefault((repository, tag), set()).add("any")
            except OSError:
                self.errors += 1
                self.unsure.setdefault((repository, tag), set()).add("any")
            time.sleep(0.01)


class Reader(threading.Thread):
    """Pulls images the writer pushed, by tag and by digest; counts failures by kind."""

    def __init__(self, url: str, writer: Writer, seed: int):
        super().__init__(daemon=True)
        self.client = RegistryClient(url, timeout=10)
        self.writer = writer
        self.rng = random.Random(seed)
        self.stopped = threading.Event()
        self.ok = 0
        self.down = 0  # connection refused/reset: the registry was restarting
        self.http_errors: list = []

    def run(self) -> None:
        while not self.stopped.is_set():
            digests = sorted(self.writer.ok_digests)
            if not digests:
                time.sleep(0.05)
                continue
            digest = self.rng.choice(digests)
            repository = next(r for (r, _t), d in list(self.writer.ok.items()) if d == digest) \
                if digest in self.writer.ok.values() else None
            if repository is None:
                continue
            try:
                self.client.pull_image(repository, digest)
                self.ok += 1
            except RegistryError as exc:
                self.http_errors.append(str(exc))
            except OSError:
                self.down += 1
            time.sleep(0.01)


def test_migration_under_live_traffic(local_registry):
    seed = int(os.environ.get("MIGRATOR_TEST_SEED", random.randrange(10**6)))
    plan = local_registry.write_plan(sync={"workers": 4, "shard_workers": 4, "max_delta_passes": 3,
                                           "delta_stop_below": 5, "max_delete_fraction": 0.5})
    writer = Writer(local_registry.url, seed)
    reader = Reader(local_registry.url, writer, seed + 1)
    writer.start()
    time.sleep(2)
    reader.start()
    code = run_migrator(plan)
    time.sleep(1)  # a few writes on the new backend too
    writer.stopped.set()
    reader.stopped.set()
    writer.join(30)
    reader.join(30)
    assert code == 0, f"seed {seed}: {open(f'{plan}.stderr').read()}"
    assert "s3" in yaml.safe_load(local_registry.config.read_text())["storage"]
    final_pass = json.loads((plan.parent / "plan.state" / "report.json").read_text())["final_pass"]
    assert final_pass["method"] == "change feed (fanotify)", f"seed {seed}: {final_pass}"

    client = RegistryClient(local_registry.url)
    for digest in writer.ok_digests:  # every push that got 201 pulls by digest from the bucket
        repository = next(r for (r, _t), d in writer.ok.items() if d == digest) if digest in writer.ok.values() else None
        if repository:
            assert client.pull_image(repository, digest) == digest, f"seed {seed}"
    for (repository, tag), digest in writer.ok.items():  # every tag points where its last good push put it
        served = client.manifest_digest(repository, tag)
        assert served == digest or (repository, tag) in writer.unsure, f"seed {seed}: {repository}:{tag}"
    assert writer.refused, f"seed {seed}: no push met the read-only window"
    assert not reader.http_errors, f"seed {seed}: reads failed with HTTP errors: {reader.http_errors[:5]}"
    print(f"live traffic seed {seed}: {len(writer.ok_digests)} pushes ok, {len(writer.refused)} refused (405), "
          f"{writer.errors} failed while restarting; {reader.ok} pulls ok, {reader.down} failed while restarting")
