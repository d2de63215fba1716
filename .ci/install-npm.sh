#!/usr/bin/env bash
# 문서 빌드가 Mermaid 를 npm 패키지에서 받아 사이트에 포함하므로 npm 이 필요합니다 (저장소에는 넣지 않음).
set -euo pipefail
if command -v npm >/dev/null 2>&1; then
  echo "npm 이미 있음: $(npm --version)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm
npm --version
