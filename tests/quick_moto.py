"""moto_server without its per-request scan of moto's package directory (every request lists it and stats each of
its ~180 entries to decide whether the Host header names a service): the list is read once. What it answers is
unchanged.

Run as ``python tests/quick_moto.py -H 127.0.0.1 -p PORT`` (moto_server's arguments).
"""

import sys

from moto import backends
from moto.server import main

MOTO_MODULES = tuple(backends.list_of_moto_modules())
backends.list_of_moto_modules = lambda: MOTO_MODULES

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
