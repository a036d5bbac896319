"""Large files in parallel parts: the store's part-size rule, one memory budget shared by every upload, and multipart
uploads that resume where a killed run left them.

Why not s3transfer's TransferManager: it cannot resume (every upload starts with CreateMultipartUpload, and a failed
one is aborted, so a 20 GB layer cut at 90 % is sent again from zero), and its memory bound is a count of chunks of
its own, which cannot share ``sync.max_memory_mb`` with the small files sent whole outside it (obstore, the direct
PUT). The requests themselves stay botocore's (UploadPart on the shared client: its retry mode, standard or adaptive,
backs off on 503 SlowDown).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Union

from migrator.errors import SourceChanged
from migrator.failpoints import failpoint

if TYPE_CHECKING:  # s3 imports plan, which imports this module's limits
    from migrator.s3 import Bucket, CompletedPart

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MIN_PART = 5 * MiB  # S3's smallest part (all but the last)
MAX_PART = 5 * 1024 * MiB
MAX_PARTS = 10_000
PART_SHARE = 0.75  # of the budget parts may hold at once: the rest stays free for small files


def part_size_for(size: int, preferred: int) -> int:
    """The part size an object of ``size`` bytes is sent in: ``preferred``, raised to S3's 5 MiB minimum and, when the
    object would need more than 10,000 parts, to the smallest whole MiB that fits it in 10,000 (100 GiB at 10 MiB:
    11 MiB). The registry's ``chunksize`` obeys the same rule for its own commits: a blob for which this answers more
    than ``chunksize`` is too large for the registry to write. Raises ValueError past 5 GiB parts."""
    part = max(preferred, MIN_PART)
    if size > part * MAX_PARTS:
        part = -(-size // (MAX_PARTS * MiB)) * MiB
    if part > MAX_PART:
        raise ValueError(f"an object of {size} bytes needs parts over 5 GiB: above S3's largest object")
    return part


class ByteBudget:
    """Bytes of file content held in memory by uploads at once, like s3transfer's memory limits: whole small files
    and large files' parts alike. A hold waits until its bytes fit; one larger than the whole budget waits until
    nothing else is held. Parts may hold only ``PART_SHARE`` of the budget (one part always may), so a large layer
    never leaves the small files queued behind it without room. ``peak`` and ``peak_parts`` are kept for the report
    and the tests."""

    def __init__(self, limit: int):
        self.limit = limit
        self.part_limit = int(limit * PART_SHARE)
        self.held = self.part_bytes = self.parts = 0
        self.peak = self.peak_parts = 0
        self._changed = threading.Condition()

    def _fits(self, size: int, part: bool) -> bool:
        if self.held == 0:
            return True
        if self.held + size > self.limit:
            return False
        return not part or self.parts == 0 or self.part_bytes + size <= self.part_limit

    def acquire(self, size: int, part: bool = False) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._fits(size, part))
            self.held += size
            self.peak = max(self.peak, self.held)
            if part:
                self.parts += 1
                self.part_bytes += size
                self.peak_parts = max(self.peak_parts, self.parts)

    def release(self, size: int, part: bool = False) -> None:
        with self._changed:
            self.held -= size
            if part:
                self.parts -= 1
                self.part_bytes -= size
            self._changed.notify_all()

    @contextmanager
    def hold(self, size: int) -> Iterator[None]:
        self.acquire(size)
        try:
            yield
        finally:
            self.release(size)


class FileSlice:
    """``length`` bytes of an open file from ``offset``, as UploadPart's body: read with ``os.pread`` while the
    request is sent (botocore's and urllib3's reads of 128 KiB to 1 MiB), so a part is never held whole in memory.
    Seekable within the slice, so botocore can size it, hash it for its signature and rewind it for a retry. A file
    shorter than the slice (truncated while it is sent) raises OSError rather than sending fewer bytes than the
    request's Content-Length."""

    def __init__(self, fd: int, offset: int, length: int):
        self.fd = fd
        self.offset = offset
        self.length = length
        self.position = 0

    def __len__(self) -> int:
        return self.length

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.position, os.SEEK_END: self.length}[whence]
        if base + offset < 0:
            raise ValueError(f"seek to {base + offset}, before the slice's start")
        self.position = min(base + offset, self.length)
        return self.position

    def read(self, size: Optional[int] = -1) -> bytes:
        remaining = self.length - self.position
        wanted = remaining if size is None or size < 0 else min(size, remaining)
        if wanted == 0:
            return b""
        data = os.pread(self.fd, wanted, self.offset + self.position)
        if len(data) != wanted:
            raise OSError(f"read {len(data)} bytes at {self.offset + self.position}, expected {wanted} (the file "
                          "shrank while it was sent)")
        self.position += wanted
        return data


PartBody = Union[FileSlice, bytes]
PartBodies = Callable[[int, int], PartBody]  # (offset, length) -> the body of the part there
ChangeCheck = Callable[[], Optional[str]]  # how the source changed since the upload began, or None


def _untold(nbytes: int) -> None:
    """Nobody is told these bytes."""


def part_length(number: int, part_size: int, size: int) -> int:
    """The length of part ``number`` (from 1) of a ``size``-byte object cut in ``part_size`` parts."""
    return min(part_size, size - (number - 1) * part_size)


class PartUploader:
    """Multipart uploads whose parts run on one pool shared by every large file, each part's bytes counted in the
    shared budget from its start until UploadPart answers (a ``FileSlice`` body holds only botocore's read buffer,
    but the budget still bounds the parts in flight)."""

    def __init__(self, bucket: Bucket, extra_args: dict[str, str], preferred_part: int, budget: ByteBudget, workers: int):
        self.bucket = bucket
        self.extra_args = extra_args
        self.preferred_part = preferred_part
        self.budget = budget
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="part")
        self.parts_kept = 0  # parts found uploaded by an earlier run and not sent again

    def upload(self, rel: str, size: int, bodies: PartBodies, resumable: bool,
               crash_point: Optional[str] = "multipart", changed: Optional[ChangeCheck] = None,
               told: Callable[[int], None] = _untold) -> str:
        """Send ``size`` bytes as ``rel`` in parts; returns the object's ETag. ``resumable`` (content that cannot
        change under the key, a blob's data): an upload left open for the key is continued, keeping its parts of the
        right size. A failure leaves the upload open for the next run to resume; the pass's end aborts any not
        resumed. ``changed`` is asked once every part has answered (or one failed): a change found aborts the upload
        and raises SourceChanged instead of completing an object made of two versions of the file. ``told`` learns
        each part's bytes once the bucket holds them, and takes them back (negative) when the upload fails."""
        part_size = part_size_for(size, self.preferred_part)
        upload_id, kept = self._open(rel, size, part_size, resumable)
        kept_bytes = sum(part_length(number, part_size, size) for number in kept)
        told(kept_bytes)
        done = dict(kept)
        pending: list[tuple[int, int, Future[CompletedPart]]] = []
        try:
            for number, offset in enumerate(range(0, size, part_size), start=1):
                length = min(part_size, size - offset)
                if number in done:
                    continue
                self.budget.acquire(length, part=True)
                if any(future.done() and future.exception() for _, _, future in pending):
                    self.budget.release(length, part=True)
                    break
                pending.append((number, length, self.pool.submit(self._part, rel, upload_id, number, length,
                                                                 bodies(offset, length), crash_point, told)))
            for number, _, future in pending:
                done[number] = future.result()
        except BaseException as failure:
            for _, length, future in pending:
                if future.cancel():
                    self.budget.release(length, part=True)
            # the parts still running have answered before the caller closes the file they read (its descriptor,
            # reused by another file, would feed them other bytes) and before an abort (they would outlive it)
            wait([future for _, _, future in pending])
            told(-kept_bytes - sum(length for _, length, future in pending
                                          if not future.cancelled() and future.exception() is None))
            self._abort_if_changed(rel, upload_id, changed, failure)
            raise
        try:
            self._abort_if_changed(rel, upload_id, changed, None)
            return self.bucket.complete_upload(rel, upload_id, done)
        except BaseException:
            told(-size)  # every part was stored, but not the object
            raise

    def _abort_if_changed(self, rel: str, upload_id: str, changed: Optional[ChangeCheck],
                          failure: Optional[BaseException]) -> None:
        """Abort the upload and raise SourceChanged when the source changed."""
        change = changed() if changed else None
        if change is None:
            return
        self.bucket.abort_upload(rel, upload_id)
        raise SourceChanged(self.bucket.key(rel), change) from failure

    def _part(self, rel: str, upload_id: str, number: int, length: int, body: PartBody,
              crash_point: Optional[str], told: Callable[[int], None]) -> CompletedPart:
        try:
            part = self.bucket.upload_part(rel, upload_id, number, body)
            if crash_point:
                failpoint(crash_point)
            told(length)
            return part
        finally:
            self.budget.release(length, part=True)

    def _open(self, rel: str, size: int, part_size: int, resumable: bool) -> tuple[str, dict[int, CompletedPart]]:
        """The upload to send parts to and the parts it already holds: the newest left open for the key when
        ``resumable`` and created with the bucket's part checksum (the others aborted), else a new one. Content that
        is not resumable sends no listing: what a killed run left open for it is aborted at the pass's end."""
        if not resumable:
            return self.bucket.create_upload(rel, self.extra_args), {}
        left = sorted(self.bucket.open_uploads(rel, exact=True), key=lambda upload: upload.initiated)
        matching = [upload for upload in left if upload.checksum == self.bucket.part_checksum]  # else AWS refuses its parts
        resumed = matching[-1] if matching else None
        if resumed is not None:
            left.remove(resumed)
        for upload in left:
            self.bucket.abort_upload(upload.rel, upload.upload_id)
        if resumed is None:
            return self.bucket.create_upload(rel, self.extra_args), {}
        kept = {number: part for number, stored, part in self.bucket.uploaded_parts(resumed)
                if stored == part_length(number, part_size, size)}
        self.parts_kept += len(kept)
        log.info("%s: resuming the multipart upload a previous run left open, %d parts already uploaded", rel, len(kept))
        return resumed.upload_id, kept

    def close(self) -> None:
        self.pool.shutdown(wait=True)
