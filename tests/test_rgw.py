"""Against a real S3 implementation: Ceph RGW (``migrator.testing.rgw``), over http and https
(a certificate from a throw-away CA).

moto accepts anything; RGW answers 411 to boto3's default aws-chunked uploads over https, returns an empty ETag from
CompleteMultipartUpload and rejects storage classes it does not have. The oracles are the bucket's own answers
(listed and read back with a client of the test's own) against a plain ``os.walk`` of the source, and skopeo.
"""

from __future__ import annotations

import json
import random
import urllib.parse
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import UPLOADS, bucket_contents, run_cli, source_files
from oci import Layout, pull, push

from migrator.registry_http import RegistryClient
from migrator.testing.local import LocalRegistry
from migrator.testing.synthetic import RegistryTree, populate

pytestmark = pytest.mark.slow


@pytest.fixture(params=["http", "https"])
def scheme(request) -> str:
    return request.param


@pytest.fixture
def rgw_bucket(rgw) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    rgw.client().create_bucket(Bucket=name)
    return name


def endpoint(rgw, scheme: str) -> str:
    return rgw.https_endpoint if scheme == "https" else rgw.endpoint


def sync_plan(rgw, bucket: str, source: Path, scheme: str = "http", **bucket_keys) -> Path:
    """A plan without a registry section (``sync`` and ``verify`` only) for ``source`` on RGW."""
    bucket_section = {"name": bucket, "prefix": "reg", "endpoint": endpoint(rgw, scheme), **bucket_keys}
    if scheme == "https":
        bucket_section["ca_bundle"] = str(rgw.certificate)
    plan = {"source": str(source), "bucket": bucket_section,
            "sync": {"workers": 4, "shard_workers": 4, "multipart_threshold_mb": 6, "multipart_chunksize_mb": 5}}
    path = source.parent / f"plan-{uuid.uuid4().hex[:6]}.yml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def test_registry_migrates_to_rgw_and_every_image_pulls(tmp_path, rgw, rgw_bucket, scheme):
    """`migrator run --yes` with a real docker-registry on the other side; over https the plan trusts the
    throw-away CA (bucket.ca_bundle) and the registry's driver skips verification: no environment
    variable is needed beyond the credentials."""
    registry = LocalRegistry(tmp_path / "registry", endpoint(rgw, scheme), rgw_bucket, prefix="reg").start()
    try:
        host = urllib.parse.urlparse(registry.url).netloc
        layout = Layout(tmp_path / "images")
        layout.image("v1", "app")
        layout.multi_arch("latest", "multi")
        layout.image("uploads-tag", "tag-named-uploads")
        images = {"team0/app:v1": "v1", "multi/arch:latest": "latest", "team0/app:_uploads": "uploads-tag"}
        for reference, tag in images.items():
            push(layout, tag, host, reference)
        assert RegistryClient(registry.url).request("POST", "/v2/team0/app/blobs/uploads/").status == 202
        bucket_keys = {"name": rgw_bucket, "prefix": "reg", "region": "us-east-1", "endpoint": endpoint(rgw, scheme)}
        storage = {}
        if scheme == "https":
            bucket_keys["ca_bundle"] = str(rgw.certificate)
            storage["skipverify"] = True
        plan = registry.write_plan(bucket=bucket_keys, registry={
            "config": str(registry.config), "restart": registry.restart_command, "url": registry.url,
            "health_timeout_seconds": 30, "storage": storage})

        result = run_cli("run", "--yes", plan)
        assert result.returncode == 0, result.stdout + result.stderr

        config = yaml.safe_load(registry.config.read_text())["storage"]
        assert config["s3"]["regionendpoint"] == endpoint(rgw, scheme)
        for reference, tag in images.items():  # every platform, every blob, through the 307 to RGW
            assert pull(host, reference, tmp_path / "after") == layout.digest(tag), reference
        copied = {rel: data for rel, data in
                  bucket_contents(rgw.client(), rgw_bucket, "reg/").items() if not UPLOADS.match(rel)}
        assert copied == source_files(registry.root)
        report = json.loads((plan.parent / "plan.state" / "report.json").read_text())
        assert report["images"]["missing"] == 0 and report["images"]["sample_on_s3"]["failures"] == 0
        assert report["verification"]["missing"] == report["verification"]["mismatched"] == 0
    finally:
        registry.stop()


@pytest.mark.parametrize("checksums", ["auto", "when_supported"])
def test_https_uploads_work_because_of_the_checksum_default(tmp_path, rgw, rgw_bucket, checksums):
    """boto3's default (aws-chunked bodies with a trailing CRC32) gets 411 MissingContentLength from RGW over https:
    with it the run stops in preflight, naming the plan key, with nothing written; the default (auto → when_required
    for this endpoint) copies everything."""
    tree = RegistryTree(tmp_path / "src")
    populate(tree, images=6)
    tree.image("big/blob", "v1", [random.Random(1).randbytes(12 * 1024 * 1024)])
    result = run_cli("sync", sync_plan(rgw, rgw_bucket, tree.root, "https", checksums=checksums))
    bucket = bucket_contents(rgw.client(), rgw_bucket, "reg/")
    if checksums == "when_supported":
        assert result.returncode == 2, result.stdout + result.stderr
        assert "MissingContentLength" in result.stderr and "bucket.checksums: when_required" in result.stderr
        assert bucket == {}
    else:
        assert result.returncode == 0, result.stdout + result.stderr
        assert bucket == source_files(tree.root)


def test_unsupported_storage_class_stops_in_preflight(tmp_path, rgw, rgw_bucket):
    """The canary sends the copy's own headers: RGW's 400 InvalidArgument for a storage class it does not have
    stops the run before anything is copied (exit 2), naming the registry.storage key."""
    registry = LocalRegistry(tmp_path / "registry", rgw.endpoint, rgw_bucket, prefix="reg")
    populate(RegistryTree(registry.root), images=3)
    plan = registry.write_plan(registry={"config": str(registry.config), "restart": registry.restart_command,
                                         "url": registry.url, "storage": {"storageclass": "REDUCED_REDUNDANCY"}})
    result = run_cli("sync", plan)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "registry.storage.storageclass" in result.stderr
    assert bucket_contents(rgw.client(), rgw_bucket) == {}


def test_multipart_deletes_and_deep_verification_on_rgw(tmp_path, rgw, rgw_bucket):
    tree = RegistryTree(tmp_path / "src")
    populate(tree, images=10)
    tree.image("big/blob", "v1", [random.Random(2).randbytes(12 * 1024 * 1024)])
    plan = sync_plan(rgw, rgw_bucket, tree.root)
    assert run_cli("sync", plan).returncode == 0
    s3 = rgw.client()
    assert bucket_contents(s3, rgw_bucket, "reg/") == source_files(tree.root)
    layer = max(source_files(tree.root).items(), key=lambda item: len(item[1]))[0]
    etag = s3.head_object(Bucket=rgw_bucket, Key=f"reg/{layer}")["ETag"]
    assert etag.strip('"').endswith("-3"), f"{layer} was not uploaded in parts: {etag}"

    doomed = sorted(path for path in tree.root.rglob("_manifests/tags/*") if "big/blob" not in str(path))[0]
    for path in sorted(doomed.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    doomed.rmdir()
    assert run_cli("sync", plan).returncode == 0  # online passes only note delete candidates
    assert len(bucket_contents(s3, rgw_bucket, "reg/")) > len(source_files(tree.root))
    deleted = run_cli("run", "--yes", plan)  # without a registry section: sync, delete, verify
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert bucket_contents(s3, rgw_bucket, "reg/") == source_files(tree.root)  # the tag's keys are gone

    deep = run_cli("verify", "--deep", "--json", tmp_path / "deep.json", plan)
    assert deep.returncode == 0, deep.stdout + deep.stderr
    assert json.loads((tmp_path / "deep.json").read_text())["deep_failed_keys"] == []
    s3.put_object(Bucket=rgw_bucket, Key=f"reg/{layer}", Body=b"\0" * (12 * 1024 * 1024))  # same size, other bytes
    deep = run_cli("verify", "--deep", "--json", tmp_path / "deep.json", plan)
    assert deep.returncode == 1
    assert json.loads((tmp_path / "deep.json").read_text())["deep_failed_keys"] == [layer]


def test_an_untrusted_certificate_names_the_plan_key(tmp_path, rgw, rgw_bucket):
    tree = RegistryTree(tmp_path / "src")
    populate(tree, images=2)
    plan = sync_plan(rgw, rgw_bucket, tree.root, "https")
    settings = yaml.safe_load(plan.read_text())
    del settings["bucket"]["ca_bundle"]
    plan.write_text(yaml.safe_dump(settings))
    result = run_cli("sync", plan)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "not trusted" in result.stderr and "bucket.ca_bundle" in result.stderr
    assert bucket_contents(rgw.client(), rgw_bucket) == {}


def test_obstore_puts_over_https_trust_the_ca_bundle(tmp_path, rgw, rgw_bucket):
    """``sync.put: obstore`` sends the small objects itself (its own TLS client, given bucket.ca_bundle): RGW's access
    log shows them with its user agent, and the bucket equals the source."""
    tree = RegistryTree(tmp_path / "src")
    populate(tree, images=4)
    plan = sync_plan(rgw, rgw_bucket, tree.root, "https")
    settings = yaml.safe_load(plan.read_text())
    settings["sync"]["put"] = "obstore"
    plan.write_text(yaml.safe_dump(settings))
    result = run_cli("sync", plan)
    assert result.returncode == 0, result.stdout + result.stderr
    assert bucket_contents(rgw.client(), rgw_bucket, "reg/") == source_files(tree.root)
    puts = [line for line in rgw.access_log.read_text().splitlines()
            if f'"PUT /{rgw_bucket}/reg/docker/' in line]
    assert puts and all("obstore" in line for line in puts), puts[:2]
