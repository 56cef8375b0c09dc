# Shared by the scripts: install what is missing, quietly, on Debian.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# need_apt PACKAGE COMMAND: installs PACKAGE unless COMMAND is already on PATH.
need_apt() {
  command -v "$2" >/dev/null 2>&1 && return 0
  echo "installing $1" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null 2>&1 || {
    as_root apt-get update -q >/dev/null 2>&1
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null
  }
}

need_rust() {
  need_apt curl curl
  need_apt gcc cc
  if ! command -v cargo >/dev/null 2>&1; then
    echo "installing the Rust toolchain with rustup" >&2
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy >/dev/null || {
      echo "could not install Rust: install it from https://rustup.rs and run this again" >&2; exit 1; }
  fi
  rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt >/dev/null 2>&1 || true
}
