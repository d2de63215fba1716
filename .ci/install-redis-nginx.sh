#!/usr/bin/env bash
# 단계 06 채점과 수업에 필요한 Redis(Debian redis-server)와 로드 밸런서 nginx(Debian nginx)를 설치합니다.
# 이미 있으면 아무것도 하지 않습니다 (멱등). 테스트와 수업은 이 바이너리를 루프백의 빈 포트로 직접 띄우고
# PID 로 멈춥니다 (coursekit/redis_server.py, coursekit/balancer.py). 그래서 패키지의 서비스(데몬)는
# 켜 두지 않습니다: 설치 중에는 policy-rc.d 로 서비스 시작을 막고, 설치 뒤에 systemd 유닛을 끕니다.
set -euo pipefail

need=()
{ command -v redis-server && command -v redis-cli; } >/dev/null 2>&1 || need+=(redis-server)
{ command -v nginx || [ -x /usr/sbin/nginx ]; } >/dev/null 2>&1 || need+=(nginx)
if [ ${#need[@]} -eq 0 ]; then
  echo "redis-server, nginx: 이미 설치됨"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

made_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod 755 /usr/sbin/policy-rc.d
  made_policy=1
fi
cleanup_policy() { if [ -n "$made_policy" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup_policy EXIT

log=$(mktemp)
if ! { $SUDO apt-get update -qq && $SUDO env NEEDRESTART_SUSPEND=1 DEBIAN_FRONTEND=noninteractive \
       apt-get install -y -qq --no-install-recommends "${need[@]}"; } >"$log" 2>&1; then
  cat "$log" >&2
  rm -f "$log"
  exit 1
fi
rm -f "$log"

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  $SUDO systemctl disable --now redis-server.service nginx.service >/dev/null 2>&1 || true
fi
# 그래도 패키지가 띄운 데몬이 있으면 그 PID 만 멈춥니다 (pid 파일 기준; 테스트가 띄운 것은 건드리지 않습니다).
for pidfile in /run/redis/redis-server.pid /run/nginx.pid; do
  if [ -s "$pidfile" ]; then
    echo "패키지가 시작한 데몬을 멈춥니다: PID $(cat "$pidfile")"
    $SUDO kill "$(cat "$pidfile")" || true
  fi
done

echo "설치함: ${need[*]}"
redis-server --version
/usr/sbin/nginx -v 2>&1
