"""Single-part PutObject without botocore's per-call machinery.

A registry is mostly 71-byte link files, so the copy is bound by CPU per request, and botocore spends most of
it on parameter handling, event hooks and response parsing around the request (2.1 ms a PutObject on the bench
machine, 0.9 ms for the same request sent this way). The request is the one the client would send: the client's
own URL (taken from a presigned URL, so addressing style, region and endpoint are botocore's), its SigV4 signer
and credentials, its connection pool, the headers the PutObject model gives each extra argument, and a CRC32
checksum header as botocore adds by default (none with ``bucket.checksums: when_required``). Anything but a clean
200 with an ETag returns None, and the caller sends the upload through ``client.put_object``, with its retries and
its errors.
"""

from __future__ import annotations

import base64
import logging
import zlib
from typing import Any, Optional
from urllib.parse import quote

import botocore.exceptions
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest

PROBE_KEY = "migrator-url-probe"
GIVE_UP_AFTER = 20  # failures in a row: the bucket answers this way to every direct request (say, a region redirect)
_CERTIFICATE = ("certificate", "UnknownIssuer", "CaUsedAsEndEntity", "tls handshake")  # never better on a retry

log = logging.getLogger("migrator")


class FallbackPut:
    """A PUT path outside the client: ``_send`` answers the ETag or None, and every None hands the upload back to
    ``client.put_object`` (counted in ``fallbacks``); after ``GIVE_UP_AFTER`` failures in a row, or at once when the
    endpoint's certificate is what failed, it stops trying for the rest of the run and says so once."""

    fallbacks = 0  # requests handed back to put_object
    problem = ""  # what the last request that failed ran into (``_send`` sets it)
    given_up = False  # every upload goes through put_object: the caller need not ask (nor count a retry)
    _failures_in_a_row = 0

    def put(self, key: str, body: bytes) -> Optional[str]:
        """The ETag the bucket answered, or None if the request did not cleanly succeed (or was not sent: given up)."""
        if self.given_up:
            return None
        etag = self._send(key, body)
        if etag is not None:
            self._failures_in_a_row = 0
            return etag
        self.fallbacks += 1
        self._failures_in_a_row += 1
        certificate = any(word.lower() in self.problem.lower() for word in _CERTIFICATE)
        if (certificate or self._failures_in_a_row >= GIVE_UP_AFTER) and not self.given_up:
            self.given_up = True
            log.warning("%s: %s; every upload goes through boto3's put_object for the rest of the run%s",
                        type(self).__name__, self.problem or f"{self._failures_in_a_row} requests in a row failed",
                        " (it trusts bucket.ca_bundle / AWS_CA_BUNDLE; this PUT path could not use that certificate)"
                        if certificate else "")
        return None

    def _send(self, key: str, body: bytes) -> Optional[str]:
        raise NotImplementedError


class DirectPut(FallbackPut):
    """Signed PutObject requests on the client's connection pool."""

    def __init__(self, client: Any, bucket: str, credentials: Any, extra_args: dict):
        self.region = client.meta.region_name
        self.credentials = credentials
        self.session = client._endpoint.http_session
        presigned = client.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": PROBE_KEY})
        url = presigned.split("?", 1)[0]
        if not url.endswith("/" + PROBE_KEY):
            raise ValueError(f"unexpected object URL shape: {url}")
        self.url_base = url[: -len(PROBE_KEY)]
        members = client.meta.service_model.operation_model("PutObject").input_shape.members
        self.headers = {}
        for name, value in extra_args.items():
            serialization = members[name].serialization
            if serialization.get("location") != "header":
                raise ValueError(f"PutObject argument {name} is not a header")
            self.headers[serialization["name"]] = str(value)
        # a CRC32 header as botocore adds one, unless the plan's checksum setting is when_required
        self.checksum = getattr(client.meta.config, "request_checksum_calculation", None) != "when_required"

    def _send(self, key: str, body: bytes) -> Optional[str]:
        headers = dict(self.headers)
        if self.checksum:
            headers["x-amz-checksum-crc32"] = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
        request = AWSRequest(method="PUT", url=self.url_base + quote(key, safe="/~"), data=body, headers=headers)
        S3SigV4Auth(self.credentials.get_frozen_credentials(), "s3", self.region).add_auth(request)
        try:
            response = self.session.send(request.prepare())
        except botocore.exceptions.BotoCoreError as exc:
            self.problem = str(exc)
            return None
        etag = response.headers.get("ETag")
        if response.status_code == 200 and etag:
            return etag
        self.problem = f"PUT answered {response.status_code}"
        return None


def direct_put(client: Any, bucket: str, credentials: Any, extra_args: dict) -> Optional[DirectPut]:
    """A DirectPut for this client, or None when it cannot be built (no credentials, a botocore without the
    pieces it uses, an argument that is not a header): uploads then all go through ``client.put_object``."""
    if credentials is None or not hasattr(getattr(client, "_endpoint", None), "http_session"):
        return None
    try:
        return DirectPut(client, bucket, credentials, extra_args)
    except (ValueError, KeyError, AttributeError, botocore.exceptions.BotoCoreError):
        return None
