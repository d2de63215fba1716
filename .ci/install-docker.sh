#!/usr/bin/env bash
# 단계 01 채점에 필요한 Docker 엔진(Debian docker.io)과 debootstrap(로컬 베이스 이미지용)을 설치합니다.
# 이미 있으면 아무것도 하지 않습니다.
set -euo pipefail
need=()
# 엔진이 이미 있으면 (GitHub 의 Ubuntu 러너: docker-ce 의 /usr/bin/dockerd) 설치하지 않습니다.
{ [ -x /usr/sbin/dockerd ] || [ -x /usr/bin/dockerd ]; } && command -v docker >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ ${#need[@]} -eq 0 ]; then
  echo "docker.io, debootstrap: 이미 설치됨"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
echo "설치함: ${need[*]}"
