"""Uploads and deletes: a bounded worker pool around the shared client; small files by direct PUT, multipart above
a threshold."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Sequence

from migrator.direct_put import FallbackPut, direct_put
from migrator.errors import DeleteFailed, Refused
from migrator.failpoints import failpoint
from migrator.journal import JournalRow
from migrator.layout import is_blob_data, is_uploads
from migrator.march import md5_of
from migrator.obstore_put import ObstorePut
from migrator.parts import ByteBudget, FileSlice, PartUploader
from migrator.plan import SyncSettings
from migrator.s3 import Bucket
from migrator.walker import SourceFile

MB = 1024 * 1024
CANARY_PREFIX = ".migrator-canary/"  # the preflight's objects, under the bucket prefix


def _file_md5(handle: BinaryIO) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    for block in iter(lambda: handle.read(MB), b""):
        digest.update(block)
    return digest.hexdigest()


def _change_since(fd: int, before: os.stat_result) -> Optional[str]:
    """How the open file's size or mtime differ from ``before``, or None."""
    after = os.fstat(fd)
    if (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns):
        return None
    return (f"size {before.st_size} then {after.st_size} bytes, mtime {before.st_mtime_ns} then "
            f"{after.st_mtime_ns} ns")


def s3_extra_args(storage: dict[str, Any]) -> dict[str, str]:
    """Object settings the registry's own S3 driver would apply (encryption, storage class)."""
    extra = {"ContentType": "application/octet-stream"}
    if storage.get("encrypt"):
        extra["ServerSideEncryption"] = "aws:kms" if storage.get("keyid") else "AES256"
        if storage.get("keyid"):
            extra["SSEKMSKeyId"] = storage["keyid"]
    if storage.get("storageclass") and storage["storageclass"] != "NONE":
        extra["StorageClass"] = storage["storageclass"]
    return extra


class Transfer:
    """Copies source files to the bucket and deletes keys, on ``workers`` threads."""

    def __init__(self, bucket: Bucket, source: Path, settings: SyncSettings, extra_args: dict[str, str],
                 stored: Callable[[int, int], None] = lambda objects, nbytes: None):
        self.bucket = bucket
        self.stored = stored  # told (objects, bytes) as the bucket stores them: a large file's bytes part by part
        self.source = source
        self.threshold = settings.multipart_threshold_mb * MB
        self.extra_args = extra_args
        self.pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="upload")
        # small files are read whole to be sent in one request, large ones part by part: one budget for both
        self.memory = ByteBudget(settings.max_memory_mb * MB)
        self.parts = PartUploader(bucket, extra_args, settings.multipart_chunksize_mb * MB, self.memory, settings.workers)
        # adaptive retries rate-limit on the client: every request must go through it
        self.direct: Optional[FallbackPut]
        if settings.retry_mode == "adaptive":
            self.direct = None
        elif settings.put == "obstore":  # without credentials, the client's path says what is missing
            self.direct = ObstorePut(bucket.settings, extra_args, settings.max_attempts) if bucket.credentials else None
        else:
            self.direct = direct_put(bucket.client, bucket.settings.name, bucket.credentials, extra_args)

    def submit(self, src: SourceFile, prove: bool = False) -> Future[tuple[JournalRow, Optional[tuple[str, int, str]]]]:
        return self.pool.submit(self.upload, src, prove)

    def upload(self, src: SourceFile, prove: bool = False) -> tuple[JournalRow, Optional[tuple[str, int, str]]]:
        """Copy one file; the row records the stat seen by the walk and the md5 of the bytes sent.

        With ``prove``, a single-part upload whose ETag equals the md5 of the bytes sent also returns that proof
        (rel, size, md5): the bucket's own word that it stored exactly these bytes.
        """
        path = os.path.join(self.source, src.rel)
        blob = is_blob_data(src.rel)
        proof = None
        if src.size < self.threshold:
            with self.memory.hold(src.size):
                with open(path, "rb") as handle:
                    data = handle.read()
                etag = self.put(src.rel, data)
                self.stored(1, len(data))
                failpoint("uploaded")
                size, md5 = len(data), None if blob else md5_of(data)
                if prove:
                    sent = md5 or md5_of(data)
                    if etag.strip('"') == sent:  # a KMS ETag is no MD5: the window's check then reads the object
                        proof = (src.rel, size, sent)
        else:
            with open(path, "rb") as handle:
                fd, before = handle.fileno(), os.fstat(handle.fileno())
                size, md5 = before.st_size, None if blob else _file_md5(handle)
                # a blob's content cannot change under its key: its parts are kept for a resume, and it is not
                # checked for changes; any other file is, so a file rewritten meanwhile is not stored torn
                self.parts.upload(src.rel, size, lambda offset, length: FileSlice(fd, offset, length), resumable=blob,
                                  changed=None if blob else lambda: _change_since(fd, before),
                                  told=lambda nbytes: self.stored(0, nbytes))
                self.stored(1, 0)  # its bytes were counted as its parts were stored
        return JournalRow(src.rel, size, md5, src.mtime_ns, src.ctime_ns, src.ino, src.seen_ns), proof

    def put(self, rel: str, data: bytes) -> str:
        """PutObject, sent directly when possible; a direct request that fails goes through the client (retries,
        errors). Returns the ETag."""
        if self.direct is not None and not self.direct.given_up:
            etag = self.direct.put(self.bucket.key(rel), data)
            self.bucket.counter.count_direct(etag is not None)
            if etag is not None:
                return etag
        return self.bucket.put_object(rel, data, self.extra_args)

    def put_multipart(self, rel: str, data: bytes) -> None:
        """``data`` through the copy's multipart path and headers, whatever its size (the preflight canary)."""
        self.parts.upload(rel, len(data), lambda offset, length: data[offset : offset + length], resumable=False,
                          crash_point=None)

    def abort_left_uploads(self) -> int:
        """Abort the multipart uploads left open under the prefix's ``docker/`` (the registry's own ``_uploads`` aside)
        and by the preflight's canary: called when a pass has finished every upload, so any still open was left by a
        killed run and not resumed. Returns how many."""
        left = [upload for upload in self.bucket.open_uploads("")  # one listing for both
                if upload.rel.startswith(("docker/", CANARY_PREFIX)) and not is_uploads(upload.rel)]
        for upload in left:
            self.bucket.abort_upload(upload.rel, upload.upload_id)
        return len(left)

    def delete(self, rels: Sequence[str]) -> list[str]:
        """DeleteObjects in batches of 1000; refuses any key outside docker/ or inside _uploads.
        Returns the keys the bucket itself reported deleted."""
        for rel in rels:
            if not rel.startswith("docker/") or is_uploads(rel) or "/../" in f"/{rel}/":
                raise Refused(f"refusing to delete {self.bucket.key(rel)!r}: outside {self.bucket.key('docker/')} or an upload")
        deleted: list[str] = []
        for batch_deleted, errors in self.bucket.delete_batches(rels, quiet=False):
            deleted += batch_deleted
            if errors:
                raise DeleteFailed(self.bucket.settings.name, errors)
        return deleted

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.parts.close()
