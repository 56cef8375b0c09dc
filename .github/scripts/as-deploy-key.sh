#!/usr/bin/env bash
# Runs a command (CD's publish-manifests.sh) with git using an SSH deploy key, for this command
# only: the key goes to a private temporary file, deleted afterwards, and is given to git
# through GIT_SSH_COMMAND; nothing is written to ~/.ssh or to a git configuration.
#
#   DEPLOY_KEY=... .github/scripts/as-deploy-key.sh COMMAND [ARGS...]
#
# DEPLOY_KEY is the private key of a deploy key with write access to the manifests repository
# (the secret MANIFESTS_DEPLOY_KEY). The server's host keys come from GitHub's API over HTTPS
# (GET /meta, ssh_keys), not from a first connection. Commits are made as github-actions[bot].
set -euo pipefail

: "${DEPLOY_KEY:?the private key of the deploy key of the manifests repository}"
[ $# -ge 1 ] || { sed -n '2,10p' "$0" >&2; exit 2; }

host=${GITHUB_SERVER_URL:-https://github.com}
host=${host#https://}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
(umask 077 && printf '%s\n' "$DEPLOY_KEY" >"$dir/key")
curl -fsS --proto =https "${GITHUB_API_URL:-https://api.github.com}/meta" \
  | python3 -c 'import json, sys; print("\n".join(f"{sys.argv[1]} {k}" for k in json.load(sys.stdin)["ssh_keys"]))' "$host" \
  >"$dir/known_hosts"
[ -s "$dir/known_hosts" ] || { echo "no SSH host keys for $host" >&2; exit 1; }

export GIT_SSH_COMMAND="ssh -i $dir/key -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=$dir/known_hosts"
export GIT_AUTHOR_NAME='github-actions[bot]' GIT_COMMITTER_NAME='github-actions[bot]'
export GIT_AUTHOR_EMAIL='41898282+github-actions[bot]@users.noreply.github.com'
export GIT_COMMITTER_EMAIL=$GIT_AUTHOR_EMAIL
"$@"
