"""Verification: the bucket listed key by key against the source. It never trusts the journal."""

from __future__ import annotations

import hashlib
import heapq
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from migrator.layout import Shard, blob_digest, is_blob_data, shards
from migrator.march import march, md5_of
from migrator.s3 import Bucket, ListedObject, list_shard
from migrator.walker import SourceFile, read_bytes, walk_shard

FIRST_KEYS = 50


@dataclass
class VerifyResult:
    """Counts exclude ``_uploads``; the key lists hold the first few of each kind."""

    source_objects: int = 0
    bucket_objects: int = 0
    missing: int = 0
    extra: int = 0
    mismatched: int = 0
    deep_checked: int = 0
    deep_failed: int = 0
    missing_keys: list = field(default_factory=list)
    extra_keys: list = field(default_factory=list)
    mismatched_keys: list = field(default_factory=list)
    deep_failed_keys: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        counts_match = self.source_objects == self.bucket_objects
        return counts_match and not (self.missing or self.extra or self.mismatched or self.deep_failed)

    def add(self, other: VerifyResult) -> None:
        for name in ("source_objects", "bucket_objects", "missing", "extra", "mismatched", "deep_checked", "deep_failed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("missing_keys", "extra_keys", "mismatched_keys", "deep_failed_keys"):
            setattr(self, name, (getattr(self, name) + getattr(other, name))[:FIRST_KEYS])

    def to_json(self) -> dict:
        return asdict(self) | {"ok": self.ok}


def _note(result: VerifyResult, kind: str, key: str) -> None:
    setattr(result, kind, getattr(result, kind) + 1)
    keys = getattr(result, kind + "_keys")
    if len(keys) < FIRST_KEYS:
        keys.append(key)


class Verifier:
    """Diffs source and bucket shard by shard; ``deep`` re-hashes blobs (all, or a uniform sample)."""

    def __init__(self, source: Path, bucket: Bucket, shard_workers: int, workers: int,
                 deep: bool = False, sample: Optional[int] = None, seed: Optional[int] = None):
        self.source = source
        self.bucket = bucket
        self.shard_workers = shard_workers
        self.workers = workers
        self.deep = deep or sample is not None
        self.sample_size = sample
        self.random = random.Random(seed)
        self._lock = threading.Lock()
        self._sample: list[tuple[float, str]] = []  # max-heap of (-priority, rel)

    def run(self) -> VerifyResult:
        total = VerifyResult()
        with ThreadPoolExecutor(self.shard_workers, thread_name_prefix="verify") as pool:
            for result in pool.map(self.verify_shard, shards()):
                total.add(result)
        if self.sample_size is not None:
            self._check_sample(total)
        return total

    def verify_shard(self, shard: Shard) -> VerifyResult:
        result = VerifyResult()
        for src, obj in march(walk_shard(self.source, shard), list_shard(self.bucket, shard)):
            if src is not None:
                result.source_objects += 1
            if obj is not None:
                result.bucket_objects += 1
                if self.deep and is_blob_data(obj.rel):
                    self._deep_or_sample(obj.rel, result)
            if obj is None:
                _note(result, "missing", src.rel)
            elif src is None:
                _note(result, "extra", obj.rel)
            elif not self._same(src, obj):
                _note(result, "mismatched", src.rel)
        return result

    def _same(self, src: SourceFile, obj: ListedObject) -> bool:
        if src.size != obj.size:
            return False
        if is_blob_data(src.rel):
            return True
        try:
            local = md5_of(read_bytes(self.source, src.rel))
        except FileNotFoundError:
            return False
        remote = obj.md5
        if remote is None:  # multipart or KMS ETag: fetch the bytes
            body = self.bucket.client.get_object(Bucket=self.bucket.settings.name, Key=self.bucket.key(obj.rel))["Body"]
            remote = md5_of(body.read())
        return local == remote

    def _deep_or_sample(self, rel: str, result: VerifyResult) -> None:
        """Every blob is checked as it is listed; a sample is kept (N lowest random priorities) for later."""
        if self.sample_size is None:
            result.deep_checked += 1
            if not self._blob_matches(rel):
                _note(result, "deep_failed", rel)
            return
        with self._lock:
            priority = self.random.random()
            if len(self._sample) < self.sample_size:
                heapq.heappush(self._sample, (-priority, rel))
            elif -self._sample[0][0] > priority:
                heapq.heapreplace(self._sample, (-priority, rel))

    def _blob_matches(self, rel: str) -> bool:
        digest = hashlib.sha256()
        body = self.bucket.client.get_object(Bucket=self.bucket.settings.name, Key=self.bucket.key(rel))["Body"]
        for chunk in body.iter_chunks(1024 * 1024):
            digest.update(chunk)
        return digest.hexdigest() == blob_digest(rel)

    def _check_sample(self, total: VerifyResult) -> None:
        rels = sorted(rel for _, rel in self._sample)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="deep") as pool:
            for rel, ok in zip(rels, pool.map(self._blob_matches, rels)):
                total.deep_checked += 1
                if not ok:
                    _note(total, "deep_failed", rel)
