#!/usr/bin/env bash
# 단계 04 채점과 수업에 필요한 Prometheus, promtool, Alertmanager, amtool 을 설치합니다
# (Debian `prometheus`, `prometheus-alertmanager`). 이미 있으면 아무것도 하지 않습니다 (멱등).
# 테스트와 수업은 이 바이너리를 루프백의 빈 포트로 직접 띄우고 PID 로 멈춥니다
# (coursekit/prometheus.py). 그래서 패키지의 서비스(데몬)는 켜 두지 않습니다:
# 설치 중에는 policy-rc.d 로 서비스 시작을 막고, 설치 뒤에 systemd 유닛을 끄고,
# 그래도 패키지 사용자(prometheus)로 떠 있는 프로세스가 있으면 그 PID 만 멈춥니다.
set -euo pipefail

need=()
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need+=(prometheus)
# Debian 은 alertmanager 바이너리를 /usr/bin/prometheus-alertmanager 라는 이름으로 설치합니다.
{ { command -v alertmanager || command -v prometheus-alertmanager; } && command -v amtool; } >/dev/null 2>&1 \
  || need+=(prometheus-alertmanager)
if [ ${#need[@]} -eq 0 ]; then
  echo "prometheus, promtool, alertmanager, amtool: 이미 설치됨"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

# 설치하는 동안 패키지 스크립트가 서비스를 시작하지 못하게 합니다 (없을 때만 만들고 끝나면 지웁니다).
made_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod 755 /usr/sbin/policy-rc.d
  made_policy=1
fi
cleanup_policy() { if [ -n "$made_policy" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup_policy EXIT

log=$(mktemp)
# --no-install-recommends: prometheus 가 추천하는 node-exporter 등은 필요 없습니다.
# 출력은 실패했을 때만 보여 줍니다 (debconf, needrestart 의 잡음).
if ! { $SUDO apt-get update -qq && $SUDO env NEEDRESTART_SUSPEND=1 DEBIAN_FRONTEND=noninteractive \
       apt-get install -y -qq --no-install-recommends "${need[@]}"; } >"$log" 2>&1; then
  cat "$log" >&2
  rm -f "$log"
  exit 1
fi
rm -f "$log"

# systemd 가 있는 머신(CI 러너 등): 서비스를 끄고 부팅 때도 켜지지 않게 합니다.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  $SUDO systemctl disable --now prometheus.service prometheus-alertmanager.service >/dev/null 2>&1 || true
fi
# 그래도 패키지 사용자로 떠 있는 데몬이 있으면 그 PID 만 멈춥니다 (테스트가 띄운 것은 건드리지 않습니다).
pids=$(ps -eo pid=,user=,comm= | awk '$2 == "prometheus" && ($3 == "prometheus" || $3 == "alertmanager") {print $1}')
if [ -n "$pids" ]; then
  echo "패키지가 시작한 데몬을 멈춥니다: PID $pids"
  # shellcheck disable=SC2086
  $SUDO kill $pids || true
fi

echo "설치함: ${need[*]}"
prometheus --version 2>&1 | head -n 1
"$(command -v alertmanager || command -v prometheus-alertmanager)" --version 2>&1 | head -n 1
