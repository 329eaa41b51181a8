#!/usr/bin/env bash
# Re-resolve every dependency to its newest allowed version and rewrite uv.lock (commit the result after
# `bash .ci/run` passes). torch and torchaudio stay the exact pair pyproject.toml pins.
#   bash scripts/update_lock.sh                      # everything
#   bash scripts/update_lock.sh --upgrade-package X  # one package
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/uv.sh
[ $# -gt 0 ] || set -- --upgrade
"$UV" lock "$@"
