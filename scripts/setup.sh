#!/usr/bin/env bash
# Installs what the demo, the tests and the benchmarks need: Debian's docker-registry, skopeo (a real registry
# client for the tests), chromium (renders report.html in a test), Ceph RGW (a real S3 for the tests and the
# bench) and the package with its test extras.
# Safe to re-run; apt is only touched when one is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ! -x /usr/bin/docker-registry ] || [ ! -x /usr/bin/skopeo ] || [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/radosgw ] \
   || [ ! -x /usr/sbin/nginx ]; then
  $SUDO apt-get update -qq
  # nginx: the reverse proxy in front of the registry (registry.front), run by the tests from configs of their own
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker-registry skopeo nginx >/dev/null
  # headless Chromium renders report.html in the tests; they skip, saying why, if it cannot be installed
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null \
    || echo "setup: chromium could not be installed; the report.html rendering test will skip"
  # Ceph RGW, a real S3 implementation (migrator/testing/rgw.py runs a throw-away one); its tests skip, saying why, without it
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends ceph-mon ceph-osd radosgw \
    ceph-common >/dev/null || echo "setup: Ceph RGW could not be installed; the tests against it will skip"
fi
# the Debian package starts a registry on :5000 where an init system runs; the demo and tests start their own
python3 -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v -E "^WARNING: (Running pip as|Location)" || true
python3 -c "import migrator, moto, boto3, click, tqdm, ruamel.yaml, concurrent_log_handler" 
command -v moto_server >/dev/null || python3 -c "import moto.server"
echo "setup done: docker-registry $(/usr/bin/docker-registry --version 2>/dev/null | awk '{print $3}'), $(python3 -m migrator --version)"
