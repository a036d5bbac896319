"""The bucket: one shared boto3 client, request counting per phase, listings by shard, clear errors."""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import logging
import os
import threading
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import boto3
import botocore.exceptions
from botocore.config import Config

from migrator.errors import InvalidInput
from migrator.layout import Shard, is_uploads
from migrator.plan import BucketSettings, SyncSettings

if TYPE_CHECKING:
    from migrator.parts import PartBody

log = logging.getLogger(__name__)
DELETE_BATCH = 1000  # DeleteObjects' most keys a request
PART_CHECKSUM = "CRC32"  # what aws s3 (s3transfer) asks multipart uploads for when the client computes checksums
CompletedPart = dict[str, str]  # a part as CompleteMultipartUpload names it: its ETag, and its checksum if it has one


class RequestCounter:
    """Counts S3 HTTP attempts (retries included) and API calls, per phase, through botocore events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.phase = "setup"
        self.attempts: Counter = Counter()
        self.calls: Counter = Counter()

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-send.s3", self._on_send)
        client.meta.events.register("before-call.s3", self._on_call)

    def _on_send(self, **kwargs: object) -> None:
        with self._lock:
            self.attempts[self.phase] += 1

    def _on_call(self, **kwargs: object) -> None:
        with self._lock:
            self.calls[self.phase] += 1

    def count_direct(self, succeeded: bool) -> None:
        """A request sent outside the client (``DirectPut``): an attempt, and a call when it needed no retry."""
        with self._lock:
            self.attempts[self.phase] += 1
            self.calls[self.phase] += succeeded

    def add(self, attempts: int, calls: int) -> None:
        """Requests made by another process for this one (a Dask task), counted in the current phase."""
        with self._lock:
            self.attempts[self.phase] += attempts
            self.calls[self.phase] += calls

    @contextlib.contextmanager
    def phase_scope(self, name: str) -> Iterator[None]:
        previous, self.phase = self.phase, name
        try:
            yield
        finally:
            self.phase = previous

    def retries(self, phase: str) -> int:
        return max(0, self.attempts[phase] - self.calls[phase])


@dataclass
class Bucket:
    """A bucket and key prefix, reached through one client shared by every worker thread."""

    settings: BucketSettings
    key_prefix: str
    client: Any  # botocore's S3 client
    counter: RequestCounter
    credentials: object = None  # the session's (refreshable) credentials, for requests signed outside the client
    etags_are_md5: bool = True  # listed single-part ETags are content MD5s (no SSE-KMS by default); see check_etags
    part_checksum: Optional[str] = None  # the checksum multipart uploads are created with; see open_bucket

    def key(self, rel: str) -> str:
        return self.key_prefix + rel

    def rel(self, key: str) -> str:
        return key[len(self.key_prefix):]

    def etag_md5(self, etag: str, encryption: Optional[str] = None, customer_key: bool = False) -> Optional[str]:
        """The content's MD5 when this ETag is one: single-part and not SSE-KMS or SSE-C, whose ETags are not.
        ``encryption`` is the object's ServerSideEncryption when known (a PUT or HEAD answer); without it the
        bucket's default decides."""
        etag = etag.strip('"')
        if len(etag) != 32 or "-" in etag or customer_key:
            return None
        if encryption is None:
            return etag if self.etags_are_md5 else None
        return None if encryption.startswith("aws:kms") else etag

    def head(self, rel: str) -> Optional[dict]:
        """HeadObject's answer, or None when the key is not there."""
        try:
            return self.client.head_object(Bucket=self.settings.name, Key=self.key(rel))
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def head_md5(self, rel: str, head: dict) -> str:
        """The MD5 of the object a HEAD described: its ETag when that is one, else its bytes read."""
        return self.content_md5(rel, head.get("ETag", ""), head.get("ServerSideEncryption", ""),
                                "SSECustomerAlgorithm" in head)

    def content_md5(self, rel: str, etag: str, encryption: Optional[str] = None, customer_key: bool = False) -> str:
        """The MD5 of what the bucket holds at ``rel``: from the ETag when it is one, else by reading the object."""
        known = self.etag_md5(etag, encryption, customer_key)
        if known is not None:
            return known
        digest = hashlib.md5(usedforsecurity=False)
        for chunk in self.read_chunks(rel):
            digest.update(chunk)
        return digest.hexdigest()

    def read_chunks(self, rel: str) -> Iterator[bytes]:
        """The object's bytes, a MiB at a time (GetObject)."""
        yield from self.client.get_object(Bucket=self.settings.name, Key=self.key(rel))["Body"].iter_chunks(1024 * 1024)

    def head_bucket(self) -> None:
        """The bucket exists and these credentials reach it (HeadBucket; a ClientError otherwise)."""
        self.client.head_bucket(Bucket=self.settings.name)

    def get_bytes(self, rel: str) -> bytes:
        return self.client.get_object(Bucket=self.settings.name, Key=self.key(rel))["Body"].read()

    def first_keys(self, prefix: str, limit: int = 1000) -> list[str]:
        """Up to ``limit`` keys (paths below the bucket prefix) under ``prefix``, in one ListObjectsV2 request."""
        answer = self.client.list_objects_v2(Bucket=self.settings.name, Prefix=self.key(prefix), MaxKeys=limit)
        return [self.rel(item["Key"]) for item in answer.get("Contents", ())]

    def listing(self, prefix: str) -> Iterator[StoredObject]:
        """Every object under ``prefix`` (a path below the bucket prefix), in key order, ``_uploads`` included."""
        for page in list_pages(self, prefix):
            for item in page.get("Contents", ()):
                yield StoredObject(self.rel(item["Key"]), item["Size"], item["ETag"], item["LastModified"].timestamp())

    def put_object(self, rel: str, body: bytes, extra_args: dict) -> str:
        """PutObject through the client (its retries); returns the ETag."""
        return str(self.client.put_object(Bucket=self.settings.name, Key=self.key(rel), Body=body,
                                          **extra_args).get("ETag", ""))

    def delete_batches(self, rels: Sequence[str], quiet: bool) -> Iterator[tuple[list[str], list[dict]]]:
        """DeleteObjects in batches of 1000: per batch, the paths the bucket reported deleted (none when ``quiet``)
        and its per-key errors."""
        for start in range(0, len(rels), DELETE_BATCH):
            answer = self.client.delete_objects(Bucket=self.settings.name, Delete={
                "Objects": [{"Key": self.key(rel)} for rel in rels[start:start + DELETE_BATCH]], "Quiet": quiet})
            yield [self.rel(item["Key"]) for item in answer.get("Deleted") or ()], list(answer.get("Errors") or ())

    def delete_keys(self, rels: Sequence[str]) -> None:
        """DeleteObjects (quiet), for keys outside the copy (canaries, probe leftovers); the copy's own deletes go
        through ``Transfer.delete`` with its guards."""
        for _ in self.delete_batches(rels, quiet=True):
            pass

    def remove_prefix(self, prefix: str) -> None:
        """Every object and unfinished multipart upload under ``prefix`` removed, for keys outside the copy (doctor's
        scratch prefix)."""
        self.delete_keys([stored.rel for stored in self.listing(prefix)])
        for upload in self.open_uploads(prefix):
            self.abort_upload(upload.rel, upload.upload_id)

    def create_upload(self, rel: str, extra_args: dict) -> str:
        """CreateMultipartUpload, with ``part_checksum`` as its ChecksumAlgorithm; returns its UploadId."""
        return str(self.client.create_multipart_upload(Bucket=self.settings.name, Key=self.key(rel),
                                                       **self._checksum_args(), **extra_args)["UploadId"])

    def upload_part(self, rel: str, upload_id: str, number: int, body: PartBody) -> CompletedPart:
        """UploadPart, with its ``part_checksum`` computed by botocore (which the store checks the body against);
        returns the part as CompleteMultipartUpload names it."""
        answer = self.client.upload_part(Bucket=self.settings.name, Key=self.key(rel), UploadId=upload_id,
                                         PartNumber=number, Body=body, **self._checksum_args())
        return self._completed(answer)

    def complete_upload(self, rel: str, upload_id: str, parts: dict[int, CompletedPart]) -> str:
        """CompleteMultipartUpload of ``parts`` (number: the part's ETag and checksum); returns the object's ETag."""
        answer = self.client.complete_multipart_upload(
            Bucket=self.settings.name, Key=self.key(rel), UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": number, **parts[number]} for number in sorted(parts)]})
        return str(answer.get("ETag", ""))

    def open_uploads(self, prefix: str, exact: bool = False) -> Iterator[OpenUpload]:
        """Multipart uploads left open under ``prefix`` (ListMultipartUploads); ``exact``: for that path only."""
        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.settings.name,
                                                                                Prefix=self.key(prefix)):
            for upload in page.get("Uploads", ()):
                rel = self.rel(upload["Key"])
                if not exact or rel == prefix:
                    yield OpenUpload(rel, upload["UploadId"], upload["Initiated"].timestamp(),
                                     upload.get("ChecksumAlgorithm"))

    def uploaded_parts(self, upload: OpenUpload) -> Iterator[tuple[int, int, CompletedPart]]:
        """The parts an open upload holds (ListParts): (number, size, the part as CompleteMultipartUpload names it)."""
        for page in self.client.get_paginator("list_parts").paginate(Bucket=self.settings.name,
                                                                    Key=self.key(upload.rel), UploadId=upload.upload_id):
            for part in page.get("Parts", ()):
                yield part["PartNumber"], part["Size"], self._completed(part)

    def _checksum_args(self) -> dict[str, str]:
        return {"ChecksumAlgorithm": self.part_checksum} if self.part_checksum else {}

    def _completed(self, part: dict) -> CompletedPart:
        """The ETag and ``part_checksum`` value of an UploadPart answer or a ListParts entry."""
        member = f"Checksum{self.part_checksum}"
        return {"ETag": part["ETag"], **({member: part[member]} if self.part_checksum and part.get(member) else {})}

    def stored_checksum(self, rel: str) -> Optional[str]:
        """The ``part_checksum`` value the store keeps for an object (HeadObject with ChecksumMode), or None."""
        answer = self.client.head_object(Bucket=self.settings.name, Key=self.key(rel), ChecksumMode="ENABLED")
        return answer.get(f"Checksum{self.part_checksum}")

    def abort_upload(self, rel: str, upload_id: str) -> None:
        """AbortMultipartUpload; one already gone (completed or aborted meanwhile) is no error."""
        try:
            self.client.abort_multipart_upload(Bucket=self.settings.name, Key=self.key(rel), UploadId=upload_id)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise

    def configuration(self, call: str, missing: tuple[str, ...] = ()) -> tuple[Optional[dict], Optional[str]]:
        """One read of the bucket's configuration (``call``: the client's method, e.g. ``get_bucket_versioning``):
        (answer, None); (None, None) when the bucket has none (an error code in ``missing``, or a store without the
        call); (None, why not) when it cannot be read."""
        try:
            return getattr(self.client, call)(Bucket=self.settings.name), None
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in missing or code in ("NotImplemented", "MethodNotAllowed"):
                return None, None
            return None, f"{code}: {exc.response.get('Error', {}).get('Message', '')}"

    def check_etags(self, extra_args: dict) -> None:
        """Decide whether listed ETags are MD5s: not when our uploads or the bucket's default use SSE-KMS (the only
        way to know a listed object's encryption without a HEAD each). A bucket whose default cannot be read counts
        as not: content is then read where an ETag would have proven it."""
        if str(extra_args.get("ServerSideEncryption", "")).startswith("aws:kms"):
            self.etags_are_md5 = False
            return
        answer, problem = self.configuration("get_bucket_encryption", ("ServerSideEncryptionConfigurationNotFoundError",))
        if problem:
            log.info("cannot read bucket %r's default encryption (%s): ETags are not trusted as MD5s, link content is "
                     "read instead (grant s3:GetEncryptionConfiguration to avoid that)", self.settings.name, problem)
            self.etags_are_md5 = False
            return
        rules = (answer or {}).get("ServerSideEncryptionConfiguration") or {}
        algorithms = [rule.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm", "")
                      for rule in rules.get("Rules", [])]
        self.etags_are_md5 = not any(algorithm.startswith("aws:kms") for algorithm in algorithms)


def open_bucket(settings: BucketSettings, sync: SyncSettings, key_prefix: str, max_attempts: Optional[int] = None) -> Bucket:
    """A client with a connection pool sized to the workers and botocore retries for SlowDown and resets.

    ``max_attempts`` overrides the plan's (preflight wants to fail fast on an unreachable endpoint).
    """
    checksums = checksum_mode(settings)
    options: dict[str, Any] = {  # retry_mode and checksums: validated by the plan against botocore's values
        "max_pool_connections": sync.workers + sync.shard_workers + 4,
        "retries": {"mode": sync.retry_mode, "max_attempts": max_attempts or sync.max_attempts},
        "s3": {"addressing_style": "path"} if settings.endpoint else {},
        "connect_timeout": 10,
        "read_timeout": 60,
        "request_checksum_calculation": checksums,
        "response_checksum_validation": checksums,
    }
    options["s3"]["payload_signing_enabled"] = signs_payload(settings)
    config = Config(**options)
    try:
        with _SESSIONS_LOCK:  # a boto3 session makes clients one at a time
            session = _session(settings.profile)
            client = session.client("s3", region_name=settings.region, endpoint_url=settings.endpoint, config=config,
                                    verify=str(settings.trusted_ca) if settings.trusted_ca else None)
    except botocore.exceptions.ProfileNotFound:
        raise InvalidInput(f"AWS profile {settings.profile!r} not found; fix bucket.profile or your ~/.aws/config") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise InvalidInput(explain(exc, settings.name)) from None
    except ValueError as exc:
        raise InvalidInput(
            f"bucket.endpoint {settings.endpoint!r} is not usable ({exc}); use a URL like http://host:9000"
        ) from None
    _cache_endpoints(client)
    if checksums == "when_required":  # stores that predate CRC checksums want DeleteObjects' Content-MD5
        client.meta.events.register("before-call.s3.DeleteObjects", _add_content_md5)
    counter = RequestCounter()
    counter.attach(client)
    try:
        credentials = session.get_credentials()
    except botocore.exceptions.BotoCoreError:
        credentials = None  # the client's own calls report the problem
    # a client that computes checksums adds one to every part, and AWS refuses a part whose checksum its upload was
    # not created with: as s3transfer, uploads are then created with CRC32 (other stores: the preflight's canary)
    return Bucket(settings, key_prefix, client, counter, credentials,
                  part_checksum=PART_CHECKSUM if checksums == "when_supported" else None)


_SESSIONS_LOCK = threading.Lock()


def _session(profile: Optional[str]) -> boto3.session.Session:
    """One boto3 session per profile and AWS_* environment: its second client takes ~17 ms to make instead of ~100 ms
    (the service model and the endpoint rules are loaded once). Credentials the environment changed get a new one."""
    return _session_for(profile, tuple(sorted((name, value) for name, value in os.environ.items()
                                              if name.startswith("AWS_"))))


@functools.cache
def _session_for(profile: Optional[str], environment: tuple) -> boto3.session.Session:
    """``environment`` only keys the cache: boto3 reads it itself."""
    return boto3.session.Session(profile_name=profile)


def checksum_mode(settings: BucketSettings) -> str:
    """``bucket.checksums``; ``auto`` keeps botocore's default (when_supported) for AWS and uses when_required for any
    other endpoint: aws-chunked uploads with a trailing CRC break Ceph RGW (411 over https), R2, B2, Scality and
    older MinIO."""
    if settings.checksums != "auto":
        return settings.checksums
    host = urllib.parse.urlparse(settings.endpoint).hostname if settings.endpoint else None
    aws = host is None or host.endswith((".amazonaws.com", ".amazonaws.com.cn"))
    return "when_supported" if aws else "when_required"


def signs_payload(settings: BucketSettings) -> bool:
    """``bucket.payload_signing``: whether botocore hashes each request body (SHA-256) into its signature. ``auto``:
    over plain http only, where that hash is all that proves the store got the bytes sent unaltered; over https TLS
    already proves it, and the hash costs the client and the store one more pass over every byte (against RGW on 2
    cores, ~0.5 s a GiB of wall; docs/benchmarks.md)."""
    if settings.payload_signing != "auto":
        return settings.payload_signing == "always"
    return urllib.parse.urlparse(settings.endpoint or "https://s3.amazonaws.com").scheme != "https"


def _add_content_md5(params: dict, **_: object) -> None:
    """DeleteObjects with Content-MD5, as stores without CRC checksum support require."""
    body = params.get("body")
    if isinstance(body, bytes) and "Content-MD5" not in params["headers"]:
        params["headers"]["Content-MD5"] = base64.b64encode(hashlib.md5(body).digest()).decode()


def _cache_endpoints(client: Any) -> None:
    """botocore resolves the endpoint ruleset per request with the object key, a listing's prefix and a copy's
    source among its inputs, so its cache never hits; no S3 rule reads them. Dropping the inputs no rule reads saves
    ~15 % CPU a request."""
    resolver = getattr(client, "_ruleset_resolver", None)
    definitions = getattr(resolver, "_param_definitions", None)
    rules = getattr(getattr(resolver, "_provider", None), "ruleset", None)
    if not isinstance(definitions, dict) or rules is None:
        return
    read = set(_ruleset_refs(rules))
    for name in [name for name in definitions if name not in read]:
        definitions.pop(name)


def _ruleset_refs(node: object) -> list:
    """Every parameter a ruleset's rules reference."""
    if isinstance(node, dict):
        found = [node["ref"]] if isinstance(node.get("ref"), str) else []
        return found + [ref for value in node.values() for ref in _ruleset_refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _ruleset_refs(value)]
    if hasattr(node, "__dict__"):
        return _ruleset_refs(vars(node))
    return []


def explain(exc: Exception, bucket: str) -> str:
    """An operator's sentence for a bucket error: the problem and the fix, never a secret."""
    if isinstance(exc, botocore.exceptions.PartialCredentialsError):
        return f"incomplete AWS credentials ({exc}); set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither"
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return "no AWS credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, bucket.profile, or an instance role"
    if isinstance(exc, botocore.exceptions.SSLError):
        return (f"the S3 endpoint's TLS certificate is not trusted ({exc.kwargs.get('endpoint_url', '?')}); if it is "
                "signed by a private CA or self-signed, set bucket.ca_bundle to its PEM file")
    if isinstance(exc, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError)):
        return f"cannot reach the S3 endpoint ({exc.kwargs.get('endpoint_url', '?')}); check bucket.endpoint and the network"
    if isinstance(exc, botocore.exceptions.ClientError):
        code = exc.response.get("Error", {}).get("Code", "?")
        hints = {
            "NoSuchBucket": f"bucket {bucket!r} does not exist; create it or fix bucket.name",
            "404": f"bucket {bucket!r} does not exist; create it or fix bucket.name",
            "AccessDenied": (f"access to bucket {bucket!r} denied; grant s3:ListBucket/GetObject/PutObject/DeleteObject "
                             "and, for large files, s3:ListBucketMultipartUploads/ListMultipartUploadParts/"
                             "AbortMultipartUpload"),
            "403": f"access to bucket {bucket!r} denied; check the credentials and the bucket policy",
            "InvalidAccessKeyId": "the AWS access key id is not valid; check the credentials in the environment or profile",
            "SignatureDoesNotMatch": "the AWS secret key does not match the access key id; check the credentials",
        }
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        problem = f"S3 error {code} on bucket {bucket!r}: {exc.response.get('Error', {}).get('Message', '')}"
        compatibility = COMPATIBILITY.get(code) or COMPATIBILITY.get(status)
        if compatibility:
            return f"{problem}. {compatibility}"
        return hints.get(code, problem)
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return f"S3 error on bucket {bucket!r}: {exc}"
    return f"{type(exc).__name__}: {exc}"


BUCKET_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)
_CHECKSUMS = ("this store does not take boto3's checksums (an aws-chunked body with a trailing x-amz-checksum-crc32, "
              "Content-Encoding: aws-chunked): set bucket.checksums: when_required in the plan")
COMPATIBILITY = {  # errors from S3-compatible stores that name a header we sent, and the plan key that changes it
    "MissingContentLength": _CHECKSUMS,
    "411": _CHECKSUMS,
    "NotImplemented": _CHECKSUMS + " (or the header named above is not supported)",
    "501": _CHECKSUMS + " (or the header named above is not supported)",
    "MissingContentMD5": "this store wants Content-MD5 on DeleteObjects: set bucket.checksums: when_required",
    "InvalidStorageClass": "the store does not offer the x-amz-storage-class sent: fix registry.storage.storageclass",
    "InvalidArgument": ("the store rejected a header we sent: x-amz-storage-class (registry.storage.storageclass), "
                        "x-amz-server-side-encryption (registry.storage.encrypt/keyid) or x-amz-checksum-* "
                        "(bucket.checksums: when_required)"),
}


@dataclass(frozen=True)
class OpenUpload:
    """A multipart upload not completed nor aborted, as ListMultipartUploads names it (initiated: seconds since the
    epoch; checksum: its ChecksumAlgorithm, when the store names one)."""

    rel: str
    upload_id: str
    initiated: float
    checksum: Optional[str] = None


@dataclass(frozen=True)
class StoredObject:
    """One object as a listing names it, with its LastModified (seconds since the epoch)."""

    rel: str
    size: int
    etag: str
    modified: float


@dataclass(frozen=True)
class ListedObject:
    rel: str
    size: int
    etag: str
    etag_is_md5: bool = True  # the bucket's listed ETags can be MD5s (``Bucket.etags_are_md5``)

    @property
    def md5(self) -> Optional[str]:
        """The content md5 when the ETag is one (single-part upload without KMS)."""
        etag = self.etag.strip('"')
        return etag if self.etag_is_md5 and len(etag) == 32 and "-" not in etag else None


def list_pages(bucket: Bucket, prefix: str, delimiter: Optional[str] = None) -> Iterator[dict]:
    """ListObjectsV2 pages of the keys under ``prefix`` (a path below the bucket prefix), in key order."""
    paginator = bucket.client.get_paginator("list_objects_v2")
    kwargs = {"Bucket": bucket.settings.name, "Prefix": bucket.key(prefix)}
    if delimiter:
        kwargs["Delimiter"] = delimiter
    yield from paginator.paginate(**kwargs)


def list_shard(bucket: Bucket, shard: Shard) -> Iterator[ListedObject]:
    """The shard's objects in key order, ``_uploads`` skipped. Shards with excludes walk by delimiter."""
    if not shard.excludes:
        for page in list_pages(bucket, shard.prefix):
            for item in page.get("Contents", ()):
                rel = bucket.rel(item["Key"])
                if not is_uploads(rel):
                    yield ListedObject(rel, item["Size"], item["ETag"], bucket.etags_are_md5)
        return
    found: list[ListedObject] = []
    pending = [shard.prefix]
    while pending:
        prefix = pending.pop()
        for page in list_pages(bucket, prefix, "/"):
            for item in page.get("Contents", ()):
                rel = bucket.rel(item["Key"])
                if shard.contains(rel) and not is_uploads(rel):
                    found.append(ListedObject(rel, item["Size"], item["ETag"], bucket.etags_are_md5))
            for common in page.get("CommonPrefixes", ()):
                rel = bucket.rel(common["Prefix"])
                if not rel.startswith(shard.excludes) and not is_uploads(rel):
                    pending.append(rel)
    yield from sorted(found, key=lambda o: o.rel)
