"""moto_server enforcing IAM (``INITIAL_NO_AUTH_ACTION_COUNT``) whose S3 signature check works for query values with
``/``: moto 5 hands botocore's signer the request's query decoded (``prefix=reg/``) where the client signed it
encoded (``prefix=reg%2F``), so every listing under a prefix answered SignatureDoesNotMatch.

Run as ``python tests/iam_moto.py -H 127.0.0.1 -p PORT`` (moto_server's arguments).
"""

import sys
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from moto.iam.access_control import S3IAMRequest
from moto.server import main

_create_aws_request = S3IAMRequest._create_aws_request


def _encoded_query(self):
    parts = urlsplit(self._path)
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = "&".join(f"{quote(key, safe='-_.~')}={quote(value, safe='-_.~')}" for key, value in pairs)
        self._path = urlunsplit(("", "", parts.path, query, ""))
    return _create_aws_request(self)


S3IAMRequest._create_aws_request = _encoded_query

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
