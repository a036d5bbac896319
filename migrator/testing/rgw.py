"""A throw-away Ceph RADOS Gateway on loopback: a real S3 implementation for the tests and the benchmark.

One monitor, one in-memory OSD (``memstore``: objects live in RAM, about three times their size) and one
``radosgw`` with a plain-http and a TLS port (a certificate signed by a throw-away CA made here), all started from one
directory without systemd. ``python -m migrator.testing.rgw DIR`` starts one and prints its endpoints and keys.

Facts it is built on (Ceph 16.2): the OSD's data directory must be named ``osd.0``; with authentication off the
monitor must also offer ``crc`` to clients (``ms mon client mode = crc secure``) or radosgw waits 300 s for an
authentication that never comes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Optional

from migrator.net import free_port

PACKAGES = ("ceph-mon", "ceph-osd", "radosgw", "ceph-common")
BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")
ACCESS_KEY = "migratortestaccess"
SECRET_KEY = "migratortestsecretkey0123456789"

CEPH_CONF = """\
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc secure
osd objectstore = memstore
memstore device bytes = {memstore_bytes}
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
run dir = {dir}/run
log file = {dir}/log/$name.log
admin socket = {dir}/run/$name.asok
pid file = {dir}/run/$name.pid
mon data = {dir}/mon.$id
osd data = {dir}/$name
keyring = /dev/null

[client.rgw]
rgw frontends = beast port={http_port} ssl_port={https_port} ssl_certificate={dir}/rgw.crt ssl_private_key={dir}/rgw.key
rgw dns name = localhost
rgw thread pool size = 128
rgw gc obj min wait = 0
rgw gc processor period = 30
"""


class RadosGatewayUnavailable(RuntimeError):
    """RGW cannot run on this machine (a binary is missing, or a daemon did not come up); the message says why."""


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if shutil.which(name) is None]


class RadosGateway:
    """A single-node Ceph cluster with one gateway, under ``workdir``; ``stop()`` kills it and keeps its logs."""

    def __init__(self, workdir: Path, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY,
                 memstore_bytes: int = 4 << 30):
        self.workdir = Path(workdir).resolve()
        self.memstore_bytes = memstore_bytes
        self.mon_port, self.http_port, self.https_port = free_port(), free_port(), free_port()
        self.endpoint = f"http://127.0.0.1:{self.http_port}"
        self.https_endpoint = f"https://127.0.0.1:{self.https_port}"
        self.certificate = self.workdir / "ca.crt"  # the CA that signed the gateway's certificate
        self.access_key, self.secret_key = access_key, secret_key
        self.conf = self.workdir / "ceph.conf"
        self.access_log = self.workdir / "log" / "client.rgw.log"  # one "beast:" line a request
        self._daemons: list[subprocess.Popen] = []

    def start(self, timeout: float = 120) -> RadosGateway:
        missing = missing_binaries()
        if missing:
            raise RadosGatewayUnavailable(
                f"Ceph RGW is not installed (missing {', '.join(missing)}); "
                f"install it with: apt-get install --no-install-recommends {' '.join(PACKAGES)}")
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for sub in ("run", "log"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(CEPH_CONF.format(fsid=uuid.uuid4(), dir=self.workdir, mon_port=self.mon_port,
                                              http_port=self.http_port, https_port=self.https_port,
                                              memstore_bytes=self.memstore_bytes))
        self._certificate()
        monmap = self.workdir / "monmap"
        self._run("monmaptool", "--create", "--clobber", "--addv", "a", f"[v2:127.0.0.1:{self.mon_port}]",
                  "--fsid", self._fsid(), str(monmap))
        self._run("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(monmap))
        self._daemon("ceph-mon", "-i", "a")
        self._run("ceph", "osd", "create", timeout=max(5.0, deadline - time.monotonic()))
        (self.workdir / "osd.0").mkdir(exist_ok=True)
        self._run("ceph-osd", "-i", "0", "--mkfs")
        self._daemon("ceph-osd", "-i", "0")
        self._daemon("radosgw", "-n", "client.rgw")
        self._wait_gateway(deadline)
        self._run("radosgw-admin", "user", "create", "--uid=migrator", "--display-name=migrator tests",
                  f"--access-key={self.access_key}", f"--secret-key={self.secret_key}")
        self._warm_up()

    def _warm_up(self) -> None:
        """RGW creates its data pools on the first object and the first multipart upload (about 2 s each here):
        make them now, so no test or benchmarked tool is charged for them."""
        client = self.client()
        client.create_bucket(Bucket="warm-up")
        client.put_object(Bucket="warm-up", Key="object", Body=b"x")
        upload = client.create_multipart_upload(Bucket="warm-up", Key="parts")["UploadId"]
        part = client.upload_part(Bucket="warm-up", Key="parts", UploadId=upload, PartNumber=1, Body=b"x")
        client.complete_multipart_upload(Bucket="warm-up", Key="parts", UploadId=upload,
                                         MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
        for key in ("object", "parts"):
            client.delete_object(Bucket="warm-up", Key=key)
        client.delete_bucket(Bucket="warm-up")

    def _fsid(self) -> str:
        return next(line.split("=", 1)[1].strip() for line in self.conf.read_text().splitlines()
                    if line.startswith("fsid"))

    def _certificate(self) -> None:
        """A throw-away CA (``self.certificate``, what clients trust) and the gateway's certificate signed by it (a
        self-signed CA used as the server's own certificate is refused by rustls, obstore's TLS)."""
        work = self.workdir
        (work / "rgw.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
        self._run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                  "/CN=migrator test CA", "-keyout", str(work / "ca.key"), "-out", str(self.certificate), ceph=False)
        self._run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
                  "-keyout", str(work / "rgw.key"), "-out", str(work / "rgw.csr"), ceph=False)
        self._run("openssl", "x509", "-req", "-in", str(work / "rgw.csr"), "-CA", str(self.certificate), "-CAkey",
                  str(work / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile", str(work / "rgw.ext"),
                  "-out", str(work / "rgw.crt"), ceph=False)

    def _run(self, *command: str, timeout: float = 60, ceph: bool = True) -> str:
        argv = [command[0], "-c", str(self.conf), *command[1:]] if ceph else list(command)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RadosGatewayUnavailable(f"{command[0]} did not finish within {timeout:.0f}s; "
                                          f"see {self.workdir / 'log'}") from None
        if done.returncode != 0:
            raise RadosGatewayUnavailable(f"{' '.join(command[:3])} failed ({done.returncode}): "
                                          f"{(done.stderr or done.stdout).strip()[-400:]}")
        return done.stdout

    def _daemon(self, *command: str) -> None:
        log = open(self.workdir / "log" / f"{command[0]}.out", "ab")
        self._daemons.append(subprocess.Popen([command[0], "-f", "-c", str(self.conf), *command[1:]],
                                              stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                              start_new_session=True))

    def _wait_gateway(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            for daemon in self._daemons:
                if daemon.poll() is not None:
                    program = str(daemon.args[0])  # type: ignore[index]  # started with a list of str
                    raise RadosGatewayUnavailable(f"{program} exited with {daemon.returncode}; "
                                                  f"see {self.workdir / 'log'}")
            try:
                with urllib.request.urlopen(self.endpoint, timeout=2):
                    return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.2)
        raise RadosGatewayUnavailable(f"radosgw did not answer at {self.endpoint}; see {self.workdir / 'log'}")

    def collect_garbage(self) -> None:
        """Free the data of deleted objects now. RGW deletes an object's head at once but hands its other RADOS
        objects (a large object's tail, a multipart upload's parts) to its garbage collector, which frees them on its
        next round (``rgw gc obj min wait`` is 2 h by default; 0 here, with a round every 30 s): until then memstore
        keeps them in RAM, so emptying a bucket between two benchmarked tools would free nothing."""
        self._run("radosgw-admin", "gc", "process", "--include-all", timeout=600)

    @property
    def pids(self) -> tuple:
        """The running daemons' process ids (monitor, OSD, gateway)."""
        return tuple(daemon.pid for daemon in self._daemons)

    def stop(self) -> None:
        for daemon in reversed(self._daemons):
            if daemon.poll() is None:
                os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
        self._daemons.clear()

    def client(self, https: bool = False, **config: Any) -> Any:
        """A boto3 client for this gateway (over https it trusts the throw-away CA)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.https_endpoint if https else self.endpoint,
                            region_name="us-east-1", aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key,
                            verify=str(self.certificate) if https else None,
                            config=Config(s3={"addressing_style": "path"}, **config))


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m migrator.testing.rgw", description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    args = parser.parse_args(argv)
    gateway = RadosGateway(args.workdir).start()
    print(f"http:  {gateway.endpoint}\nhttps: {gateway.https_endpoint} (CA bundle {gateway.certificate})\n"
          f"AWS_ACCESS_KEY_ID={gateway.access_key} AWS_SECRET_ACCESS_KEY={gateway.secret_key}\n"
          f"Ctrl-C stops it.", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        gateway.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
