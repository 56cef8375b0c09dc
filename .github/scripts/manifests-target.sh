#!/usr/bin/env bash
# Where CD publishes the manifests, and how it authenticates: prints the lines CD's workflow
# appends to $GITHUB_OUTPUT.
#
#   MANIFESTS_REPOSITORY=... MANIFESTS_AUTH=... .github/scripts/manifests-target.sh
#
# MANIFESTS_REPOSITORY (repository variable): OWNER/NAME of the manifests repository; empty means
#   <this repository's owner>/libertum-manifests; `self` (or this repository's own OWNER/NAME)
#   means this repository, whose deploy/k8s Argo CD then reads directly.
# MANIFESTS_AUTH (repository variable): `app` (default), CD's GitHub App, whose token is scoped
#   to that one repository; or `deploy-key`, an SSH deploy key with write access to it (the
#   secret MANIFESTS_DEPLOY_KEY).
# Prints repository=OWNER/NAME, owner=, name=, self=true|false, auth=app|deploy-key and url= (the
# https URL for the App, the SSH one for a deploy key).
set -euo pipefail

: "${GITHUB_REPOSITORY:?}" "${GITHUB_REPOSITORY_OWNER:?}"
repository=${MANIFESTS_REPOSITORY:-$GITHUB_REPOSITORY_OWNER/libertum-manifests}
[ "$repository" = self ] && repository=$GITHUB_REPOSITORY
[[ $repository =~ ^[A-Za-z0-9][A-Za-z0-9-]*/[A-Za-z0-9._-]+$ ]] \
  || { echo "::error::MANIFESTS_REPOSITORY is OWNER/NAME or self, not '$repository'" >&2; exit 1; }
self=false
[ "${repository,,}" = "${GITHUB_REPOSITORY,,}" ] && self=true
server=${GITHUB_SERVER_URL:-https://github.com}
case ${MANIFESTS_AUTH:-app} in
  app) auth=app url=$server/$repository.git ;;
  deploy-key) auth=deploy-key url=git@${server#https://}:$repository.git ;;
  *) echo "::error::MANIFESTS_AUTH is app or deploy-key, not '$MANIFESTS_AUTH'" >&2; exit 1 ;;
esac
echo "repository=$repository"
echo "owner=${repository%%/*}"
echo "name=${repository#*/}"
echo "self=$self"
echo "auth=$auth"
echo "url=$url"
