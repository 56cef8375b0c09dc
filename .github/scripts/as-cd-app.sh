#!/usr/bin/env bash
# Runs a command (CD's publish-manifests.sh) as CD's GitHub App: git commits as the App's bot
# user and talks to GitHub with the App's installation token, for this command only (nothing is
# written to .git/config, so no later step of the job finds the token there).
#
#   APP_TOKEN=... APP_SLUG=... .github/scripts/as-cd-app.sh COMMAND [ARGS...]
#
# APP_TOKEN and APP_SLUG are the outputs `token` and `app-slug` of actions/create-github-app-token.
set -euo pipefail

: "${APP_TOKEN:?the installation token of the App}" "${APP_SLUG:?the slug of the App}"
[ $# -ge 1 ] || { sed -n '2,8p' "$0" >&2; exit 2; }

# The bot user's numeric ID makes GitHub attribute the commits to the App.
bot="${APP_SLUG}[bot]"
id=$(GH_TOKEN=$APP_TOKEN gh api "/users/$bot" --jq .id)
export GIT_AUTHOR_NAME=$bot GIT_COMMITTER_NAME=$bot
export GIT_AUTHOR_EMAIL="$id+$bot@users.noreply.github.com" GIT_COMMITTER_EMAIL="$id+$bot@users.noreply.github.com"

# The header actions/checkout would persist, given to git through its environment instead.
export GIT_CONFIG_COUNT=1
export GIT_CONFIG_KEY_0="http.${GITHUB_SERVER_URL:-https://github.com}/.extraheader"
GIT_CONFIG_VALUE_0="AUTHORIZATION: basic $(printf 'x-access-token:%s' "$APP_TOKEN" | base64 -w0)"
export GIT_CONFIG_VALUE_0
exec "$@"
