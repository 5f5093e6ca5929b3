#!/usr/bin/env bash
# Set up .venv for pointseg; every step is skipped when already done.
#   1. system libraries Open3D needs (installed when root, else the apt-get line is printed)
#   2. the virtual environment
#   3. torch, pinned (the pinned CPU/CUDA wheel; an unpinned torch may pull a multi-GB build)
#   4. spconv: the CPU wheel, or spconv-cu126 when nvidia-smi sees a GPU
#      (override with SPCONV_VARIANT=spconv|spconv-cu118|spconv-cu121|spconv-cu124|spconv-cu126,
#      the variants with 2.3.8 wheels; never two at once)
#   5. pointseg itself, editable, with the dev extras (its torch range keeps the torch of step 3)
set -euo pipefail

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
SPCONV_VERSION=${SPCONV_VERSION:-2.3.8}
APT_PKGS="libusb-1.0-0 libgl1 libegl1 libgomp1 libvulkan1 mesa-vulkan-drivers"

say() { printf '[setup] %s\n' "$*"; }

# 1. system libraries
missing=""
for pkg in $APT_PKGS; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
    || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    say "installing system libraries for Open3D:$missing"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    say "Open3D needs system libraries that are missing; run:"
    say "  sudo apt-get install -y$missing"
  fi
fi

# 2. virtual environment
if [ ! -x "$VENV/bin/python" ]; then
  command -v "$PYTHON" >/dev/null || { say "$PYTHON not found; install Python 3.11 or set PYTHON=..."; exit 1; }
  say "creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PY="$VENV/bin/python"
PIP="$PY -m pip"
installed() { $PIP show -q "$1" >/dev/null 2>&1; }
version_of() { $PIP show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }

# 3. torch, pinned
if [ "$(version_of torch | cut -d+ -f1)" != "$TORCH_VERSION" ]; then
  say "installing torch==$TORCH_VERSION"
  $PIP install -q "torch==$TORCH_VERSION"
fi

# 4. spconv variant
if [ -z "${SPCONV_VARIANT:-}" ]; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    SPCONV_VARIANT=spconv-cu126
  else
    SPCONV_VARIANT=spconv
  fi
fi
for other in spconv spconv-cu118 spconv-cu120 spconv-cu121 spconv-cu124 spconv-cu126; do
  if [ "$other" != "$SPCONV_VARIANT" ] && installed "$other"; then
    say "removing $other (only one spconv variant may be installed; want $SPCONV_VARIANT)"
    $PIP uninstall -q -y "$other"
    $PIP uninstall -q -y "cumm${other#spconv}" 2>/dev/null || true
  fi
done
if [ "$(version_of "$SPCONV_VARIANT")" != "$SPCONV_VERSION" ]; then
  say "installing $SPCONV_VARIANT==$SPCONV_VERSION"
  $PIP install -q "$SPCONV_VARIANT==$SPCONV_VERSION"
fi

# 5. pointseg (editable: the Hydra configs in conf/ are read from the checkout; a wheel,
#    `pip install .`, carries them as pointseg/conf)
stamp="$VENV/.pointseg-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! installed pointseg; then
  say "installing pointseg[dev] (editable)"
  $PIP install -q -e ".[dev]"
  touch "$stamp"
fi
say "ready: $($PY -c 'import torch, spconv; print("torch", torch.__version__, "| spconv", spconv.__version__, "| cuda", torch.cuda.is_available())')"
