#!/usr/bin/env bash
# Install what the observability tests need: Debian's `prometheus` (the server and `promtool`), which
# tests/harness/prometheus.py starts on loopback ports (only the tests use it; the product ships none).
# Idempotent and quiet when already installed; prints one line when it installs.
#
#   tests/harness/install_prometheus.sh        # from hack/test.sh, before pytest
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  sudo=sudo
else
  sudo=
fi

echo "[observability] installing Debian prometheus (server + promtool)" >&2
export DEBIAN_FRONTEND=noninteractive
# The package's postinst would start a system service on :9090; tests start their own instances.
# policy-rc.d 101 keeps it from starting (only when we create the file; an existing one is left alone).
created_policy=
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  created_policy=1
fi
trap '[[ -n $created_policy ]] && $sudo rm -f /usr/sbin/policy-rc.d' EXIT
if ! $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; then
  $sudo apt-get update -qq >/dev/null
  $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
command -v promtool >/dev/null
