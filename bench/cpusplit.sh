#!/usr/bin/env bash
# A server's user and system CPU per request under one load, from /proc: where bench/run.py's CPU per request
# (user + system together) cannot tell a few hundred nanoseconds of Python from the kernel's share.
#
#   bench/cpusplit.sh NAME [ack|echo] COMMAND...     COMMAND must listen where ADDR (or SOCK) says
#   e.g. SOCK=/tmp/cpusplit/a.sock bench/cpusplit.sh logged ack .venv/bin/twistd -n --pidfile= sockd --ack unix:/tmp/cpusplit/a.sock
#        ADDR=127.0.0.1:7321 NEWCONN=1 bench/cpusplit.sh logged ack .venv/bin/twistd -n --pidfile= sockd --ack tcp:7321:interface=127.0.0.1
#
# Without ADDR: a Unix socket at $SOCK (default /tmp/cpusplit/a.sock). With ADDR=HOST:PORT: TCP; NEWCONN=1 opens
# a new connection per request. Builds nothing: run bench/run.py once first (it compiles bench/build/loadgen).
# 32 connections, 0.5 s warm-up, then 3 s measured.
set -euo pipefail
name=$1 pattern=$2; shift 2
here=$(cd "$(dirname "$0")" && pwd)
sock=${SOCK:-/tmp/cpusplit/a.sock}
addr=${ADDR:-}
logdir=$(dirname "$sock")
mkdir -p "$logdir"
if [ -z "$addr" ]; then rm -f "$sock"; fi
"$@" > "$logdir/$name.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
ready() {
  if [ -n "$addr" ]; then (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; else [ -S "$sock" ]; fi
}
for _ in $(seq 100); do ready && break; sleep 0.1; done
if [ -n "$addr" ]; then target=(--transport tcp --addr "$addr"); else target=(--transport unix --addr "$sock"); fi
extra=()
if [ "${NEWCONN:-0}" = 1 ]; then extra=(--new-conn); fi
load() { "$here/build/loadgen" "${target[@]}" "${extra[@]}" --pattern "$pattern" --size 64 --conns 32 --warmup 0 --duration "$1"; }
load 0.5 > /dev/null
read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
out=$(load 3)
read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
python3 - "$name" "$out" "$u0" "$s0" "$u1" "$s1" "$(getconf CLK_TCK)" <<'PY'
import json, sys
name, out, u0, s0, u1, s1, hz = sys.argv[1], json.loads(sys.argv[2]), *map(int, sys.argv[3:])
n = out["requests"]
user, system = (u1 - u0) / hz / n * 1e6, (s1 - s0) / hz / n * 1e6
print(f"{name}: {n / 3:,.0f}/s, user {user:.2f} µs, system {system:.2f} µs, total {user + system:.2f} µs per request")
PY
