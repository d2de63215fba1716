#!/usr/bin/env bash
# Docker 엔진(dockerd)을 백그라운드로 시작하고, `docker info` 가 답할 때까지 기다립니다(마감 시간 있음).
# 이미 엔진이 답하면 아무것도 하지 않습니다. 그다음 단계 01 의 베이스 이미지(python:3.11-slim)를
# 준비합니다: 레지스트리에서 받을 수 없으면 debootstrap 으로 로컬에서 만듭니다(있으면 건너뜀).
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=${COURSE_CI_STATE:-/tmp/coursekit-ci}
mkdir -p "$STATE"
DOCKER=${COURSE_DOCKER:-/usr/bin/docker}
[ -x "$DOCKER" ] || DOCKER=$(command -v docker)

if "$DOCKER" info >/dev/null 2>&1; then
  echo "Docker 엔진이 이미 응답합니다: 시작하지 않습니다."
else
  nohup /usr/sbin/dockerd >"$STATE/dockerd.log" 2>&1 &
  echo $! >"$STATE/dockerd.pid"
  deadline=$((SECONDS + 60))
  until "$DOCKER" info >/dev/null 2>&1; do
    if ! kill -0 "$(cat "$STATE/dockerd.pid")" 2>/dev/null; then
      echo "dockerd 가 종료되었습니다:" >&2; tail -20 "$STATE/dockerd.log" >&2; exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "dockerd 가 60초 안에 응답하지 않았습니다:" >&2; tail -20 "$STATE/dockerd.log" >&2; exit 1
    fi
    sleep 0.2
  done
  echo "dockerd 시작 (PID $(cat "$STATE/dockerd.pid"), $("$DOCKER" info --format '{{.ServerVersion}} {{.Driver}}'))"
fi

PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
COURSE_DOCKER="$DOCKER" "$PY" -m coursekit.dockerbase --dockerfile solutions/01-docker/Dockerfile
