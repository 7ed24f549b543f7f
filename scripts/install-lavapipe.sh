#!/usr/bin/env bash
# Installs Mesa's software Vulkan driver (lavapipe) so that the WebGPU backend (Dawn, through the `webgpu` npm
# package) finds an adapter on a machine without a GPU: CI runners and CPU-only developer machines. Debian
# bookworm's own Mesa 22 is too old for Dawn (it yields a null adapter); Mesa 25 from bookworm-backports works.
# Debian/Ubuntu-style apt systems with deb822 sources; needs root. Idempotent: does nothing when installed.
# Usage: sudo bash scripts/install-lavapipe.sh
set -euo pipefail
if dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null | grep -Eq '^(2[5-9]|[3-9][0-9])'; then
  dpkg-query -W -f='lavapipe: mesa-vulkan-drivers ${Version} (already installed)\n' mesa-vulkan-drivers
  exit 0
fi
src=/etc/apt/sources.list.d/debian.sources
bpo=/etc/apt/sources.list.d/bookworm-backports.sources
if [ ! -e "$bpo" ]; then
  [ -e "$src" ] || { echo "install-lavapipe: $src not found (a Debian bookworm image is expected)" >&2; exit 1; }
  # the first stanza of the image's own Debian source, pointed at the backports suite
  awk 'BEGIN{RS="";ORS="\n\n"} NR==1' "$src" | sed 's/^Suites:.*/Suites: bookworm-backports/' > "$bpo"
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
dpkg-query -W -f='lavapipe: mesa-vulkan-drivers ${Version}\n' mesa-vulkan-drivers
