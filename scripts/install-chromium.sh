#!/usr/bin/env bash
# Installs Debian's Chromium (/usr/bin/chromium) for the browser tests (test/web/), which drive it headless with
# playwright-core. Playwright's own browser download is not used: it needs network access at test time.
# Debian/Ubuntu-style apt systems; needs root. Idempotent: does nothing when chromium is installed.
# Usage: sudo bash scripts/install-chromium.sh
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  echo "chromium: $(chromium --version 2>/dev/null || echo installed) (already installed)"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "chromium: $(chromium --version)"
