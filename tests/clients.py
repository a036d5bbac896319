"""Registry clients that keep working for the whole of a migration, as a busy registry's are: skopeo pulls by tag
and by digest, a raw HTTP pull of a large layer read slowly (so one is always in flight across any restart), and
skopeo pushes retried until they land. Each operation is kept with its start, end and outcome: the test then says
which of them failed and when, against the run's own window."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from tests.oci import Layout, skopeo

READ_ONLY_ANSWERS = ("405", "unsupported", "read-only", "read only", "method not allowed")


@dataclasses.dataclass
class Operation:
    kind: str  # pull, blob, push
    what: str
    started: float
    ended: float = 0.0
    ok: bool = False
    refused: bool = False  # the registry's own read-only answer to a push
    error: str = ""


class ClientLoad:
    """Readers and writers looping against ``url`` (host:port, plain http) until ``stop``."""

    def __init__(self, url: str, work: Path, images: list[tuple[str, str]], layer: Optional[tuple[str, str, int]],
                 blob_rate: int = 20 * 1024 * 1024, blob_readers: int = 2):
        self.url = url.removeprefix("http://").rstrip("/")
        self.work = work
        self.images = images  # (repository:tag, manifest digest) pushed before the load starts
        self.layer = layer  # (repository, digest, size) of the large layer to read slowly
        self.blob_rate = blob_rate  # bytes per second a slow reader takes
        self.blob_readers = blob_readers  # slow readers, started a share of one pull's time apart
        self.operations: list[Operation] = []
        self.pushed: list[str] = []  # references whose push landed
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._pulls, daemon=True),
                         threading.Thread(target=self._pushes, daemon=True)]
        if layer is not None:
            pull_seconds = layer[2] / blob_rate
            self._threads += [threading.Thread(target=self._blobs, args=(pull_seconds * reader / blob_readers,),
                                               daemon=True) for reader in range(blob_readers)]

    def __enter__(self) -> ClientLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=300)

    def _record(self, operation: Operation) -> None:
        operation.ended = time.time()
        with self._lock:
            self.operations.append(operation)

    def _pulls(self) -> None:
        turn = 0
        while not self._stop.is_set():
            reference, digest = self.images[turn % len(self.images)]
            by = reference if turn % 2 == 0 else f"{reference.split(':')[0]}@{digest}"
            operation = Operation("pull", by, time.time())
            done = skopeo("copy", "--all", "--src-tls-verify=false", f"docker://{self.url}/{by}",
                          f"oci:{self.work / f'pull-{turn % 4}'}:pulled")
            operation.ok = done.returncode == 0
            operation.error = done.stderr.strip()[-300:]
            self._record(operation)
            turn += 1

    def _blobs(self, delay: float) -> None:
        """Pull the large layer slowly, again and again, from ``delay`` seconds on (readers are staggered so that,
        across any moment shorter than a pull's share, one pull is under way)."""
        assert self.layer is not None
        repository, digest, size = self.layer
        chunk = 256 * 1024
        self._stop.wait(delay)
        while not self._stop.is_set():
            operation = Operation("blob", digest, time.time())
            received = 0
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/{repository}/blobs/{digest}", timeout=60) as answer:
                    while True:
                        data = answer.read(chunk)
                        if not data:
                            break
                        received += len(data)
                        time.sleep(len(data) / self.blob_rate)
            except (OSError, urllib.error.URLError) as exc:
                operation.error = f"{type(exc).__name__}: {exc}"
            operation.ok = received == size
            if not operation.ok and not operation.error:
                operation.error = f"cut after {received} of {size} bytes"
            self._record(operation)

    def _pushes(self) -> None:
        layout = Layout(self.work / "push-layout")
        number = 0
        while not self._stop.is_set():
            tag = f"load-{number}"
            layout.image(tag, f"load/{number}")
            reference = f"load/pushed:{tag}"
            while not self._stop.is_set():  # retried until it lands, as a CI job's retry would
                operation = Operation("push", reference, time.time())
                done = skopeo("copy", "--dest-tls-verify=false", f"oci:{layout.path}:{tag}",
                              f"docker://{self.url}/{reference}")
                operation.ok = done.returncode == 0
                operation.error = done.stderr.strip()[-300:]
                operation.refused = not operation.ok and any(word in operation.error.lower()
                                                             for word in READ_ONLY_ANSWERS)
                self._record(operation)
                if operation.ok:
                    with self._lock:
                        self.pushed.append(reference)
                    break
                time.sleep(0.2)
            number += 1
            time.sleep(0.2)

    def failures(self, refused_from: Optional[float] = None, refused_until: Optional[float] = None,
                 also_refusals: tuple[str, ...] = ()) -> list[Operation]:
        """Every operation that failed, but for pushes refused read-only inside [refused_from, refused_until] (or
        answered with one of ``also_refusals`` there)."""
        def excused(operation: Operation) -> bool:
            refused = operation.refused or any(answer in operation.error for answer in also_refusals)
            return (refused and refused_from is not None and refused_until is not None
                    and operation.started >= refused_from - 0.5 and operation.ended <= refused_until + 0.5)
        return [operation for operation in self.operations if not operation.ok and not excused(operation)]

    def moments_without_a_pull_across(self, spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
        """The (start, end) spans that no successful large-layer pull began before and ended after."""
        pulls = [operation for operation in self.operations if operation.kind == "blob" and operation.ok]
        return [(start, end) for start, end in spans
                if not any(pull.started < start and pull.ended > end for pull in pulls)]

    def summary(self) -> dict:
        kinds: dict = {}
        for operation in self.operations:
            counts = kinds.setdefault(operation.kind, {"ok": 0, "refused": 0, "failed": 0})
            counts["ok" if operation.ok else "refused" if operation.refused else "failed"] += 1
        return kinds


def large_image(layout: Layout, tag: str, size: int) -> tuple[str, int]:
    """An image whose one layer is about ``size`` random bytes, gzipped as clients expect (pulled slowly by the
    load); returns the layer's digest and size."""
    raw = os.urandom(size)
    layer = layout.blob(gzip.compress(raw, compresslevel=1, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip")
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    config = layout.blob(json.dumps({"architecture": "amd64", "os": "linux",
                                     "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode(),
                         "application/vnd.oci.image.config.v1+json")
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": config, "layers": [layer]}).encode()
    layout._ref(tag, layout.blob(manifest, "application/vnd.oci.image.manifest.v1+json"))
    return layer["digest"], layer["size"]
