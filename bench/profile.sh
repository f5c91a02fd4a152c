#!/usr/bin/env bash
# Shows where the two nbdtunnel relays spend their CPU during a W1 mirror: starts the macro
# bench's W1 (blockdev-mirror of a random image between two qemu-storage-daemons through
# nbdtunnel dest + source), waits until the copy is under way, samples both relay processes
# with `perf record -g` for a few seconds, and counts their syscalls and context switches with
# `perf stat` for as long again, while /proc/PID/task/*/schedstat tells how each relay thread
# spent that time: on a CPU, runnable but waiting for one (the CPU is taken, by QEMU or the other
# relay), or asleep (waiting for its peers). Writes bench/results/PROFILE-<date>-<mode>.txt.
# --transport naive-relay profiles the calibration relay (bench/tools/naive_relay) the same way
# instead, for comparison (PROFILE-<date>-naive-relay.txt).
#
#   bench/profile.sh [--mode splice|copy] [--transport nbdtunnel|naive-relay] [--seconds N]
#                    [--size 4G] [--nbdtunnel-args "..."]
#
# Needs root (or perf_event_paranoid <= 1) and the linux-perf package (scripts/setup.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD="$ROOT/build-release"
mode=splice
transport=nbdtunnel
seconds=3
size=4G
extra=""
while (($#)); do
  case "$1" in
    --mode) mode=$2; shift ;;
    --transport) transport=$2; shift ;;
    --seconds) seconds=$2; shift ;;
    --size) size=$2; shift ;;
    --nbdtunnel-args) extra=$2; shift ;;
    -h|--help) sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "profile.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$transport" in
  nbdtunnel) procname=nbdtunnel; label=$mode ;;
  naive-relay) procname=naive_relay; label=naive-relay ;;
  *) echo "profile.sh: --transport is nbdtunnel or naive-relay" >&2; exit 2 ;;
esac

"$ROOT/scripts/setup.sh"
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DNBDTUNNEL_TESTS=OFF -DNBDTUNNEL_BENCH=ON -DNBDTUNNEL_WERROR=OFF >/dev/null
cmake --build "$BUILD" --target nbdtunnel nbd_latency naive_relay -j2

# Every process of that name is sampled: one left from another run would be sampled too (or, on
# its way out, make perf fail with EINVAL).
if pgrep -x "$procname" >/dev/null; then
  echo "profile.sh: $procname is already running (pids $(pgrep -d, -x "$procname")); stop it first" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 "$ROOT/bench/macro/run_bench.py" --nbdtunnel "$BUILD/engine/nbdtunnel" \
  --latency-tool "$BUILD/bench/tools/nbd_latency" --workloads W1 --transports "$transport" \
  --modes "$mode" --runs 1 --warmup 0 --size "$size" --nbdtunnel-args "$extra" \
  --results-dir "$work" >"$work/bench.log" 2>&1 &
bench=$!

# The copy is under way once a relay has used 0.2 s of CPU.
pids=""
for _ in $(seq 1 1200); do
  if ! kill -0 "$bench" 2>/dev/null; then break; fi
  mapfile -t relays < <(pgrep -x "$procname" || true)
  if ((${#relays[@]} >= 2)); then
    ticks=$(awk '{print $14 + $15}' "/proc/${relays[0]}/stat" 2>/dev/null || echo 0)
    if ((ticks > 20)); then
      pids=$(IFS=,; echo "${relays[*]}")
      break
    fi
  fi
  sleep 0.1
done
commands=""
for p in ${pids//,/ }; do
  commands+="$p: $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-100)"$'\n'
done
if [[ -z $pids ]]; then
  echo "profile.sh: the relays never got busy; bench log:" >&2
  cat "$work/bench.log" >&2
  exit 1
fi

# Per thread: comm, ns on a CPU, ns runnable and waiting for one (schedstat's first two fields).
schedstats() {
  local p t
  for p in ${pids//,/ }; do
    for t in /proc/"$p"/task/*; do
      printf '%s %s %s %s\n' "$p" "${t##*/}" "$(cat "$t/comm" 2>/dev/null)" \
        "$(cut -d' ' -f1,2 "$t/schedstat" 2>/dev/null)"
    done
  done
}
perf record -q -g -o "$work/perf.data" -p "$pids" -- sleep "$seconds" 2>/dev/null
schedstats >"$work/sched0"
t0=$(date +%s%N)
perf stat -x, -e context-switches,raw_syscalls:sys_enter -p "$pids" -- sleep "$seconds" \
  2>"$work/stat.csv"
t1=$(date +%s%N)
schedstats >"$work/sched1"
wait "$bench" || true

# The report pipes end in head, which closes them early: that is not a failure here.
set +o pipefail
stamp=$(date +%Y-%m-%dT%H%M)
out="$ROOT/bench/results/PROFILE-$stamp-$label.txt"
{
  echo "$transport relay profile, $stamp, W1 mirror of $size, $label, ${seconds}s samples"
  echo "kernel $(uname -r), $(nproc) CPUs; extra args: ${extra:-none}"
  echo
  echo "== bench result (the run the samples come from)"
  grep -E '^\| W1' "$work/bench.log" || tail -5 "$work/bench.log"
  echo
  echo "== relay processes"
  printf '%s' "$commands"
  echo
  echo "== syscalls and context switches over ${seconds}s (both relays; perf stat)"
  cat "$work/stat.csv"
  echo
  echo "== on-CPU and off-CPU time over the ${seconds}s of perf stat, per relay thread (schedstat)"
  python3 - "$work/sched0" "$work/sched1" "$((t1 - t0))" <<'PY'
import sys
def load(path):
    rows = {}
    for line in open(path):
        f = line.split()
        if len(f) == 5:
            rows[(f[0], f[1])] = (f[2], int(f[3]), int(f[4]))
    return rows
a, b, wall = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3])
if not b:
    print("(the relays had exited before the window ended: the copy was too short; use a larger --size)")
print(f"{'pid':>7} {'tid':>7} {'thread':16} {'on CPU':>7} {'runnable':>9} {'asleep':>7}")
for key in sorted(b):
    if key not in a:
        continue
    comm, run1, wait1 = b[key]
    _, run0, wait0 = a[key]
    run, wait = run1 - run0, wait1 - wait0
    if run + wait < wall // 1000:  # idle helper threads
        continue
    asleep = max(0, wall - run - wait)
    print(f"{key[0]:>7} {key[1]:>7} {comm:16} {100 * run / wall:6.1f}% {100 * wait / wall:8.1f}% "
          f"{100 * asleep / wall:6.1f}%")
PY
  echo
  echo "== CPU by thread (the event loop threads of the processes above)"
  perf report -i "$work/perf.data" --no-children --sort pid -g none --stdio 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -5
  echo
  echo "== top symbols (self time, both relays)"
  perf report -i "$work/perf.data" --no-children --sort pid,sym -g none --stdio 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -40
  echo
  echo "== time under each system call and in softirq (inclusive, share of all relay samples)"
  perf report -i "$work/perf.data" --children --sort sym -g none --stdio 2>/dev/null |
    grep -v '^#' | grep -E '\[k\] (__x64_sys_[a-z_0-9]+|__do_sys_io_uring_enter|handle_softirqs|net_rx_action|__schedule)\s*$' |
    head -20
} >"$out"
cat "$out"
echo
echo "written: $out"
