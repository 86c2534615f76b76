#!/usr/bin/env bash
# Installs the servers the destination tests run against, once:
#   - clickhouse-server (Debian package) for the clickhouse destination;
#   - s3s-fs (crates.io, an S3-compatible server over a local directory)
#     for the object_store destination, built into the tools cache.
# Idempotent and quick when everything is already there; says what it did.
set -euo pipefail

TOOLS="${SLUICE_TOOLS_DIR:-$HOME/.cache/sluice/tools}"
S3S_FS_VERSION="${S3S_FS_VERSION:-0.14.1}"
mkdir -p "$TOOLS/bin"

if command -v clickhouse-server >/dev/null 2>&1 || [ -x /usr/sbin/clickhouse-server ]; then
  echo "install-test-deps: clickhouse-server present ($(readlink -f "$(command -v clickhouse-server || echo /usr/sbin/clickhouse-server)"))"
else
  echo "install-test-deps: installing clickhouse-server (apt-get)"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends clickhouse-server >/dev/null
  echo "install-test-deps: clickhouse-server installed"
fi

if [ -x "$TOOLS/bin/s3s-fs" ]; then
  echo "install-test-deps: s3s-fs present ($TOOLS/bin/s3s-fs)"
else
  echo "install-test-deps: building s3s-fs $S3S_FS_VERSION from crates.io into $TOOLS"
  CARGO_TARGET_DIR="$TOOLS/build-s3s-fs" cargo install --locked --quiet \
    --root "$TOOLS" --version "$S3S_FS_VERSION" s3s-fs --features binary
  rm -rf "$TOOLS/build-s3s-fs"
  echo "install-test-deps: s3s-fs installed"
fi
