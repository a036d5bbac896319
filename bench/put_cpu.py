"""Client CPU per small PutObject, 32 in flight: ``client.put_object``, migrator's direct PUT, and obstore (Rust
``object_store``, which releases the GIL), against each S3 server of BENCH_S3 (default ``rgw,moto``).

``python -m bench.put_cpu [N]`` (default 2000 requests each, 71-byte bodies like the registry's link files). CPU is
the whole process's (every thread, and obstore's Rust runtime), over the N requests. Each answer's ETag is checked
against the body's md5, as the copy proves a single-part upload.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.run import s3_server
from migrator.plan import BucketSettings, SyncSettings
from migrator.s3 import open_bucket
from migrator.transfer import Transfer, s3_extra_args

BODY = b"sha256:" + b"0123456789abcdef" * 4
MD5 = hashlib.md5(BODY).hexdigest()
IN_FLIGHT = 32


def key(prefix: str, index: int) -> str:
    return f"{prefix}/docker/registry/v2/repositories/bench/_layers/sha256/{index:064x}/link"


def threaded(send, prefix: str, count: int) -> tuple[float, float]:
    """Client CPU ms and wall s per request, IN_FLIGHT threads sending."""
    started, wall = time.process_time(), time.monotonic()
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        etags = list(pool.map(lambda index: send(key(prefix, index)), range(count)))
    assert all(etag.strip('"') == MD5 for etag in etags), "an ETag is not the body's md5"
    return (time.process_time() - started) / count * 1000, (time.monotonic() - wall) / count


def obstore_puts(endpoint: str, bucket: str, count: int) -> tuple[float, float]:
    """obstore's put_async, IN_FLIGHT at once on one asyncio loop."""
    from obstore import put_async
    from obstore.store import S3Store

    store = S3Store(bucket, endpoint=endpoint, region="us-east-1", virtual_hosted_style_request=False,
                    access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                    secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                    client_options={"allow_http": True})

    async def run() -> list:
        limit = asyncio.Semaphore(IN_FLIGHT)

        async def one(index: int):
            async with limit:
                return await put_async(store, key("c", index), BODY,
                                       attributes={"Content-Type": "application/octet-stream"})

        await one(count)  # warm-up: connection, runtime
        started, wall = time.process_time(), time.monotonic()
        results = await asyncio.gather(*(one(index) for index in range(count)))
        return [results, time.process_time() - started, time.monotonic() - wall]

    results, cpu, wall = asyncio.run(run())
    assert all((result["e_tag"] or "").strip('"') == MD5 for result in results), "an ETag is not the body's md5"
    return cpu / count * 1000, wall / count


def measure(endpoint: str, count: int) -> dict:
    """(client CPU ms, wall s) per request of each way to PUT, against one endpoint."""
    bucket = open_bucket(BucketSettings(name="put-cpu", endpoint=endpoint), SyncSettings(workers=IN_FLIGHT), "")
    bucket.client.create_bucket(Bucket="put-cpu")
    extra = s3_extra_args({})
    transfer = Transfer(bucket, Path("."), SyncSettings(workers=IN_FLIGHT), extra)
    try:
        return {
            "client.put_object": threaded(lambda k: bucket.client.put_object(
                Bucket="put-cpu", Key=k, Body=BODY, **extra)["ETag"], "a", count),
            "direct PUT (migrator)": threaded(lambda k: transfer.put(k, BODY), "b", count),
            "obstore put_async": obstore_puts(endpoint, "put-cpu", count),
        }
    finally:
        transfer.close()


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret")
    work = Path(os.environ.get("BENCH_DIR", "/tmp/migrator-bench")) / "put-cpu"
    for server in os.environ.get("BENCH_S3", "rgw,moto").split(","):
        work.mkdir(parents=True, exist_ok=True)
        with s3_server(server, work) as (endpoint, _):
            for name, (cpu_ms, wall_s) in measure(endpoint, count).items():
                print(f"{server}: {name}: {cpu_ms:.2f} ms client CPU, {1 / wall_s:.0f} PUT/s ({count} requests, "
                      f"{IN_FLIGHT} in flight)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
