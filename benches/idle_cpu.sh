#!/usr/bin/env bash
# CPU use of an untouched mriloop window: starts Xvfb, opens the window (the demo, or whatever
# arguments follow the binary), waits for it to settle, then reads utime + stime of the process
# from /proc/PID/stat over 10 s. Needs xvfb (apt) and a built binary.
#   benches/idle_cpu.sh [BINARY] [mriloop arguments…]
# e.g. benches/idle_cpu.sh target/release/mriloop open /usr/share/mricron/templates/ch2.nii.gz
set -euo pipefail
BIN=${1:-target/release/mriloop}
shift || true
SETTLE=${SETTLE:-30}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
export XDG_DATA_HOME=$(mktemp -d)   # the demo copy and working copies go to a throw-away folder
DISPLAY_NUM=:$((90 + RANDOM % 100))
Xvfb "$DISPLAY_NUM" -screen 0 1600x1000x24 >/dev/null 2>&1 &
XVFB=$!
trap 'kill $APP $XVFB 2>/dev/null || true' EXIT
sleep 2
DISPLAY=$DISPLAY_NUM "$BIN" "$@" >/dev/null 2>&1 &
APP=$!
sleep "$SETTLE"
ticks() { awk '{print $14 + $15}' "/proc/$APP/stat"; }
a=$(ticks); sleep 10; b=$(ticks)
hz=$(getconf CLK_TCK)
python3 -c "print(f'bench: idle_window_cpu_percent = {($b - $a) / $hz / 10 * 100:.2f} %')"
echo "reference: goal idle_window_cpu_percent < 1 % (untouched for 10 s after ${SETTLE} s to settle)"
