#!/usr/bin/env bash
# Headless rendering needs EGL (Mesa's llvmpipe is enough). Install it when missing.
set -euo pipefail
if ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1' && ls /usr/lib/*/dri/swrast_dri.so >/dev/null 2>&1; then
  exit 0
fi
pkgs="libegl1 libgl1 libgl1-mesa-dri libglx-mesa0"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing headless GL packages: $pkgs"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null
else
  echo "warning: EGL/Mesa not found; install them for headless rendering, e.g. 'sudo apt-get install $pkgs'" >&2
fi
