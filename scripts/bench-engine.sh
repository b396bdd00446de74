#!/usr/bin/env bash
# The engine benchmark end to end (issue 4): `plexus send` -> `plexus serve`
# (SQLite, synchronous = full, a file destination) side by side in the same
# run with the MLLP peer (`mllp-peer-server.js`, which stores nothing).
#
#   scripts/bench-engine.sh [ROUNDS] [COUNT_1CONN] [COUNT_32CONN]
#
# Builds the release binary, then per round starts a fresh `serve` and the
# peer on free ports and runs `plexus send` with 1 connection (window 1) and
# 32 connections (window 1, then window 16) against each. Prints per run:
# msgs/s, ACK latency, every ACK code, CPU time per message of the receiver
# and the sender (user + system, from /proc: steadier than wall time on a
# shared machine), how many times per message the receiver's threads were
# scheduled in (wake-ups), serve's peak resident memory under load, the time from
# start to accepting MLLP, the disk's fsync latency and the load average.
#
# Environment: PLEXUS_SHARED (default ../shared beside the repository),
# PLEXUS_PEERS (default /root/.cache/plexus-peers), DEST=none to run without
# a destination (ingest only), BUILD=0 to skip the build, BIN=path to run
# another binary.
# Needs: cargo, python3, node. Only loopback addresses are used; every
# process started here is stopped at the end.
set -euo pipefail

ROUNDS=${1:-3}
N1=${2:-5000}
N32=${3:-60000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${PLEXUS_SHARED:-$ROOT/../shared}
export PLEXUS_PEERS=${PLEXUS_PEERS:-/root/.cache/plexus-peers}
PEER=$SHARED/peers/mllp-peer-server.js
BIN=${BIN:-$ROOT/target/release/plexus}
DEST=${DEST:-file}

[ -f "$PEER" ] || { echo "no MLLP peer at $PEER (set PLEXUS_SHARED)" >&2; exit 2; }
if [ "${BUILD:-1}" != 0 ]; then
    (cd "$ROOT" && cargo build --release -p plexus --quiet)
fi

WORK=$(mktemp -d /tmp/plexus-bench-engine.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }  # user + system, 1/100 s
# Times any thread of the process was scheduled in, summed over its live
# threads (schedstat's third field): a window-1 message's wake-ups, which
# on a VM cost more than its CPU (docs/benchmarks.md, B session 7).
sched_slices() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{n += $3} END {print n + 0}'; }

echo "# plexus engine benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores"
echo "# $(uptime)"
echo "# binary: $BIN ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "# destination: $DEST; messages: generated ORU^R01 (--generate oru), 1000 patients"

python3 - "$WORK" <<'PY'
import os, sys, time
fd = os.open(os.path.join(sys.argv[1], "fsync.probe"), os.O_WRONLY | os.O_CREAT)
ts = []
for _ in range(200):
    os.write(fd, b"x" * 100); t = time.perf_counter(); os.fsync(fd); ts.append(time.perf_counter() - t)
ts.sort(); print(f"# fsync of this disk: p50 {ts[100]*1000:.3f} ms, p90 {ts[180]*1000:.3f} ms")
PY

# One `plexus send` run: label, port, count, connections, window, receiver pid.
run() {
    local label=$1 port=$2 count=$3 conns=$4 window=$5 receiver=$6 before after json sendcpu slices0 slices1
    before=$(cpu_ticks "$receiver")
    slices0=$(sched_slices "$receiver")
    json=$(python3 - "$BIN" "$port" "$count" "$conns" "$window" <<'PY'
import json, resource, subprocess, sys
bin_, port, count, conns, window = sys.argv[1:]
out = subprocess.run([bin_, "send", "--to", f"127.0.0.1:{port}", "--generate", "oru", "--count", count,
                      "--connections", conns, "--window", window, "--patients", "1000", "--json"],
                     capture_output=True, text=True)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "{}"
s = json.loads(last)
s["sender_cpu_s"] = ru.ru_utime + ru.ru_stime
s["exit"] = out.returncode
print(json.dumps(s))
PY
)
    after=$(cpu_ticks "$receiver")
    slices1=$(sched_slices "$receiver")
    python3 - "$label" "$json" "$before" "$after" "$slices0" "$slices1" <<'PY'
import json, sys
label, s, before, after = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
# Threads that ended during the run take their count with them: a lower bound.
slices = max(int(sys.argv[6]) - int(sys.argv[5]), 0)
n = s.get("messages", 0) or 1
l = s.get("latency_ms", {})
codes = " ".join(f"{k} {v}" for k, v in sorted(s.get("codes", {}).items()))
print(f"{label:<36} {s.get('msgs_per_s', 0):>8.0f} msgs/s  p50 {l.get('p50', 0):.3f} p95 {l.get('p95', 0):.3f} "
      f"p99 {l.get('p99', 0):.3f} ms  [{codes}; unacked {s.get('unacked', '?')}]  "
      f"CPU/msg receiver {(after - before) * 10000 / n:.0f} us, sender {s['sender_cpu_s'] * 1e6 / n:.0f} us  "
      f"receiver scheduled {slices / n:.2f}/msg")
PY
}

for round in $(seq 1 "$ROUNDS"); do
    DIR=$WORK/round$round
    mkdir -p "$DIR"
    MLLP=$(port); API=$(port); PEERPORT=$(port)
    cat > "$DIR/bench.toml" <<TOML
version = 1
[store]
url = "sqlite://data/plexus.db"
synchronous = "full"
[api]
listen = "127.0.0.1:$API"
[channels.bench]
order_key = "PID-3-1"
[channels.bench.source]
type = "mllp"
listen = "127.0.0.1:$MLLP"
max_connections = 64
TOML
    if [ "$DEST" = file ]; then
        cat >> "$DIR/bench.toml" <<'TOML'
[[channels.bench.destinations]]
name = "archive"
type = "file"
directory = "out"
file_name = "${control_id}.hl7"
TOML
    fi
    # Start-up: spawn serve, then try to connect every half millisecond.
    read -r START SERVE < <(python3 - "$BIN" "$DIR/bench.toml" "$MLLP" "$DIR/serve.log" <<'PY'
import socket, subprocess, sys, time
bin_, cfg, port, log = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
t0 = time.monotonic()
p = subprocess.Popen([bin_, "serve", "--config", cfg], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                     start_new_session=True)
while True:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        break
    except OSError:
        if p.poll() is not None:
            sys.exit("serve exited: see " + log)
        time.sleep(0.0005)
print(f"{(time.monotonic() - t0) * 1000:.1f} {p.pid}")
PY
)
    PIDS+=("$SERVE")
    node "$PEER" "$PEERPORT" > "$DIR/peer.log" 2>&1 &
    NODE=$!
    PIDS+=("$NODE")
    until python3 -c "import socket; socket.create_connection(('127.0.0.1',$PEERPORT),1)" 2>/dev/null; do sleep 0.05; done
    ( max=0; while kill -0 "$SERVE" 2>/dev/null; do
        r=$(awk '/VmRSS/{print $2}' "/proc/$SERVE/status" 2>/dev/null || true)
        if [ -n "$r" ] && [ "$r" -gt "$max" ]; then max=$r; echo "$max" > "$DIR/rss.max"; fi
        sleep 0.05; done ) &
    SAMPLER=$!
    PIDS+=("$SAMPLER")

    echo "## round $round: serve accepting MLLP after $START ms (new database); $(uptime | sed 's/.*load/load/')"
    run "peer    1 connection   window 1" "$PEERPORT" "$N1" 1 1 "$NODE"
    run "plexus  1 connection   window 1" "$MLLP" "$N1" 1 1 "$SERVE"
    run "peer    32 connections window 1" "$PEERPORT" "$N32" 32 1 "$NODE"
    run "plexus  32 connections window 1" "$MLLP" "$N32" 32 1 "$SERVE"
    run "plexus  32 connections window 16" "$MLLP" "$N32" 32 16 "$SERVE"
    echo "serve peak RSS under load: $(( $(cat "$DIR/rss.max") / 1024 )) MiB (VmHWM $(awk '/VmHWM/{print $2}' "/proc/$SERVE/status") kB)"
    if [ "$DEST" = file ]; then
        # Let the workers drain, then count what the destination wrote.
        sleep 2
        echo "file destination wrote $(find "$DIR/out" -type f -name '*.hl7' 2>/dev/null | wc -l) files so far"
    fi
    kill -TERM "$NODE" "$SERVE" 2>/dev/null || true
    wait "$NODE" 2>/dev/null || true
    while kill -0 "$SERVE" 2>/dev/null; do sleep 0.1; done
    kill "$SAMPLER" 2>/dev/null || true
done
