"""Single-part PutObject through obstore (Rust ``object_store``): the request is built, signed and sent with the GIL
released, so a small object costs less Python CPU than even the direct PUT (``bench/put_cpu.py``).

The default (``sync.put: obstore``: the whole copy measured faster in ``make bench``), with the direct PUT's
guarantees: the object's headers (content type, the plan's encryption and storage class), credentials from the same
AWS chain (boto3's session, refreshed), the plan's CA bundle (else ``AWS_CA_BUNDLE``), retries on 5xx and dropped
connections, a signed payload hash (and a SHA-256 checksum unless ``bucket.checksums`` is when_required), and the ETag
the bucket answered, which the copy compares with the md5 of the bytes sent. Anything but a clean answer returns
None and the caller sends the upload through ``client.put_object``, with botocore's retries and errors.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Optional

from migrator import __version__
from migrator.direct_put import FallbackPut
from migrator.plan import BucketSettings
from migrator.s3 import checksum_mode

if TYPE_CHECKING:  # obstore's option types exist in its stubs only
    from obstore.store import ClientConfig, S3Config


class ObstorePut(FallbackPut):
    """PutObject requests on obstore's own client and runtime."""

    def __init__(self, settings: BucketSettings, extra_args: dict, max_attempts: int):
        import boto3
        import obstore
        from obstore.auth.boto3 import Boto3CredentialProvider
        from obstore.store import S3Store

        self._put = obstore.put
        config: S3Config = {}
        if extra_args.get("ServerSideEncryption"):
            config["server_side_encryption"] = extra_args["ServerSideEncryption"]
        if extra_args.get("SSEKMSKeyId"):
            config["sse_kms_key_id"] = extra_args["SSEKMSKeyId"]
        options: ClientConfig = {"connect_timeout": timedelta(seconds=10), "timeout": timedelta(seconds=60),
                                 "user_agent": f"migrator/{__version__} obstore",  # the store's access log tells who sent it
                                 "allow_http": bool(settings.endpoint and settings.endpoint.startswith("http://"))}
        if settings.trusted_ca:  # what boto3 trusts, obstore trusts
            options["root_certificate"] = settings.trusted_ca.read_text()
        if checksum_mode(settings) != "when_required":  # the body's SHA-256 sent as a checksum, as botocore sends CRC32
            config["checksum_algorithm"] = "sha256"
        if settings.endpoint:
            config.update({"endpoint": settings.endpoint, "virtual_hosted_style_request": False})
        self.store = S3Store(settings.name, region=settings.region, client_options=options,
                             credential_provider=Boto3CredentialProvider(boto3.session.Session(
                                 profile_name=settings.profile)),
                             retry_config={"max_retries": max(0, max_attempts - 1)}, config=config)
        self.attributes = {"Content-Type": extra_args.get("ContentType", "application/octet-stream")}
        if extra_args.get("StorageClass"):
            self.attributes["Storage-Class"] = extra_args["StorageClass"]

    def _send(self, key: str, body: bytes) -> Optional[str]:
        try:
            return self._put(self.store, key, body, attributes=self.attributes, use_multipart=False)["e_tag"] or None
        except Exception as exc:  # noqa: BLE001 - any failure: the client's path decides, with its own errors
            self.problem = str(exc)
            return None
