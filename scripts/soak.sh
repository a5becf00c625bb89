#!/usr/bin/env bash
# Transcript-integrity soak (issue 14): many calls through `callengine loadgen` against a real
# engine on PostgreSQL, with
#   - random termination paths (--chaos: normal stop, API hang-up, TCP drop, early close),
#   - Deepgram streams cut at random: the engine's real Deepgram client talks to the load
#     generator's built-in mock Deepgram (--mock-deepgram), which cuts SOAK_DROP_RATE of its
#     streams once at a random point, so the engine's STT actor reconnects and replays,
#   - a database cut in the middle of the run (the PostgreSQL cluster restarted, or stopped
#     for SOAK_CUT_SECS and started again).
# It passes when every turn the clients were told about (every `final` event) is in the
# database exactly once; the load generator checks that through the API after the run, prints
# the totals (calls, told turns, stored turns, missing, duplicated) and exits 1 otherwise.
#
# Usage (from anywhere in the repository):
#   scripts/soak.sh                                   # 10,000 calls, 200 at once (~10-15 min)
#   SOAK_CALLS=300 SOAK_CONCURRENCY=50 scripts/soak.sh   # a quick proof (~1 min)
#   SOAK_BIN=$CARGO_TARGET_DIR/debug/callengine SOAK_CALLS=300 scripts/soak.sh   # no release build
#
# Settings (environment, defaults in brackets):
#   SOAK_CALLS [10000]        calls in all          SOAK_CONCURRENCY [200]  calls at once
#   SOAK_CALL_SECS [3]        shortest call audio   SOAK_CALL_SECS_MAX [5]  longest
#   SOAK_DROP_RATE [0.2]      share of STT streams the mock cuts once
#   SOAK_SEED [random]        seed of every random choice (printed; repeat a run with it)
#   SOAK_PROTOCOL [voice]     voice (finals on the socket) or a carrier protocol (finals from
#                             the event feed; needs a tenant, see `callengine loadgen --help`)
#   SOAK_CUT [restart]        restart | stop (stop, wait SOAK_CUT_SECS [5], start)
#   SOAK_CUT_AFTER_SECS       when the database is cut [about half the run]
#   SOAK_PG_ADMIN_URL [postgres://postgres@127.0.0.1:5432/postgres]
#   SOAK_DB [callengine_soak] dropped and created for the run
#   SOAK_PORT [18080]         engine HTTP port     SOAK_MOCK_PORT [18765]  mock Deepgram port
#   SOAK_BIN                  the callengine binary [built with `cargo build --release`]
#   SOAK_OUT                  output directory [target/soak-YYYYmmdd-HHMMSS]
# Output in SOAK_OUT: report.json (the load generator's JSON report, `integrity` holds the
# totals), loadgen.log, engine.log, yes.wav.
#
# Needs: PostgreSQL managed by pg_ctlcluster on the SOAK_PG_ADMIN_URL server (the cut restarts
# the machine's cluster: anything else using it sees the cut too), psql, curl, and espeak-ng
# (or python3) for the speech file.
set -euo pipefail
cd "$(dirname "$0")/.."

calls=${SOAK_CALLS:-10000}
concurrency=${SOAK_CONCURRENCY:-200}
call_secs=${SOAK_CALL_SECS:-3}
call_secs_max=${SOAK_CALL_SECS_MAX:-5}
drop_rate=${SOAK_DROP_RATE:-0.2}
seed=${SOAK_SEED:-$(( (RANDOM << 30) | (RANDOM << 15) | RANDOM ))}
protocol=${SOAK_PROTOCOL:-voice}
cut=${SOAK_CUT:-restart}
cut_secs=${SOAK_CUT_SECS:-5}
# A call lasts about 5 s (4 s of audio on average, cut short on most paths, then silence and
# the last finals): the cut comes about half-way through the run.
cut_after=${SOAK_CUT_AFTER_SECS:-$(( calls * 5 / concurrency / 2 + 2 ))}
admin_url=${SOAK_PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db=${SOAK_DB:-callengine_soak}
port=${SOAK_PORT:-18080}
mock_port=${SOAK_MOCK_PORT:-18765}
out=${SOAK_OUT:-target/soak-$(date +%Y%m%d-%H%M%S)}
token="soak-admin-$RANDOM$RANDOM"
key="soak-deepgram-$RANDOM$RANDOM"

case "$cut" in restart | stop) ;; *) echo "soak: SOAK_CUT must be restart or stop" >&2; exit 2 ;; esac
for tool in psql curl pg_ctlcluster pg_isready; do
  command -v "$tool" >/dev/null || { echo "soak: $tool is required" >&2; exit 2; }
done
version=$(ls /etc/postgresql | head -n1)
[ -n "$version" ] || { echo "soak: no PostgreSQL cluster in /etc/postgresql" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd)

if [ -z "${SOAK_BIN:-}" ]; then
  echo "soak: building the release binary"
  cargo build --release --quiet
  SOAK_BIN="${CARGO_TARGET_DIR:-target}/release/callengine"
fi
[ -x "$SOAK_BIN" ] || { echo "soak: no binary at $SOAK_BIN" >&2; exit 2; }

# The speech every call loops: short answers with pauses (the mock hears each as "Yes.").
wav="$out/yes.wav"
if command -v espeak-ng >/dev/null; then
  espeak-ng -m -v en-us -s 170 -w "$wav" \
    '<speak>Yes. <break time="900ms"/> Yes, I do. <break time="900ms"/> Yes, that is right. <break time="900ms"/></speak>'
elif command -v python3 >/dev/null; then
  python3 - "$wav" <<'PY'
import math, struct, sys, wave
with wave.open(sys.argv[1], "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000)
    for ms in (500, 800, 1100):  # three "answers", each followed by 900 ms of silence
        tone = (int(6000 * math.sin(i * 0.2)) for i in range(ms * 16))
        w.writeframes(b"".join(struct.pack("<h", s) for s in tone) + bytes(900 * 32))
PY
else
  echo "soak: espeak-ng or python3 is needed to make the speech file" >&2
  exit 2
fi

# A database of the soak's own.
psql "$admin_url" -v ON_ERROR_STOP=1 -q \
  -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
db_url="${admin_url%/*}/$db"

engine_pid=""
cut_pid=""
cleanup() {
  [ -n "$cut_pid" ] && kill "$cut_pid" 2>/dev/null || true
  if [ -n "$engine_pid" ]; then
    kill -TERM "$engine_pid" 2>/dev/null || true
    wait "$engine_pid" 2>/dev/null || true
  fi
  # Never leave the cluster down.
  pg_isready -q -h 127.0.0.1 || pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
}
trap cleanup EXIT

echo "soak: engine on 127.0.0.1:$port, database $db, mock Deepgram on 127.0.0.1:$mock_port"
env -u DATABASE_URL \
  CALLENGINE_BIND="127.0.0.1:$port" \
  CALLENGINE_DATA_DIR="$out/data" \
  CALLENGINE_NODE_ID="soak" \
  CALLENGINE_DATABASE__URL="$db_url" \
  CALLENGINE_DATABASE__POOL_SIZE=32 \
  CALLENGINE_API__ADMIN_TOKEN="$token" \
  CALLENGINE_STT__PROVIDER=deepgram \
  CALLENGINE_STT__DEEPGRAM__BASE_URL="ws://127.0.0.1:$mock_port" \
  CALLENGINE_STT__DEEPGRAM__API_KEY="$key" \
  CALLENGINE_STT__RESTART_MAX=10 \
  CALLENGINE_POSTCALL__WORKERS=0 \
  CALLENGINE_POSTCALL__WEBHOOK_WORKERS=0 \
  RUST_LOG="${RUST_LOG:-warn}" \
  "$SOAK_BIN" serve >"$out/engine.log" 2>&1 &
engine_pid=$!
for _ in $(seq 1 60); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
  kill -0 "$engine_pid" 2>/dev/null || { echo "soak: the engine exited:" >&2; tail -20 "$out/engine.log" >&2; exit 1; }
  sleep 1
done
curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { echo "soak: engine not ready" >&2; exit 1; }

# The database cut, in the background.
rm -f "$out/cut.started" "$out/cut.done"
(
  sleep "$cut_after"
  touch "$out/cut.started"
  echo "soak: $(date +%T) cutting the database ($cut)" >&2
  if [ "$cut" = restart ]; then
    pg_ctlcluster --skip-systemctl-redirect "$version" main restart
  else
    pg_ctlcluster --skip-systemctl-redirect "$version" main stop
    sleep "$cut_secs"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
  fi
  echo "soak: $(date +%T) database back" >&2
  touch "$out/cut.done"
) &
cut_pid=$!

echo "soak: $calls calls, $concurrency at once, seed $seed, STT drop rate $drop_rate, database $cut after ${cut_after}s"
status=0
LOADGEN_MOCK_DEEPGRAM_KEY="$key" "$SOAK_BIN" loadgen \
  --url "ws://127.0.0.1:$port" --protocol "$protocol" --wav "$wav" \
  --calls "$concurrency" --soak-calls "$calls" --ramp-per-sec 50 --threads 2 \
  --call-secs "$call_secs" --call-secs-max "$call_secs_max" \
  --tail-silence-ms 1000 --quiet-ms 1500 --final-wait-secs 10 \
  --chaos --seed "$seed" \
  --mock-deepgram "127.0.0.1:$mock_port" --mock-drop-rate "$drop_rate" \
  --api-token "$token" --pid "$engine_pid" \
  --report "$out/report.json" 2>"$out/loadgen.log" || status=$?
if [ -e "$out/cut.started" ]; then
  wait "$cut_pid" 2>/dev/null || true
else
  kill "$cut_pid" 2>/dev/null || true
fi
cut_pid=""
if [ ! -e "$out/cut.done" ]; then
  echo "soak: the run ended before the database cut (SOAK_CUT_AFTER_SECS=$cut_after): not a valid soak" >&2
  [ "$status" -ne 0 ] || status=3
fi
echo "soak: report in $out/report.json, logs in $out; exit status $status"
exit "$status"
