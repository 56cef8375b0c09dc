#!/usr/bin/env bash
# The backend VM's daily MongoDB backup (run by the systemd timer that the Terraform cloud-init
# installs): reads /etc/libertum/backup.env, makes sure the tool's venv exists, and runs
# `libertum-backup.py backup` under a lock so that two runs never overlap. Exit status: the
# tool's (0 done, 1 failed), 75 when another run holds the lock, 78 when the setup is wrong.
#
# /etc/libertum/backup.env (root:root 0600: it holds the MongoDB password; NAME=value lines, read
# literally, not sourced) sets at least
#   MONGODB_URI=mongodb://backup:PASSWORD@127.0.0.1:27017/?replicaSet=rs0&authSource=admin
#   AZURE_STORAGE_ACCOUNT_URL=https://ACCOUNT.blob.core.windows.net
#   BACKUP_CONTAINER=mongodb-backups
#   BACKUP_RETENTION_DAYS=35
# and optionally MONGODB_DATABASES_PREFIX, BACKUP_PREFIX, AZURE_CLIENT_ID (a user-assigned
# identity; the system-assigned one needs nothing), BACKUP_TOOL, BACKUP_PYTHON, BACKUP_VENV.
set -euo pipefail

ENV_FILE=${BACKUP_ENV_FILE:-/etc/libertum/backup.env}
LOCK_FILE=${BACKUP_LOCK_FILE:-/run/lock/libertum-backup.lock}

log() {
    # Same JSON lines as the tool, so that journald holds one format.
    printf '{"ts":"%s","level":"%s","msg":"%s","source":"backup-vm.sh"}\n' \
        "$(date -u +%Y-%m-%dT%H:%M:%S.000Z)" "$1" "$2" >&2
}

if [[ ! -r $ENV_FILE ]]; then
    log error "cannot read $ENV_FILE"
    exit 78
fi
# NAME=value lines, read literally rather than sourced: a URI's & and ; (and a password's $)
# would be shell syntax. One pair of surrounding quotes is removed, as systemd's
# EnvironmentFile= does. Exported so that the tool (a child process) sees every setting.
lineno=0
while IFS= read -r line || [[ -n $line ]]; do
    lineno=$((lineno + 1))
    line=${line%$'\r'}
    [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
    if [[ ! $line =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
        # Not the line itself: it may hold a password.
        log error "$ENV_FILE line $lineno is not NAME=value"
        exit 78
    fi
    name=${BASH_REMATCH[2]}
    value=${BASH_REMATCH[3]}
    if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then
        value=${BASH_REMATCH[1]}
    fi
    export "$name=$value"
done <"$ENV_FILE"

VENV=${BACKUP_VENV:-/opt/libertum-backup}
# pymongo 4.20 needs Python >= 3.11; Ubuntu 22.04's python3 is 3.10, so cloud-init installs
# python3.11 and python3.11-venv.
PYTHON=${BACKUP_PYTHON:-python3.11}
TOOL=${BACKUP_TOOL:-$(dirname "$(readlink -f "$0")")/libertum-backup.py}
# The same pins as deploy/backup/requirements.txt (test_backup.py fails if they drift): cloud-init
# copies only this script and the tool onto the VM.
REQUIREMENTS=(
    "pymongo==4.20.1"
    "azure-storage-blob==12.31.1"
    "azure-identity==1.27.0"
)

for name in MONGODB_URI BACKUP_CONTAINER; do
    if [[ -z ${!name:-} ]]; then
        log error "$name is not set in $ENV_FILE"
        exit 78
    fi
done
if [[ -z ${AZURE_STORAGE_ACCOUNT_URL:-} && -z ${AZURE_STORAGE_CONNECTION_STRING:-} ]]; then
    log error "set AZURE_STORAGE_ACCOUNT_URL (or AZURE_STORAGE_CONNECTION_STRING) in $ENV_FILE"
    exit 78
fi
if [[ ! -r $TOOL ]]; then
    log error "the backup tool is not at $TOOL (set BACKUP_TOOL)"
    exit 78
fi

exec 9>"$LOCK_FILE"
if ! flock --nonblock 9; then
    log error "another backup holds $LOCK_FILE; not starting a second one"
    exit 75
fi

# The venv is (re)built when missing or when its pins differ from the ones above, e.g. after an
# upgrade of this script; a half-built venv is removed so that the next run starts clean.
stamp=$VENV/.requirements
if [[ ! -x $VENV/bin/python || "$(cat "$stamp" 2>/dev/null || true)" != "${REQUIREMENTS[*]}" ]]; then
    log info "creating the venv $VENV"
    rm -rf "$VENV"
    if ! "$PYTHON" -m venv "$VENV" ||
        ! "$VENV/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check "${REQUIREMENTS[@]}"; then
        rm -rf "$VENV"
        log error "could not create the venv $VENV with $PYTHON"
        exit 1
    fi
    printf '%s' "${REQUIREMENTS[*]}" >"$stamp"
fi

# Scratch for collections bigger than 16 MiB (tar needs each file's size before its bytes).
# Only a directory made here is removed afterwards, never one that backup.env names.
if [[ -z ${BACKUP_WORK_DIR:-} ]]; then
    BACKUP_WORK_DIR=$(mktemp -d /var/tmp/libertum-backup.XXXXXX)
    trap 'rm -rf "$BACKUP_WORK_DIR"' EXIT
fi
export BACKUP_WORK_DIR

log info "backup starting"
status=0
"$VENV/bin/python" "$TOOL" backup || status=$?
if ((status != 0)); then
    log error "backup failed with status $status"
else
    log info "backup finished"
fi
exit "$status"
