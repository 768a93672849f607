#!/usr/bin/env bash
# The full HTTP merchant import against the release binary: 100,000 rows per
# request, durable before the answer.
#
#   benches/merchant_import_http.sh [rounds]
#
# Each round imports a fresh 100,000-row file (new IDs), then sends the same
# file again (a retry: all unchanged) and as a dry run. Prints curl's
# wall-clock time per request and rows/s, the daemon's CPU time for the
# request (user + system, all threads; a fair figure on a loaded machine) and
# rows per CPU-second, then the snapshot capture times the daemon logged.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
ROWS=100000
PUBLIC_ADDR=127.0.0.1:18180
ADMIN_ADDR=127.0.0.1:18181
WORK=target/bench-merchants
TOKEN=bench-admin-token-0123456789abcdef

cargo build --release --quiet --bin voucherd
rm -rf "$WORK"; mkdir -p "$WORK"
GEOJSON=$(realpath ../shared/data/yichang-420500.geojson)
{
  cat <<TOML
[server]
public_listen = "$PUBLIC_ADDR"
admin_listen = "$ADMIN_ADDR"
[admin]
token_env = "VOUCHERD_BENCH_TOKEN"
[storage]
data_dir = "data"
checkpoint_every_records = 0   # only the final one at SIGTERM, so none runs during a request
[regions]
source = "geojson"
geojson_path = "$GEOJSON"
TOML
  for c in 420502 420503 420504 420505 420506 420525 420526 420527 420528 420529 420581 420582 420583; do
    printf '[[counties]]\nadcode = %s\nname = "c%s"\n' "$c" "$c"
  done
} > "$WORK/voucherd.toml"

pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; }
trap cleanup EXIT
VOUCHERD_BENCH_TOKEN=$TOKEN RUST_LOG=info target/release/voucherd serve --config "$WORK/voucherd.toml" \
  >"$WORK/stdout" 2>"$WORK/stderr" & pid=$!
for _ in $(seq 1 200); do curl -sf "http://$PUBLIC_ADDR/readyz" >/dev/null && break; sleep 0.05; done

# A file of typical merchants (about 75 bytes a line), IDs prefixed per round.
make_csv() {
  awk -v prefix="$1" -v rows="$ROWS" 'BEGIN {
    split("420502 420503 420504 420505 420506 420525 420526 420527 420528 420529 420581 420582 420583", county, " ");
    split("餐饮 零售 商超 家电 汽车 文旅 其他", industry, " ");
    split("alipay wechat unionpay meituan", platform, " ");
    print "merchant_id,name,county,industry,platform";
    for (i = 0; i < rows; i++)
      printf "%s-%07d,宜昌市第%d号商户（%s）,%s,%s,%s\n", prefix, i, i, industry[i % 7 + 1],
        county[i % 13 + 1], industry[i % 7 + 1], platform[i % 4 + 1];
  }'
}

post() { # post FILE QUERY -> "seconds http_code body"
  curl -s -o "$WORK/answer" -w '%{time_total} %{http_code}' -X POST \
    "http://$ADMIN_ADDR/admin/v1/merchants:import$2" -H "authorization: Bearer $TOKEN" \
    -H 'content-type: text/csv' --data-binary "@$1"
  echo " $(cat "$WORK/answer")"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
TICKS=$(getconf CLK_TCK)

printf '%-6s %-8s %8s %9s %8s %12s  %s\n' round request seconds rows/s cpu_s rows/cpu_s answer
for round in $(seq 1 "$ROUNDS"); do
  file="$WORK/round-$round.csv"
  make_csv "r$round" > "$file"
  for kind in import retry dry_run; do
    query=""; [ "$kind" = dry_run ] && query="?dry_run=true"
    before=$(cpu_ticks)
    read -r seconds code body < <(post "$file" "$query")
    cpu=$(echo "($(cpu_ticks) - $before) / $TICKS" | bc -l)
    [ "$code" = 200 ] || { echo "HTTP $code: $body" >&2; exit 1; }
    printf '%-6s %-8s %8.3f %9.0f %8.2f %12.0f  %s\n' "$round" "$kind" "$seconds" \
      "$(echo "$ROWS / $seconds" | bc -l)" "$cpu" "$(echo "$ROWS / ($cpu + 0.001)" | bc -l)" "$body"
  done
done
echo "file size: $(stat -c %s "$WORK/round-1.csv") bytes"
kill -TERM "$pid"; wait "$pid" || true; pid=""
echo "final snapshot (capture_us: taking the locks and sharing the merchant chunks):"
grep 'snapshot written' "$WORK/stderr" | sed -E 's/.*(covered_seq=[0-9]+).*(merchants=[0-9]+).*(capture_us=[0-9]+).*(elapsed_ms=[0-9]+).*/  \1 \2 \3 \4/'
