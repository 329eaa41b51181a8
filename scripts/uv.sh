# Sourced by the install and lock scripts: puts the pinned uv on $UV, installing it once per machine into
# a small venv of its own (pip is the only installer a fresh Python has; uv itself is not in the lock).
UV_VERSION=0.13.8
uv_home="${HIGGS_AGENT_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/higgs-agent/tools}/uv-$UV_VERSION"
UV="$uv_home/bin/uv"
if ! "$UV" --version 2>/dev/null | grep -qF "uv $UV_VERSION"; then
  rm -rf "$uv_home"
  "${PYTHON:-python3}" -m venv "$uv_home"
  "$uv_home/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
fi
export UV_LINK_MODE=copy  # the uv cache and the venv may sit on different file systems
