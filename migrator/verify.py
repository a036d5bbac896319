"""Verification: the bucket listed key by key against the source. It never trusts the journal."""

from __future__ import annotations

import hashlib
import heapq
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Callable, Iterable, Optional

from migrator.journal import Journal, JournalRow
from migrator.layout import Shard, blob_digest, is_blob_data, shards
from migrator.march import march, md5_of
from migrator.s3 import Bucket, ListedObject, list_shard
from migrator.sync import Progress
from migrator.walker import SourceFile, read_bytes, walk_shard

FIRST_KEYS = 50


class Difference(str, Enum):
    """How a bucket object differs from the source file at the same path."""

    MISSING = "missing"  # in the source, not in the bucket
    EXTRA = "extra"  # in the bucket, gone from the source
    SIZE = "size"
    CONTENT = "content"  # same size, other bytes (not decided for a blob's data: written once, named by its digest)


def difference(rel: str, source_size: Optional[int], bucket_size: Optional[int], source_md5: Callable[[], str],
               bucket_md5: Callable[[], Optional[str]]) -> Optional[Difference]:
    """THE rule for "is this bucket object the same as the source file" (a size of None: not there): the same
    presence and size, and, for anything but a blob's data, the same MD5 (asked for only when needed). None: the
    same."""
    if source_size is None or bucket_size is None:
        if source_size is bucket_size:
            return None
        return Difference.EXTRA if source_size is None else Difference.MISSING
    if source_size != bucket_size:
        return Difference.SIZE
    if is_blob_data(rel):
        return None
    return None if source_md5() == bucket_md5() else Difference.CONTENT


def file_difference(rel: str, path: Path, bucket_size: Optional[int],
                    bucket_md5: Callable[[], Optional[str]]) -> Optional[Difference]:
    """``difference`` against the file at ``path`` (absent when it is not a regular file)."""
    size = path.stat().st_size if path.is_file() else None
    return difference(rel, size, bucket_size, lambda: md5_of(path.read_bytes()), bucket_md5)


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
    in_flight: int = 0  # online only: changed since the last pass began; the final pass copies them
    journal_mismatched: int = 0  # online only: the bucket differs from what the journal says it holds
    missing_keys: list = field(default_factory=list)
    extra_keys: list = field(default_factory=list)
    mismatched_keys: list = field(default_factory=list)
    deep_failed_keys: list = field(default_factory=list)
    journal_mismatched_keys: list = field(default_factory=list)
    in_flight_keys: list = field(default_factory=list)  # every one: the window must re-check each of them

    @property
    def ok(self) -> bool:
        counts_match = self.source_objects == self.bucket_objects or self.in_flight > 0
        problems = self.missing or self.extra or self.mismatched or self.deep_failed or self.journal_mismatched
        return counts_match and not problems

    def add(self, other: VerifyResult) -> None:
        for name in ("source_objects", "bucket_objects", "missing", "extra", "mismatched", "deep_checked", "deep_failed",
                     "in_flight", "journal_mismatched"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("missing_keys", "extra_keys", "mismatched_keys", "deep_failed_keys", "journal_mismatched_keys"):
            setattr(self, name, (getattr(self, name) + getattr(other, name))[:FIRST_KEYS])
        self.in_flight_keys.extend(other.in_flight_keys)

    def to_json(self) -> dict:
        data = asdict(self)
        data["in_flight_keys"] = self.in_flight_keys[:FIRST_KEYS]
        return data | {"ok": self.ok}


def _note(result: VerifyResult, kind: str, key: str) -> None:
    setattr(result, kind, getattr(result, kind) + 1)
    keys = getattr(result, kind + "_keys")
    if len(keys) < FIRST_KEYS:
        keys.append(key)


class Verifier:
    """Diffs source and bucket shard by shard; ``deep`` re-hashes blobs (all, or a uniform sample).

    Online (``journal`` given, the registry still taking writes) it proves two things instead of strict
    equality: the bucket holds exactly what the journal says, and every source/bucket difference is a
    change made since ``changed_since_ns`` (the last pass's start), which the final pass will copy.
    """

    def __init__(self, source: Path, bucket: Bucket, shard_workers: int, workers: int,
                 deep: bool = False, sample: Optional[int] = None, seed: Optional[int] = None,
                 journal: Optional[Journal] = None, changed_since_ns: int = 0, progress: Optional[Progress] = None):
        self.progress = progress or Progress()
        self.journal = journal
        self.changed_since_ns = changed_since_ns
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
        listed: Iterable[ListedObject] = list_shard(self.bucket, shard)
        known: set = set()
        if self.journal is not None:
            listed = list(listed)
            self.progress.listed(len(listed))
            known = self._check_journal(shard, listed, result)
        files = walk_shard(self.source, shard)
        for src, obj in march(files, iter(listed)):
            if src is not None:
                result.source_objects += 1
            if obj is not None:
                result.bucket_objects += 1
                if self.deep and is_blob_data(obj.rel):
                    self._deep_or_sample(obj.rel, result)
            if obj is None:
                kind = "missing"
            elif src is None:
                kind = "extra"
            elif not self._same(src, obj):
                kind = "mismatched"
            else:
                continue
            rel = src.rel if src is not None else obj.rel if obj is not None else ""
            if self._in_flight(src, obj, known):
                result.in_flight += 1
                result.in_flight_keys.append(rel)
            else:
                _note(result, kind, rel)
        self.progress.checked(result.source_objects + result.bucket_objects)
        return result

    def _check_journal(self, shard: Shard, listed: list[ListedObject], result: VerifyResult) -> set[str]:
        """Bucket vs journal; returns the keys both hold. Rows left unconfirmed by an interrupted change are
        settled from the listing (the bucket's truth), so the journal says exactly what the bucket holds."""
        assert self.journal is not None, "checked against the journal online only"
        both: set[str] = set()
        settled: list[JournalRow] = []
        gone: list[str] = []
        for obj, row in march(iter(listed), self.journal.rows(shard)):
            if row is not None and not row.confirmed:
                if obj is None:
                    gone.append(row.rel)
                else:
                    settled.append(JournalRow(obj.rel, obj.size, obj.md5, recorded_ns=0))
                    both.add(obj.rel)
                continue
            if obj is None or row is None or obj.size != row.size or (
                row.md5 is not None and obj.md5 is not None and obj.md5 != row.md5
            ):
                _note(result, "journal_mismatched", obj.rel if obj is not None else row.rel if row is not None else "")
            else:
                both.add(obj.rel)
        self.journal.record(settled)
        self.journal.forget(gone)
        return both

    def _in_flight(self, src: Optional[SourceFile], obj: Optional[ListedObject], known: set) -> bool:
        """Online only: a difference the final pass will resolve (changed since the last pass began)."""
        if self.journal is None:
            return False
        if src is None:
            # deleted from the source; the journal has it, so the final pass deletes it
            return obj is not None and obj.rel in known
        return max(src.mtime_ns, src.ctime_ns) >= self.changed_since_ns

    def _same(self, src: SourceFile, obj: ListedObject) -> bool:
        try:  # a multipart or KMS ETag: the bytes are read
            return difference(src.rel, src.size, obj.size, lambda: md5_of(read_bytes(self.source, src.rel)),
                              lambda: self.bucket.content_md5(obj.rel, obj.etag)) is None
        except FileNotFoundError:
            return False

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
        for chunk in self.bucket.read_chunks(rel):
            digest.update(chunk)
        return digest.hexdigest() == blob_digest(rel)

    def _check_sample(self, total: VerifyResult) -> None:
        rels = sorted(rel for _, rel in self._sample)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="deep") as pool:
            for rel, ok in zip(rels, pool.map(self._blob_matches, rels)):
                total.deep_checked += 1
                if not ok:
                    _note(total, "deep_failed", rel)
