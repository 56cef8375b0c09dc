#!/usr/bin/env bash
# Where CD publishes the manifests, and how it authenticates: prints the lines CD's workflow
# appends to $GITHUB_OUTPUT. Fails when that is not the repository Argo CD deploys from.
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
#
# The repository is named twice: by the variable MANIFESTS_REPOSITORY here, and by `url` in
# deploy/argocd/base/repository.yaml for Argo CD (read from this checkout, i.e. the commit CD
# runs; REPOSITORY_YAML names another file). The two are compared as host/owner/name, whatever
# the form (https or SSH, with or without .git, any case); when they differ CD would push where
# Argo CD never looks, so this fails, with the reason in the job summary too.
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

# A git URL as host/owner/name, lower case: https://github.com/o/r.git, git@github.com:o/r.git,
# ssh://git@github.com/o/r.git and https://github.com/O/r/ all become github.com/o/r.
normalise() {
  local u=${1,,} host path
  u=${u%/}
  u=${u%.git}
  case $u in
    http://* | https://* | ssh://*)
      u=${u#*://}
      host=${u%%/*} path=${u#*/}
      host=${host#*@}
      host=${host%%:*}
      ;;
    *@*:*)
      u=${u#*@}
      host=${u%%:*} path=${u#*:}
      ;;
    *) return 1 ;;
  esac
  [[ $path == */* && $path != */*/* && -n $host ]] || return 1
  echo "$host/$path"
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
file=${REPOSITORY_YAML:-$here/../../deploy/argocd/base/repository.yaml}
shown=${REPOSITORY_YAML:-deploy/argocd/base/repository.yaml}
[ -f "$file" ] || { echo "::error::no $shown: cannot tell which repository Argo CD deploys from" >&2; exit 1; }
# The ConfigMap's `  url: ...` line (two spaces: under data:), without quotes or a comment.
mapfile -t urls < <(sed -n 's/^  url:[[:space:]]*//p' "$file" | sed 's/[[:space:]]#.*//; s/[[:space:]]*$//' | tr -d "\"'")
[ "${#urls[@]}" -eq 1 ] \
  || { echo "::error file=$shown::expected one url: line under data:, found ${#urls[@]}" >&2; exit 1; }
argocd_url=${urls[0]}
ours=$(normalise "$url") || { echo "::error::cannot read the URL $url" >&2; exit 1; }
theirs=$(normalise "$argocd_url") \
  || { echo "::error file=$shown::not a git URL of OWNER/NAME: '$argocd_url'" >&2; exit 1; }
if [ "$ours" != "$theirs" ]; then
  message="CD would publish the manifests to $url (the variable MANIFESTS_REPOSITORY: ${MANIFESTS_REPOSITORY:-unset, so OWNER/libertum-manifests}), but Argo CD deploys from $argocd_url ($shown at this commit). Make them name the same repository: set the repository variable MANIFESTS_REPOSITORY, or url in $shown (deploy/argocd/README.md, \"The manifests repository\")."
  echo "::error file=$shown::$message" >&2
  if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
    printf '## The manifests repository is named twice, differently\n\n%s\n' "$message" >>"$GITHUB_STEP_SUMMARY"
  fi
  exit 1
fi

echo "repository=$repository"
echo "owner=${repository%%/*}"
echo "name=${repository#*/}"
echo "self=$self"
echo "auth=$auth"
echo "url=$url"
