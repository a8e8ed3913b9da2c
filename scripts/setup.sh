#!/usr/bin/env bash
# Idempotent set-up: system packages FFCV (and the browser tests) need, .venv, editable install.
# A second run with unchanged pyproject.toml/setup.sh only checks a stamp and exits.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
VENV=.venv
STAMP=$VENV/.setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

APT_PKGS="libopencv-dev libturbojpeg0-dev pkg-config chromium"
missing=""
for p in $APT_PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "[setup] installing system packages:$missing"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi

[ -x $VENV/bin/python ] || { echo "[setup] creating $VENV"; $PY -m venv $VENV; }
# pip on these machines warns about every missing local index folder it is configured with: filter that noise.
pip_q() { set -o pipefail; "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }; }
PIP=pip_q
$PIP install -U pip setuptools wheel
# torch first: the CUDA 13 build (runs on CPU too) that lies on this machine's disk.
$PIP install torch==2.14.1 torchvision==0.29.1
# FFCV builds from source against the system OpenCV/libjpeg-turbo and needs numpy at build time.
$PIP install numpy pkgconfig cython
if ! $VENV/bin/python -c "import ffcv" 2>/dev/null; then
  echo "[setup] building ffcv from source"
  $PIP install --no-build-isolation ffcv==1.0.2
fi
$PIP install -e ".[test]"
echo "$want" > "$STAMP"
echo "[setup] done: $VENV"
