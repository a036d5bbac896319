"""Large layers: parts in parallel under the shared memory budget, resumed after a kill, through a 503 storm."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml
from conftest import bucket_contents, invoke_cli, source_files
from faultproxy import FaultProxy

from migrator import parts
from migrator.errors import InvalidInput, SourceChanged
from migrator.layout import BLOBS
from migrator.migration.context import open_context
from migrator.parts import MAX_PARTS, ByteBudget, FileSlice, part_size_for
from migrator.plan import BucketSettings, load_plan
from migrator.s3 import signs_payload
from migrator.sync import Progress
from migrator.testing.synthetic import RegistryTree, populate

MiB = 1024 * 1024
SMALL_PARTS = {"workers": 4, "shard_workers": 2, "multipart_threshold_mb": 8, "multipart_chunksize_mb": 5}


@pytest.fixture
def proxy(moto_server):
    fault_proxy = FaultProxy(moto_server.endpoint).start()
    yield fault_proxy
    fault_proxy.stop()


def through(proxy: FaultProxy, plan):
    """The plan with its bucket reached through the proxy."""
    plan.write_text(plan.read_text().replace(proxy.upstream.geturl(), proxy.endpoint))
    return plan


def tree_with_layers(root, sizes_mib: list[int], seed: int = 0) -> tuple[RegistryTree, list[str]]:
    """A few small images and one image per large layer; returns the tree and the layers' blob keys."""
    rng = random.Random(seed)
    tree = RegistryTree(root)
    populate(tree, images=6, seed=seed)
    layers = [rng.randbytes(size * MiB) for size in sizes_mib]
    for index, layer in enumerate(layers):
        tree.image(f"big/layer{index}", "v1", [layer])
    keys = [f"{BLOBS}{digest[:2]}/{digest}/data" for digest in (hashlib.sha256(layer).hexdigest() for layer in layers)]
    return tree, keys


def open_uploads(s3, bucket: str) -> list[dict]:
    return s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def assert_blob_stored(s3, bucket: str, key: str) -> None:
    """The bucket's bytes hash to the digest the key names (what ``verify --deep`` proves)."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == key.split("/")[-2]


def killed_sync(plan, failpoint: str) -> subprocess.CompletedProcess:
    """``migrator sync`` SIGKILLed at a failpoint (``multipart@N``: after the N-th part uploaded)."""
    return subprocess.run([sys.executable, "-m", "migrator", "--quiet", "sync", str(plan)], capture_output=True,
                          env={**os.environ, "MIGRATOR_FAILPOINT": failpoint}, timeout=300)


def test_part_size_fits_the_store():
    assert part_size_for(40 * MiB, 16 * MiB) == 16 * MiB
    assert part_size_for(40 * MiB, 1 * MiB) == 5 * MiB  # S3's smallest part
    for size in (100 * 1024 * MiB, 10 * 1024 * 1024 * MiB, 10_000 * 10 * MiB + 1):
        part = part_size_for(size, 10 * MiB)
        assert part > 10 * MiB and part % MiB == 0 and -(-size // part) <= MAX_PARTS
    assert part_size_for(100 * 1024 * MiB, 10 * MiB) == 11 * MiB
    with pytest.raises(ValueError):
        part_size_for(49 * 1024 * 1024 * MiB, 16 * MiB)


def test_payload_signing_follows_the_transport():
    """``auto``: a body's SHA-256 is signed over plain http, where nothing else proves the store got the bytes sent;
    not over https (TLS does), AWS's default endpoint included."""
    assert signs_payload(BucketSettings("bucket", endpoint="http://127.0.0.1:7480"))
    assert not signs_payload(BucketSettings("bucket", endpoint="https://rgw.example:7443"))
    assert not signs_payload(BucketSettings("bucket"))
    assert signs_payload(BucketSettings("bucket", endpoint="https://rgw.example", payload_signing="always"))
    assert not signs_payload(BucketSettings("bucket", endpoint="http://127.0.0.1:7480", payload_signing="never"))


@pytest.mark.parametrize("signing", ["auto", "never"])
def test_parts_are_sent_signed_or_unsigned_as_the_plan_says(tmp_path, make_plan, s3, bucket, proxy, signing):
    """Over http, ``auto`` sends each part with its SHA-256 in the signature; ``never`` sends UNSIGNED-PAYLOAD. The
    layer is stored whole either way."""
    tree, keys = tree_with_layers(tmp_path / "src", [12])  # 3 parts of 5 MiB and less
    plan = through(proxy, make_plan(tree.root, sync=SMALL_PARTS))
    values = yaml.safe_load(plan.read_text())
    values["bucket"]["payload_signing"] = signing
    plan.write_text(yaml.safe_dump(values))
    with open_context(load_plan(plan)) as job:
        job.engine.run_pass()
    hashes = [headers["x-amz-content-sha256"] for method, path, headers in proxy.seen
              if method == "PUT" and keys[0] in path and "partNumber=" in path]
    assert len(hashes) == 3
    if signing == "never":
        assert set(hashes) == {"UNSIGNED-PAYLOAD"}
    else:
        assert all(len(value) == 64 and value != "UNSIGNED-PAYLOAD" for value in hashes)
    assert_blob_stored(s3, bucket, keys[0])
    assert bucket_contents(s3, bucket) == source_files(tree.root)


@pytest.mark.parametrize("checksums", ["auto", "when_supported"])
def test_multipart_uploads_keep_to_awss_checksum_rules(tmp_path, make_plan, s3, bucket, moto_server, checksums):
    """A client that computes checksums (``when_supported``: auto's choice on AWS) adds a CRC32 to every part, and AWS
    refuses a part whose upload was created without that checksum, and a completion that leaves a part's out: uploads
    are created with CRC32 and completed with each part's, as aws s3 does. ``auto`` on another store finds with the
    canary that it keeps CRC32 checksums (moto does) and sends the same. The proxy holds moto to AWS's rules."""
    strict = FaultProxy(moto_server.endpoint, aws_checksums=True).start()
    try:
        tree, keys = tree_with_layers(tmp_path / "src", [12])  # 3 parts of 5 MiB and less
        plan = through(strict, make_plan(tree.root, sync=SMALL_PARTS))
        values = yaml.safe_load(plan.read_text())
        values["bucket"]["checksums"] = checksums
        plan.write_text(yaml.safe_dump(values))
        result = invoke_cli("sync", plan)
    finally:
        strict.stop()
    assert result.returncode == 0, result.stderr
    assert not strict.refused
    sent = [headers for method, path, headers in strict.seen if method == "PUT" and keys[0] in path and "partNumber=" in path]
    assert len(sent) == 3 and all("x-amz-checksum-crc32" in headers for headers in sent)
    assert s3.head_object(Bucket=bucket, Key=keys[0], ChecksumMode="ENABLED").get("ChecksumCRC32")
    assert_blob_stored(s3, bucket, keys[0])
    assert bucket_contents(s3, bucket) == source_files(tree.root)


def test_plan_refuses_parts_below_the_stores_minimum(tmp_path, make_plan):
    tree = RegistryTree(tmp_path / "src")
    with pytest.raises(InvalidInput, match="multipart_chunksize_mb"):
        load_plan(make_plan(tree.root, sync={"multipart_chunksize_mb": 4}))


@pytest.mark.slow
def test_a_large_layers_parts_go_in_parallel(tmp_path, make_plan, s3, bucket, proxy):
    proxy.gather_parts = 2  # each UploadPart waits (at most 5 s) until a second one has arrived
    tree, keys = tree_with_layers(tmp_path / "src", [24])
    plan = through(proxy, make_plan(tree.root, sync=SMALL_PARTS))
    result = invoke_cli("sync", plan)
    assert result.returncode == 0, result.stderr
    assert proxy.peak_parts >= 2, "the layer's parts were sent one after another"
    assert_blob_stored(s3, bucket, keys[0])
    assert bucket_contents(s3, bucket) == source_files(tree.root)


class StoredBytes(Progress):
    """What the progress is told the bucket stored, and whether the layer's object existed (asked with another
    client) each time a part's bytes were told."""

    def __init__(self, s3, bucket: str, key: str) -> None:
        self.s3, self.bucket, self.key = s3, bucket, key
        self.lock = threading.Lock()
        self.objects = self.bytes = self.part_bytes = 0
        self.parts_told_before_the_object = 0

    def uploaded(self, count: int, nbytes: int) -> None:
        with self.lock:
            self.objects += count
            self.bytes += nbytes
            if count == 0:
                self.part_bytes += nbytes
        if count == 0 and nbytes > 0 and not self.s3.list_objects_v2(Bucket=self.bucket, Prefix=self.key)["KeyCount"]:
            with self.lock:
                self.parts_told_before_the_object += 1


def test_a_large_layers_bytes_show_as_its_parts_are_stored(tmp_path, make_plan, s3, bucket):
    """An operator watching a 20 GB layer sees its bytes grow part by part, not 0 % until it completes."""
    tree, keys = tree_with_layers(tmp_path / "src", [24])  # 5 parts of 5 MiB
    plan = make_plan(tree.root, sync=SMALL_PARTS)
    seen = StoredBytes(s3, bucket, keys[0])
    with open_context(load_plan(plan), seen) as job:
        job.engine.run_pass()
    files = source_files(tree.root)
    assert seen.objects == len(files)
    assert seen.bytes == sum(len(content) for content in files.values())
    assert seen.parts_told_before_the_object >= 4, "the layer's bytes were told only once its object was complete"


def test_a_failed_large_upload_takes_its_bytes_back(tmp_path, make_plan, s3, bucket, proxy):
    proxy.mode, proxy.rate, proxy.only = "slowdown", 0.5, "partNumber="
    tree, keys = tree_with_layers(tmp_path / "src", [40])  # 8 parts, each refused half the time, never retried
    plan = through(proxy, make_plan(tree.root, sync=SMALL_PARTS | {"max_attempts": 1}))
    seen = StoredBytes(s3, bucket, keys[0])
    with open_context(load_plan(plan), seen) as job, pytest.raises(Exception, match="SlowDown|503"):
        job.engine.run_pass()
    assert proxy.injected["503"] > 0
    assert seen.parts_told_before_the_object > 0  # some parts were stored and told before one failed
    assert seen.part_bytes == 0, f"{seen.part_bytes} bytes of a failed upload still shown as uploaded"


class InFlight:
    """Bytes of file content the client has in requests at once, counted outside the budget: UploadPart bodies
    through botocore's events, small files around ``Transfer.put``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bytes = self.part_bytes = self.parts = self.small = 0
        self.peak_bytes = self.peak_part_bytes = self.peak_parts = self.small_beside_parts = 0

    def change(self, size: int, part: bool) -> None:
        with self.lock:
            self.bytes += size
            if part:
                self.parts += 1 if size > 0 else -1
                self.part_bytes += size
            else:
                self.small += 1 if size > 0 else -1
            self.peak_bytes = max(self.peak_bytes, self.bytes)
            self.peak_parts = max(self.peak_parts, self.parts)
            self.peak_part_bytes = max(self.peak_part_bytes, self.part_bytes)
            if self.parts and self.small:
                self.small_beside_parts += 1

    def attach(self, transfer) -> None:
        events = transfer.bucket.client.meta.events

        def before(params, context, **_):
            body = params["body"]  # the part's bytes, wrapped in a BytesIO by botocore
            context["part_bytes"] = body.getbuffer().nbytes if hasattr(body, "getbuffer") else len(body)
            self.change(context["part_bytes"], True)

        def after(context, **_):
            self.change(-context["part_bytes"], True)

        events.register("before-call.s3.UploadPart", before)
        events.register("after-call.s3.UploadPart", after)
        events.register("after-call-error.s3.UploadPart", after)
        put = transfer.put

        def counted_put(key: str, data: bytes) -> str:
            self.change(len(data), False)
            try:
                return put(key, data)
            finally:
                self.change(-len(data), False)

        transfer.put = counted_put


@pytest.mark.slow
def test_memory_bound_holds_with_several_large_files_in_flight(tmp_path, make_plan, s3, bucket):
    tree, keys = tree_with_layers(tmp_path / "src", [9, 10, 11, 12, 13, 14])  # more parts than fit the budget
    plan = make_plan(tree.root, sync=SMALL_PARTS | {"workers": 8, "shard_workers": 8, "max_memory_mb": 16})
    seen = InFlight()
    with open_context(load_plan(plan)) as job:
        seen.attach(job.engine.transfer)
        job.engine.run_pass()
    assert seen.peak_parts >= 2, "parts were sent one after another"
    assert seen.peak_bytes <= 16 * MiB, f"{seen.peak_bytes / MiB:.1f} MiB in flight, over sync.max_memory_mb"
    assert seen.peak_part_bytes <= 12 * MiB  # parts hold at most 0.75 of the budget
    for key in keys:
        assert_blob_stored(s3, bucket, key)
    assert bucket_contents(s3, bucket) == source_files(tree.root)
    assert not open_uploads(s3, bucket)


def test_parts_leave_room_for_small_files():
    """Parts held up to their share of the budget: the next part waits, a small file does not."""
    budget = ByteBudget(32 * MiB)
    coordinator = threading.Thread(target=lambda: [budget.acquire(5 * MiB, part=True) for _ in range(5)], daemon=True)
    coordinator.start()
    with budget._changed:
        budget._changed.wait_for(lambda: budget.parts == 4, timeout=10)
    small = threading.Thread(target=budget.acquire, args=(6 * MiB,), daemon=True)
    small.start()
    small.join(10)
    assert not small.is_alive(), "a small file waited behind a large layer's parts"
    assert budget.parts == 4 and coordinator.is_alive()  # the fifth part waits for room
    budget.release(5 * MiB, part=True)
    coordinator.join(10)
    assert budget.parts == 4 and budget.held == 26 * MiB


@pytest.mark.slow
def test_killed_large_upload_resumes_and_leaves_no_open_upload(tmp_path, make_plan, s3, bucket, proxy):
    tree, keys = tree_with_layers(tmp_path / "src", [30])  # 6 parts of 5 MiB
    plan = through(proxy, make_plan(tree.root, sync=SMALL_PARTS))
    killed = killed_sync(plan, "multipart@3")
    assert killed.returncode == -9, killed.stderr
    left = open_uploads(s3, bucket)
    assert [upload["Key"] for upload in left] == keys
    uploaded = s3.list_parts(Bucket=bucket, Key=keys[0], UploadId=left[0]["UploadId"]).get("Parts", [])
    assert len(uploaded) >= 3
    def parts_of_the_layer() -> int:
        return sum(1 for method, path, _ in proxy.seen if method == "PUT" and keys[0] in path and "partNumber=" in path)

    parts_before = parts_of_the_layer()
    result = invoke_cli("sync", plan)
    assert result.returncode == 0, result.stderr
    parts_sent = parts_of_the_layer() - parts_before
    assert parts_sent <= 6 - len(uploaded), "parts the killed run had uploaded were sent again"
    assert not open_uploads(s3, bucket)
    assert_blob_stored(s3, bucket, keys[0])
    assert bucket_contents(s3, bucket) == source_files(tree.root)
    assert invoke_cli("verify", "--deep", plan).returncode == 0


@pytest.mark.slow
def test_uploads_left_open_for_keys_not_copied_are_aborted(tmp_path, make_plan, s3, bucket):
    """A killed run's upload for a blob since gone from the source is aborted by the next pass; an upload of the
    registry's own (``_uploads``) stays."""
    tree, keys = tree_with_layers(tmp_path / "src", [12])
    plan = make_plan(tree.root, sync=SMALL_PARTS)
    assert killed_sync(plan, "multipart@1").returncode == -9
    assert [upload["Key"] for upload in open_uploads(s3, bucket)] == keys
    shutil.rmtree(tree.path(keys[0]).parent)
    registry_upload = "docker/registry/v2/repositories/group0/service0/_uploads/6d1e5a0c/data"
    s3.create_multipart_upload(Bucket=bucket, Key=registry_upload)
    assert invoke_cli("sync", plan).returncode == 0
    assert [upload["Key"] for upload in open_uploads(s3, bucket)] == [registry_upload]


@pytest.mark.slow
def test_a_503_storm_on_parts_is_survived(tmp_path, make_plan, s3, bucket, proxy):
    proxy.mode, proxy.rate, proxy.only = "slowdown", 0.3, "partNumber="
    tree, keys = tree_with_layers(tmp_path / "src", [22, 26])
    plan = through(proxy, make_plan(tree.root, sync=SMALL_PARTS))
    result = invoke_cli("sync", plan)
    assert result.returncode == 0, result.stderr
    assert proxy.injected["503"] > 0
    for key in keys:
        assert_blob_stored(s3, bucket, key)
    assert not open_uploads(s3, bucket)
    assert bucket_contents(s3, bucket) == source_files(tree.root)


def test_a_file_slice_reads_its_range_again_after_a_rewind(tmp_path):
    content = random.Random(7).randbytes(3 * MiB)
    path = tmp_path / "layer"
    path.write_bytes(content)
    with open(path, "rb") as handle:
        body = FileSlice(handle.fileno(), MiB + 3, MiB)
        assert len(body) == MiB and body.seekable()
        first = b"".join(iter(lambda: body.read(100_000), b""))
        assert body.seek(0) == 0  # botocore's rewind before a retry
        assert body.read() == first == content[MiB + 3 : 2 * MiB + 3]
        assert body.seek(-10, os.SEEK_END) == MiB - 10 and body.read(100) == content[2 * MiB - 7 : 2 * MiB + 3]
        os.truncate(path, MiB + 3 + 1000)  # the file shrinks while its part is sent
        body.seek(0)
        with pytest.raises(OSError, match="shrank"):
            body.read()


def test_parts_are_streamed_from_the_file_and_resent_whole_after_a_retry(tmp_path, make_plan, s3, bucket, proxy,
                                                                       monkeypatch):
    """A part's bytes are read a piece at a time as botocore sends them, never whole; a part answered 503 is sent
    again from its start (botocore rewinds the body), and the bucket holds the layer's exact bytes."""
    reads: list[int] = []
    pread = os.pread

    def recorded_pread(fd: int, length: int, offset: int) -> bytes:
        reads.append(length)
        return pread(fd, length, offset)

    monkeypatch.setattr(parts.os, "pread", recorded_pread)
    proxy.mode, proxy.rate, proxy.only = "slowdown", 0.3, "partNumber="
    tree, keys = tree_with_layers(tmp_path / "src", [23])  # 5 parts of 5 MiB, the last 3 MiB
    plan = through(proxy, make_plan(tree.root, sync=SMALL_PARTS))
    with open_context(load_plan(plan)) as job:
        job.engine.run_pass()
    assert proxy.injected["503"] > 0
    assert reads and max(reads) <= MiB, f"a read of {max(reads) / MiB:.1f} MiB: a part was read whole"
    assert sum(reads) >= 23 * MiB * 2  # hashed for the signature, then sent, and the parts answered 503 again
    assert_blob_stored(s3, bucket, keys[0])
    assert bucket_contents(s3, bucket) == source_files(tree.root)
    assert not open_uploads(s3, bucket)


@pytest.mark.parametrize("change", ["grown", "rewritten", "truncated"])
def test_a_large_file_changed_while_its_parts_are_sent_is_not_stored(tmp_path, make_plan, s3, bucket, change):
    """Not a blob (a blob is written once): its size or mtime moving during the upload aborts the upload with an error
    naming the key, instead of completing an object made of two versions; the next pass copies it whole."""
    tree, _ = tree_with_layers(tmp_path / "src", [])
    rel = "docker/registry/v2/repositories/big/app/notes.bin"
    path = tree.path(rel)
    path.parent.mkdir(parents=True)
    path.write_bytes(random.Random(3).randbytes(12 * MiB))  # 3 parts of 5 MiB and less
    plan = make_plan(tree.root, sync=SMALL_PARTS | {"max_attempts": 2})
    with open_context(load_plan(plan)) as job:
        changed: list[str] = []

        def change_the_file(**_):
            if changed:
                return
            changed.append(change)
            stat = path.stat()
            if change == "grown":
                with open(path, "ab") as handle:
                    handle.write(b"appended")
            elif change == "rewritten":
                with open(path, "r+b") as handle:
                    handle.write(b"new bytes in place")
                os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
            else:
                os.truncate(path, 6 * MiB)

        job.engine.transfer.bucket.client.meta.events.register("before-call.s3.UploadPart", change_the_file)
        with pytest.raises(SourceChanged, match=rel) as raised:
            job.engine.run_pass()
        assert "aborted" in str(raised.value)
        assert not open_uploads(s3, bucket)
        assert rel not in bucket_contents(s3, bucket)
        job.engine.transfer.bucket.client.meta.events.unregister("before-call.s3.UploadPart", change_the_file)
        job.engine.run_pass()
    assert bucket_contents(s3, bucket) == source_files(tree.root)
    assert not open_uploads(s3, bucket)


class PartsFailing:
    """A bucket for ``PartUploader`` whose first part fails while the second is still being sent."""

    def __init__(self) -> None:
        self.second_sent = threading.Event()
        self.order: list[str] = []

    def open_uploads(self, rel: str, exact: bool = False) -> list:
        return []

    def create_upload(self, rel: str, extra_args: dict) -> str:
        return "upload-id"

    def upload_part(self, rel: str, upload_id: str, number: int, body) -> str:
        if number == 1:
            self.second_sent.wait(10)
            raise OSError("part 1 failed")
        self.second_sent.set()
        time.sleep(0.5)  # still sending when part 1's failure reaches the caller
        self.order.append(f"part {number} answered")
        return f'"etag{number}"'


def test_a_failed_upload_returns_only_once_its_other_parts_have_answered():
    """The caller closes the file when ``upload`` returns: a part still reading it then would read a closed (or reused)
    descriptor."""
    bucket = PartsFailing()
    uploader = parts.PartUploader(bucket, {}, 5 * MiB, ByteBudget(64 * MiB), workers=2)  # type: ignore[arg-type]
    with pytest.raises(OSError, match="part 1 failed"):
        uploader.upload("layer", 10 * MiB, lambda offset, length: b"x" * 10, resumable=True)
    bucket.order.append("upload raised")
    uploader.close()
    assert bucket.order == ["part 2 answered", "upload raised"]


def test_ctrl_c_during_a_large_upload_says_at_once_why_it_does_not_stop_at_once(tmp_path, make_plan, s3, bucket,
                                                                                proxy):
    """The parts in flight answer before the command exits; the operator is told so when they press Ctrl-C, not
    after the wait. A re-run then finishes the copy with no upload left open."""
    proxy.mode, proxy.rate, proxy.only, proxy.stall_seconds = "stall", 1.0, "partNumber=", 3.0
    tree, keys = tree_with_layers(tmp_path / "src", [12])
    plan = through(proxy, make_plan(tree.root, sync=SMALL_PARTS))
    run = subprocess.Popen([sys.executable, "-m", "migrator", "sync", str(plan)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env={**os.environ, "TERM": "dumb"})
    try:
        deadline = time.monotonic() + 60
        while not any("partNumber=" in path for _, path, _ in proxy.seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        run.send_signal(signal.SIGINT)
        assert run.stderr is not None
        told = next(line for line in run.stderr if "stopping (Ctrl-C)" in line or "interrupted" in line)
        still_running = run.poll() is None
        assert run.wait(60) == 130
    finally:
        run.kill()
    assert "stopping (Ctrl-C)" in told and still_running, "the operator was told only once the command had stopped"
    proxy.mode = "ok"
    assert invoke_cli("sync", plan).returncode == 0
    assert not open_uploads(s3, bucket)
    assert_blob_stored(s3, bucket, keys[0])
    assert bucket_contents(s3, bucket) == source_files(tree.root)
