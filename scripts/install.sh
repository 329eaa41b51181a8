#!/usr/bin/env bash
# Install higgs-agent on a Debian machine with Python 3.11: system packages (when root), then a venv.
#   bash scripts/install.sh                 # the agent, into ./.venv
#   bash scripts/install.sh --test          # the agent + test dependencies
#   bash scripts/install.sh --venv DIR      # somewhere else (CI caches it outside the clone)
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
venv=".venv"
while [ $# -gt 0 ]; do
  case "$1" in
    --test) extras="[test]" ;;
    --venv) venv="$2"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

# espeak-ng and sox make test speech; libsndfile backs soundfile.
need_apt=""
for tool in espeak-ng sox; do command -v "$tool" >/dev/null || need_apt=1; done
if [ -n "$need_apt" ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends espeak-ng sox libsndfile1 >/dev/null
  else
    echo "note: espeak-ng/sox missing; run as root (or apt-get install espeak-ng sox) for the tests" >&2
  fi
fi

python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/pip" install -q --upgrade pip
# torch and torchaudio come as the matched pair pinned in pyproject.toml (2.11.*, CUDA build; runs on CPU too).
"$venv/bin/pip" install -q -e ".$extras"
echo "installed into $venv"
