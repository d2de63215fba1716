#!/usr/bin/env bash
# 문서 사이트를 실제 브라우저로 확인하는 테스트(tests/test_docs.py)에 필요한 headless Chromium 설치.
# 이미 설치되어 있으면 아무것도 하지 않습니다 (멱등).
set -euo pipefail

if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
  echo "chromium 이미 설치됨: $(chromium --version 2>/dev/null || echo /usr/bin/chromium)"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-noto-cjk
chromium --version
