#!/usr/bin/env bash
# Durable HTTP claims/s against the HTTP ceiling, measured in one run.
#
#   benches/http_compare.sh [rounds] [seconds] [connections]
#
# Alternates, round by round, between
#   - hello_server (examples/hello_server.rs, a COMPARISON PEER: hyper answering
#     the same POSTs with a fixed body), and
#   - voucherd with its durable WAL (every 201 waits for msync),
# both driven by wrk with benches/wrk/claim.lua (a unique identity and request
# ID per request; the quota is large enough never to sell out). Prints each
# round and the medians and ratio. Needs wrk (apt-get install -y wrk).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
SECONDS_PER_RUN=${2:-10}
CONNECTIONS=${3:-128}
WRK_THREADS=${WRK_THREADS:-1}
HELLO_ADDR=127.0.0.1:18090
PUBLIC_ADDR=127.0.0.1:18080
ADMIN_ADDR=127.0.0.1:18081
WORK=target/bench-http
TOKEN=bench-admin-token-0123456789abcdef

command -v wrk >/dev/null || { echo "wrk is required: apt-get install -y wrk" >&2; exit 1; }
cargo build --release --quiet --bin voucherd --example hello_server

rm -rf "$WORK"; mkdir -p "$WORK"
GEOJSON=$(realpath ../shared/data/yichang-420500.geojson)
cat > "$WORK/voucherd.toml" <<TOML
[server]
public_listen = "$PUBLIC_ADDR"
admin_listen = "$ADMIN_ADDR"
[admin]
token_env = "VOUCHERD_BENCH_TOKEN"
[storage]
data_dir = "data"
[regions]
source = "geojson"
geojson_path = "$GEOJSON"
[[counties]]
adcode = 420502
name = "西陵区"
[[campaigns]]
id = "bench"
name = "bench"
budget_fen = 1000000000000
TOML

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_port() { for _ in $(seq 1 200); do curl -s -o /dev/null "http://$1/" && return 0; sleep 0.05; done; echo "no server on $1" >&2; exit 1; }

target/release/examples/hello_server "$HELLO_ADDR" >/dev/null & pids+=($!)
VOUCHERD_BENCH_TOKEN=$TOKEN RUST_LOG=warn target/release/voucherd serve --config "$WORK/voucherd.toml" >"$WORK/stdout" 2>"$WORK/stderr" & pids+=($!)
wait_port "$HELLO_ADDR"; wait_port "$PUBLIC_ADDR"
for _ in $(seq 1 200); do curl -sf "http://$PUBLIC_ADDR/readyz" >/dev/null && break; sleep 0.05; done

NOW=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LATER=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
curl -sf -X PUT "http://$ADMIN_ADDR/admin/v1/tranches/bench" -H "authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' \
  -d "{\"campaign_id\":\"bench\",\"opens_at\":\"$NOW\",\"closes_at\":\"$LATER\",\"expires_at\":\"$LATER\",\"face_value_fen\":2000,\"threshold_fen\":10000,\"quotas\":{\"420502\":10000000}}" >/dev/null

run() { # name addr -> prints requests/s
  local out
  out=$(TRANCHE=bench LNG=111.295 LAT=30.702 wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency -s benches/wrk/claim.lua "http://$2" 2>&1)
  if echo "$out" | grep -q "Non-2xx"; then echo "$1: non-2xx answers:" >&2; echo "$out" >&2; exit 1; fi
  echo "$out" | awk '/^requests\/s/ {print $2, $4, $6}'
}

hello=(); durable=()
echo "round hello_rps hello_p50 hello_p99 | voucherd_rps voucherd_p50 voucherd_p99   (${CONNECTIONS} connections, ${SECONDS_PER_RUN}s each)"
for r in $(seq 1 "$ROUNDS"); do
  read -r h hp50 hp99 < <(run hello "$HELLO_ADDR")
  read -r d dp50 dp99 < <(run voucherd "$PUBLIC_ADDR")
  hello+=("$h"); durable+=("$d")
  echo "$r $h $hp50 $hp99 | $d $dp50 $dp99"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
mh=$(median "${hello[@]}"); md=$(median "${durable[@]}")
echo "median hello ${mh} req/s, voucherd durable ${md} claims/s, ratio $(awk -v a="$md" -v b="$mh" 'BEGIN {printf "%.2f", a/b}')"
curl -s "http://$PUBLIC_ADDR/metrics" | grep -E '^voucherd_claims_total\{outcome="claimed"\}|^voucherd_wal_batch_records_(sum|count)'
