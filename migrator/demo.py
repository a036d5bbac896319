"""A real demo migration on local parts: docker-registry on the filesystem → moto_server S3.

``python -m migrator.demo`` (or ``make demo``): starts both on loopback, pushes images through the
registry's HTTP API, runs ``migrator run --yes``, pulls every image back from the S3-backed registry
and checks its digests, then stops everything.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import boto3

from migrator.registry_http import RegistryClient
from migrator.testing.local import LocalRegistry, MotoServer


def main() -> int:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "demo-access-key")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "demo-secret-key")
    workdir = Path(tempfile.mkdtemp(prefix="migrator-demo-"))
    moto = MotoServer(logfile=workdir / "moto.log").start()
    registry = LocalRegistry(workdir, moto.endpoint, "demo-registry", prefix="registry")
    try:
        boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1").create_bucket(Bucket="demo-registry")
        registry.start()
        client = RegistryClient(registry.url)
        rng = random.Random(7)
        pushed = {}
        for index in range(12):
            repository = f"demo/{['web', 'api', 'worker'][index % 3]}"
            layers = [rng.randbytes(rng.randint(1000, 300_000)) for _ in range(rng.randint(1, 3))]
            pushed[(repository, f"v{index}")] = client.push_image(repository, f"v{index}", layers)
        print(f"pushed {len(pushed)} images to the filesystem registry at {registry.url}")
        plan = registry.write_plan()
        print(f"plan: {plan}\n$ migrator run --yes {plan}")
        code = subprocess.call([sys.executable, "-m", "migrator", "run", "--yes", str(plan)])
        if code != 0:
            print(f"migrator run exited {code}")
            return code
        for (repository, tag), digest in pushed.items():
            if client.pull_image(repository, tag) != digest:
                print(f"FAILED: {repository}:{tag} pulled with another digest")
                return 1
        print(f"all {len(pushed)} images pull with matching digests from the S3-backed registry")
        print(f"registry config now:\n{registry.config.read_text()}")
        return 0
    finally:
        registry.stop()
        moto.stop()
        print(f"demo files kept in {workdir}")


if __name__ == "__main__":
    sys.exit(main())
