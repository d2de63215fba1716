#!/usr/bin/env bash
# start-docker.sh 가 시작한 dockerd 만 그 PID 로 멈춥니다 (이미 돌던 엔진은 건드리지 않습니다).
set -uo pipefail
STATE=${COURSE_CI_STATE:-/tmp/coursekit-ci}
PIDFILE="$STATE/dockerd.pid"
[ -f "$PIDFILE" ] || exit 0
pid=$(cat "$PIDFILE")
if kill -0 "$pid" 2>/dev/null; then
  kill -TERM "$pid"
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  echo "dockerd (PID $pid) 를 멈췄습니다."
fi
rm -f "$PIDFILE"
