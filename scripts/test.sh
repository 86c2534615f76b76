#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test against SQLite
# and the local PostgreSQL (a fresh database per test).
set -euo pipefail
cd "$(dirname "$0")/.."

export SLUICE_TEST_DATABASE_URL="${SLUICE_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# PostgreSQL must answer: the suite fails (never skips) without it.
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null; then
    echo "PostgreSQL is not answering; starting the local cluster" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    sleep 2
  fi
fi

# Servers the destination tests run against (clickhouse-server, s3s-fs):
# installed once, quick when cached.
./scripts/install-test-deps.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked

# The OpenAPI document must be valid OpenAPI 3.1 (checked with the
# reference validator, installed into a cached virtualenv).
VENV="${SLUICE_TOOLS_DIR:-$HOME/.cache/sluice/tools}/venv"
if [ ! -x "$VENV/bin/openapi-spec-validator" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "openapi-spec-validator==0.7.*"
fi
DOC="$(mktemp --suffix=.json)"
cargo run -q --locked -p sluice-cli -- openapi > "$DOC"
"$VENV/bin/openapi-spec-validator" "$DOC"
rm -f "$DOC"
