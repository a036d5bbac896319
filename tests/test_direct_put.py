"""Direct PutObject (and obstore's, with ``sync.put: obstore``): the same object as client.put_object, and every
failure handed back to it."""

from __future__ import annotations

from pathlib import Path

import pytest
from faultproxy import FaultProxy

from migrator.plan import BucketSettings, SyncSettings
from migrator.s3 import open_bucket
from migrator.transfer import Transfer, s3_extra_args
from migrator.walker import walk_path

KEY = "reg/docker/registry/v2/repositories/team-a/app.web_1/_manifests/tags/v1.0_rc-1+b ~x/current/link"
BODY = b"sha256:" + b"0123456789abcdef" * 4


def open_test_bucket(endpoint: str, name: str, retry_mode: str = "standard"):
    return open_bucket(BucketSettings(name=name, endpoint=endpoint), SyncSettings(retry_mode=retry_mode), "reg/")


@pytest.mark.parametrize("put", ["direct", "obstore"])
@pytest.mark.parametrize("storage", [{}, {"encrypt": True, "storageclass": "STANDARD_IA"}])
def test_a_direct_put_stores_what_put_object_stores(moto_server, s3, bucket, storage, put):
    target = open_test_bucket(moto_server.endpoint, bucket)
    extra = s3_extra_args(storage)
    transfer = Transfer(target, Path("."), SyncSettings(put=put), extra)
    assert transfer.direct is not None and transfer.direct.put(KEY, BODY) == s3.head_object(Bucket=bucket, Key=KEY)["ETag"]
    assert transfer.direct.fallbacks == 0
    target.client.put_object(Bucket=bucket, Key=KEY + ".boto", Body=BODY, **extra)
    sent, reference = (s3.get_object(Bucket=bucket, Key=key) for key in (KEY, KEY + ".boto"))
    assert sent["Body"].read() == reference["Body"].read() == BODY
    for field in ("ContentType", "ContentLength", "ETag", "ServerSideEncryption", "StorageClass"):
        assert sent.get(field) == reference.get(field), field


@pytest.mark.slow  # a fault storm: 30 % of the requests through a proxy fail
@pytest.mark.parametrize("put", ["direct", "obstore"])
def test_every_failed_direct_put_goes_through_put_object(moto_server, s3, bucket, tree, put):
    proxy = FaultProxy(moto_server.endpoint, mode="faults", rate=0.3, seed=4).start()
    try:
        target = open_test_bucket(proxy.endpoint, bucket)
        transfer = Transfer(target, tree.root, SyncSettings(put=put), s3_extra_args({}))
        files = list(walk_path(tree.root, "docker"))
        for future in [transfer.submit(src) for src in files]:
            future.result()
        transfer.close()
    finally:
        proxy.stop()
    assert sum(proxy.injected.values()) > 0
    assert transfer.direct.fallbacks < len(files)
    assert put == "obstore" or transfer.direct.fallbacks > 0  # obstore retries 5xx and resets itself first
    for src in files:
        assert s3.get_object(Bucket=bucket, Key="reg/" + src.rel)["Body"].read() == tree.path(src.rel).read_bytes()
    assert target.counter.retries("setup") >= transfer.direct.fallbacks


def test_adaptive_retries_keep_every_put_on_the_client(moto_server, bucket, tree):
    transfer = Transfer(open_test_bucket(moto_server.endpoint, bucket, "adaptive"), tree.root,
                        SyncSettings(retry_mode="adaptive"), s3_extra_args({}))
    assert transfer.direct is None  # its client-side rate limiter must see every request
    transfer.close()
