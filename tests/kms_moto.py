"""moto_server whose ETags for SSE-KMS objects are not the MD5 of their content, as AWS's are not.

Run as ``python tests/kms_moto.py -H 127.0.0.1 -p PORT`` (moto_server's arguments).
"""

import hashlib
import sys

from moto.s3.models import FakeKey
from moto.server import main

_md5_etag = FakeKey.etag


def _etag(self) -> str:
    etag = _md5_etag.fget(self)
    if self.encryption and self.encryption.startswith("aws:kms"):
        return '"' + hashlib.md5(b"kms:" + etag.encode()).hexdigest() + '"'  # 32 hex digits, not the content's MD5
    return etag


FakeKey.etag = property(_etag)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
