#!/usr/bin/env bash
# One entry point for a fresh machine with only Python 3:
#   ./setup.sh demo            create .venv, install mixdistill + pinned deps, get Fashion-MNIST, run the demo
#   ./setup.sh test [ARGS]     same install, then the test suite (ARGS go to pytest, e.g. -m "not slow")
#   ./setup.sh install         only the install
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
FMNIST_DEBIAN=/usr/share/datasets/fashion-mnist

say() { printf '[setup] %s\n' "$*" >&2; }
is_root_debian() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }
apt_install() { say "apt-get install $*"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }

ensure_space() {
  # torch's x86_64 build on PyPI carries CUDA libraries: the venv ends near 6.3 GB; other machines need far less
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import torch" 2>/dev/null && return
  local need_mb=${MIXDISTILL_INSTALL_NEED_MB:-$([ "$(uname -m)" = x86_64 ] && echo 6500 || echo 1500)}
  local dir free_mb
  dir=$(dirname "$(realpath -m "$VENV")")
  while [ ! -d "$dir" ]; do dir=$(dirname "$dir"); done
  free_mb=$(( $(df -Pk "$dir" | awk 'NR==2 {print $4}') / 1024 ))
  if [ "$free_mb" -lt "$need_mb" ]; then
    say "installing needs about $need_mb MB free for $VENV; $dir has $free_mb MB: free some space, or set VENV=PATH on a larger disk"
    exit 1
  fi
}

ensure_venv() {
  local stamp
  stamp=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
  [ "$(cat "$VENV/.mixdistill-installed" 2>/dev/null)" = "$stamp" ] && return
  ensure_space
  if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"
      if is_root_debian; then apt_install python3-venv; "$PYTHON" -m venv "$VENV"
      else say "python3 -m venv failed: install the python3-venv package"; exit 1; fi
    fi
  fi
  say "installing mixdistill and its pinned dependencies into $VENV (first time: a few minutes)"
  "$VENV/bin/python" -m pip install -q -c constraints.txt -e '.[dev]' 2>&1 | grep -v "is ignored" || true
  "$VENV/bin/python" -c "import mixdistill, torch, torchvision" || { say "install failed"; exit 1; }
  echo "$stamp" > "$VENV/.mixdistill-installed"
}

ensure_fashion_mnist() {
  # local copy (MIXDISTILL_DATA) > Debian package > download; as root on Debian with no download: apt
  if "$VENV/bin/python" -c "from mixdistill.data import load_dataset; load_dataset('fashion_mnist', 'test')" 2>/dev/null; then
    return
  fi
  if is_root_debian; then
    apt_install dataset-fashion-mnist
  else
    say "Fashion-MNIST not found and cannot be downloaded: set MIXDISTILL_DATA, or run 'apt-get install dataset-fashion-mnist' as root"
    exit 1
  fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  install) ensure_venv ;;
  demo) ensure_venv; ensure_fashion_mnist; exec "$VENV/bin/mixdistill" demo "$@" ;;
  test) ensure_venv; exec "$VENV/bin/python" -m pytest "$@" ;;
  *) echo "usage: ./setup.sh demo|test|install [args]" >&2; exit 2 ;;
esac
