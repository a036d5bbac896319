"""S3-compatible stores out of the box: what goes on the wire with each checksum setting (seen by a proxy, not by
botocore), the preflight canary on the copy's own paths, and errors that name the header and the plan key."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from conftest import invoke_cli
from faultproxy import FaultProxy

from migrator.plan import BucketSettings, SyncSettings
from migrator.s3 import checksum_mode, explain, open_bucket

CHECKSUM_HEADERS = ("x-amz-checksum-crc32", "x-amz-checksum-sha256", "x-amz-sdk-checksum-algorithm", "x-amz-trailer")


@pytest.mark.parametrize("endpoint, mode", [
    (None, "when_supported"), ("https://s3.eu-west-1.amazonaws.com", "when_supported"),
    ("http://127.0.0.1:9000", "when_required"), ("https://rgw.example.com", "when_required"),
])
def test_auto_checksums_are_botocores_default_on_aws_only(endpoint, mode):
    assert checksum_mode(BucketSettings(name="b", endpoint=endpoint)) == mode
    assert checksum_mode(BucketSettings(name="b", endpoint=endpoint, checksums="when_supported")) == "when_supported"


def test_the_endpoint_rules_run_once_for_every_key_and_prefix():
    client = open_bucket(BucketSettings(name="b", endpoint="http://127.0.0.1:9"), SyncSettings(), "reg/").client
    resolve = client._ruleset_resolver._provider.resolve_endpoint
    with Stubber(client) as stub:
        for number in range(20):
            stub.add_response("head_object", {}, {"Bucket": "b", "Key": f"reg/key-{number}"})
            stub.add_response("list_objects_v2", {}, {"Bucket": "b", "Prefix": f"reg/prefix-{number}/"})
            stub.add_response("copy_object", {}, {"Bucket": "b", "Key": f"reg/copy-{number}",
                                                  "CopySource": f"b/reg/key-{number}"})
        misses = resolve.cache_info().misses
        for number in range(20):
            client.head_object(Bucket="b", Key=f"reg/key-{number}")
            client.list_objects_v2(Bucket="b", Prefix=f"reg/prefix-{number}/")
            client.copy_object(Bucket="b", Key=f"reg/copy-{number}", CopySource=f"b/reg/key-{number}")
    assert resolve.cache_info().misses - misses <= 3  # once per operation's own static inputs, not per key


@pytest.mark.parametrize("setting", ["auto", pytest.param("when_supported", marks=pytest.mark.slow)])
def test_what_a_sync_sends_with_each_checksum_setting(moto_server, tree, make_plan, tmp_path, setting):
    (tree.root / "docker/registry/v2/blobs/sha256/ff").mkdir(parents=True, exist_ok=True)
    big = tree.root / "docker/registry/v2/blobs/sha256/ff/big/data"
    big.parent.mkdir()
    big.write_bytes(b"x" * (6 * 2**20))  # above the threshold below: the multipart path
    proxy = FaultProxy(moto_server.endpoint).start()
    try:
        plan = make_plan(tree.root, sync={"workers": 4, "multipart_threshold_mb": 5, "multipart_chunksize_mb": 5})
        text = plan.read_text().replace(moto_server.endpoint, proxy.endpoint)
        plan.write_text(text.replace("region: us-east-1", f"region: us-east-1\n  checksums: {setting}"))
        result = invoke_cli("sync", plan)
        assert result.returncode == 0, result.stderr
    finally:
        proxy.stop()
    uploads = [(method, path, headers) for method, path, headers in proxy.seen
               if method == "PUT" and "x-id=" not in path or "partNumber=" in path]
    deletes = [headers for method, path, headers in proxy.seen if method == "POST" and path.endswith("?delete")]
    assert uploads and deletes, proxy.seen[:5]
    with_checksums = [path for _, path, headers in uploads if any(h in headers for h in CHECKSUM_HEADERS)]
    chunked = [path for _, path, headers in uploads if "aws-chunked" in headers.get("content-encoding", "")]
    if setting == "auto":  # moto on loopback is not AWS: nothing a store without CRC support would refuse, but
        # the canary finds that moto keeps CRC32 checksums: parts carry them, in a header (aws-chunked is refused)
        parts = [path for _, path, _ in uploads if "partNumber=" in path]
        assert not chunked and sorted(with_checksums) == sorted(parts), with_checksums[:3] + chunked[:3]
        assert all("content-md5" in headers for headers in deletes)
    else:
        assert len(with_checksums) == len(uploads), "botocore's default sends checksums: this test would see them"


def test_an_unsupported_storage_class_fails_in_preflight(tree, make_plan, s3, bucket, tmp_path):
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tree.root}\n")
    plan = make_plan(tree.root, registry={"config": str(config), "restart": "true", "url": "http://127.0.0.1:9",
                                          "storage": {"storageclass": "FANCY_TIER"}})
    result = invoke_cli("run", "--yes", plan)
    assert result.returncode == 2, result.stderr
    assert "storageclass" in result.stderr and "x-amz-storage-class" in result.stderr
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


@pytest.mark.parametrize("code, status, named", [
    ("MissingContentLength", 411, "bucket.checksums: when_required"),
    ("NotImplemented", 501, "bucket.checksums: when_required"),
    ("MissingContentMD5", 400, "Content-MD5"),
    ("InvalidArgument", 400, "registry.storage.storageclass"),
])
def test_compatibility_errors_name_the_header_and_the_plan_key(code, status, named):
    error = ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")
    assert named in explain(error, "bucket")
