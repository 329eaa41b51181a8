#!/usr/bin/env bash
# Install higgs-agent on a Debian or Ubuntu machine: system packages (when root), then a venv holding
# exactly the versions in uv.lock (hashes checked), then a check that the model stack really loads.
#   bash scripts/install.sh                 # the agent, into ./.venv
#   bash scripts/install.sh --test          # + test dependencies and test tools (espeak-ng, sox, chromium)
#   bash scripts/install.sh --venv DIR      # somewhere else (CI keeps it outside the clone)
set -euo pipefail
cd "$(dirname "$0")/.."

test_extra=""
venv=".venv"
while [ $# -gt 0 ]; do
  case "$1" in
    --test) test_extra=1 ;;
    --venv) venv="$2"; shift ;;
    *) echo "unknown option $1 (use --test, --venv DIR)" >&2; exit 2 ;;
  esac
  shift
done

# espeak-ng and sox make speech (the README's example, the tests); chromium runs the web page's tests;
# postgresql is the real database the records' tests start (initdb, pg_ctl: not on PATH, Debian keeps them in
# /usr/lib/postgresql/N/bin).
packages=(espeak-ng sox)
[ -n "$test_extra" ] && packages+=(chromium postgresql)
missing=()
for tool in "${packages[@]}"; do
  if [ "$tool" = postgresql ]; then
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=("$tool")
  else
    command -v "$tool" >/dev/null || missing+=("$tool")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" libsndfile1 ca-certificates >/dev/null
  else
    echo "note: ${missing[*]} missing; run this as root (or apt-get install ${missing[*]}) for the tests" >&2
  fi
fi

source scripts/uv.sh
extras=()
[ -n "$test_extra" ] && extras=(--extra test)
# --frozen: install uv.lock as it is, never re-resolve (a fresh machine gets the same versions as CI).
# --compile-bytecode: every module compiled once, here; where Python may not write .pyc files (containers set
# PYTHONDONTWRITEBYTECODE) each start would otherwise recompile transformers and torch: `serve` imported its
# model code in 16-19 s instead of 6 s on 2 cores.
UV_PROJECT_ENVIRONMENT="$venv" "$UV" sync --frozen --compile-bytecode --quiet "${extras[@]}" --python "${PYTHON:-python3}"
"$venv/bin/python" -m higgs_agent.install_check
echo "installed into $venv"
