#!/usr/bin/env bash
# Raspberry Pi OS (Bookworm or later, 64-bit), Pi 4 / Pi 5: install edge-enhance with the camera
# stack and, with --service, start the web viewfinder at boot.
#
#   ./setup.sh                      # venv in ~/edge-enhance-venv, the package from this checkout
#   ./setup.sh --service            # also install + enable the systemd unit (needs sudo)
#   SRC=/path/to/edge-enhance ./setup.sh   # install from another checkout (or a wheel)
set -euo pipefail

VENV="${VENV:-$HOME/edge-enhance-venv}"
SERVICE=0
for arg in "$@"; do
  case "$arg" in
    --service) SERVICE=1 ;;
    *) echo "usage: $0 [--service]   (unknown argument: $arg)" >&2; exit 2 ;;
  esac
done
SRC="${SRC:-$(readlink -f "$(dirname "$(readlink -f "$0")")/..")}"

if ! grep -qi "raspberry pi" /proc/device-tree/model 2>/dev/null; then
  echo "note: this does not look like a Raspberry Pi; continuing anyway" >&2
fi
. /etc/os-release
if [[ "${VERSION_CODENAME:-}" == "bullseye" || "${VERSION_CODENAME:-}" == "buster" ]]; then
  echo "error: Raspberry Pi OS ${VERSION_CODENAME} is too old; picamera2 needs Bookworm or later" >&2
  exit 1
fi
# The programs' word size, not the kernel's: 32-bit Raspberry Pi OS boots a 64-bit kernel on a Pi 4 / 5
# (uname -m says aarch64) but runs 32-bit programs, for which ai-edge-litert has no wheel.
BITS="$(python3 -c 'import struct; print(struct.calcsize("P") * 8)')"
if [[ "$(uname -m)" != "aarch64" || "$BITS" != 64 ]]; then
  echo "error: this script sets up 64-bit Raspberry Pi OS; this one runs ${BITS}-bit programs (kernel $(uname -m))." \
       "Install the 64-bit OS, or use the older engine, slower, with numpy 1 (Python <= 3.11):" \
       "pip install '${SRC}[tflite-runtime]'" >&2
  exit 1
fi

# picamera2 and libcamera come from apt (they are built against the system's libcamera), which is
# why the venv below sees system site-packages. OpenCV from apt too: its numpy matches picamera2's.
sudo apt-get update
sudo apt-get install -y --no-install-recommends python3-picamera2 python3-opencv python3-venv python3-pip ffmpeg

python3 -m venv --system-site-packages "$VENV"
"$VENV/bin/python" -m pip install --upgrade pip
# The camera extra would pull opencv-python-headless from PyPI; the apt OpenCV is already visible.
# numpy stays apt's: its OpenCV and picamera2 are built against it, and ai-edge-litert (through
# ml_dtypes) would otherwise put numpy 2 in the venv, which they cannot import.
NUMPY="$(python3 -c 'import numpy; print(numpy.__version__)')"
"$VENV/bin/python" -m pip install "${SRC}[litert]" "numpy==${NUMPY}"

"$VENV/bin/python" -c "import picamera2, cv2, edge_enhance; print('edge-enhance', edge_enhance.__version__, 'ok')"
echo "check the camera and measure real frame rates with:"
echo "  $VENV/bin/python $(dirname "$(readlink -f "$0")")/check_pi.py"

if [[ $SERVICE == 1 ]]; then
  UNIT=/etc/systemd/system/edge-enhance-viewfinder.service
  sed -e "s#@VENV@#$VENV#g" -e "s#@USER@#$(id -un)#g" \
      "$(dirname "$(readlink -f "$0")")/edge-enhance-viewfinder.service" | sudo tee "$UNIT" >/dev/null
  if [[ ! -f /etc/default/edge-enhance ]]; then
    # Off-loopback viewing needs a token; generate one now and keep it out of the unit file. The file is
    # made private (600) before the token goes in, never readable by others even for a moment.
    sudo install -m 600 /dev/null /etc/default/edge-enhance
    echo "EDGE_ENHANCE_TOKEN=$(python3 -c 'import secrets; print(secrets.token_urlsafe(16))')" | sudo tee /etc/default/edge-enhance >/dev/null
  fi
  sudo systemctl daemon-reload
  sudo systemctl enable --now edge-enhance-viewfinder.service
  . /etc/default/edge-enhance 2>/dev/null || EDGE_ENHANCE_TOKEN="$(sudo sed -n 's/^EDGE_ENHANCE_TOKEN=//p' /etc/default/edge-enhance)"
  echo "viewfinder: http://$(hostname -I | awk '{print $1}'):8080/?token=${EDGE_ENHANCE_TOKEN}"
fi
