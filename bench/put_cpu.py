"""Client CPU per small PutObject: ``client.put_object`` against migrator's direct PUT, on a local moto_server.

``python -m bench.put_cpu [N]`` (default 2000 requests each, 71-byte bodies like the registry's link files).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from migrator.local import MotoServer
from migrator.plan import BucketSettings, SyncSettings
from migrator.s3 import open_bucket
from migrator.transfer import Transfer, s3_extra_args

BODY = b"sha256:" + b"0123456789abcdef" * 4


def cpu_ms_per_request(send, count: int) -> float:
    started = time.process_time()
    for index in range(count):
        send(f"docker/registry/v2/repositories/bench/_layers/sha256/{index:064x}/link")
    return (time.process_time() - started) / count * 1000


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret")
    moto = MotoServer().start()
    try:
        bucket = open_bucket(BucketSettings(name="put-cpu", endpoint=moto.endpoint), SyncSettings(), "")
        bucket.client.create_bucket(Bucket="put-cpu")
        extra = s3_extra_args({})
        transfer = Transfer(bucket, Path("."), SyncSettings(), extra)
        for name, send in (
            ("client.put_object", lambda key: bucket.client.put_object(Bucket="put-cpu", Key="a/" + key, Body=BODY, **extra)),
            ("direct PUT", lambda key: transfer.put("b/" + key, BODY)),
        ):
            send("warm-up")
            print(f"{name}: {cpu_ms_per_request(send, count):.2f} ms client CPU per request ({count} requests)")
        transfer.close()
    finally:
        moto.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
