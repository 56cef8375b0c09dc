#!/usr/bin/env bash
# CD's last step: points a Kustomize overlay at the images of one commit, proves that the rendered
# manifests use exactly those, and commits that to main, which Argo CD deploys from.
#
#   .github/scripts/set-overlay-images.sh ENVIRONMENT REGISTRY COMMIT [--forward-only]
#
# ENVIRONMENT is an overlay under deploy/k8s/overlays; REGISTRY the ACR login server
# (libertumdevacr.azurecr.io); COMMIT the full SHA the images were built from (tag sha-<COMMIT>,
# all 40 hex digits, which CD locks in the registry after pushing it).
# --forward-only (dev): do nothing when the overlay already names a newer commit, so that a CD
# run that finishes late never rolls dev back. Promotion to prod may go back on purpose.
# The commit is made as whoever git's configuration or GIT_AUTHOR_*/GIT_COMMITTER_* name, and
# pushed with the credentials git has for origin: in CD both are its GitHub App's (cd.yml says
# why and how main's ruleset must let that App, and only it, push). The commit says [skip ci]:
# unlike a push made with GITHUB_TOKEN, the App's push would otherwise start CI.
set -euo pipefail

[ $# -ge 3 ] || { sed -n '2,15p' "$0" >&2; exit 2; }
environment=$1 registry=$2 commit=$3 forward_only=${4:-}
[[ $commit =~ ^[0-9a-f]{40}$ ]] || { echo "not a full commit SHA: $commit" >&2; exit 2; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
overlay=deploy/k8s/overlays/$environment
file=$overlay/kustomization.yaml
tag=sha-$commit
repositories=(libertum libertum-backup)

for attempt in 1 2 3 4 5; do
  # From main as it is now, every attempt: another CD run or a person may have pushed meanwhile.
  git fetch --quiet origin main
  git checkout --quiet -B main origin/main
  [ -f "$file" ] || { echo "no overlay $file" >&2; exit 1; }

  if [ "$forward_only" = --forward-only ]; then
    current=$(python3 "$here/set-image-tag.py" "$file" libertum)
    if deployed=$(git rev-parse --quiet --verify "${current#sha-}^{commit}" 2>/dev/null) \
       && [ "$deployed" != "$commit" ] && git merge-base --is-ancestor "$commit" "$deployed"; then
      echo "$environment already runs $current, a descendant of $commit: nothing to do"
      exit 0
    fi
  fi

  for repository in "${repositories[@]}"; do
    python3 "$here/set-image-tag.py" "$file" "$repository" "$tag"
  done

  # The overlay's registry must be the one the images were pushed to, and every Deployment and
  # CronJob must end up on this tag (an images: entry that matches nothing changes nothing).
  rendered=$(kubectl kustomize "$overlay" | sed -n 's/^[ -]*image: *//p' | tr -d "\"'" | sort -u)
  for repository in "${repositories[@]}"; do
    want=$registry/$repository:$tag
    got=$(grep -E "/$repository:" <<<"$rendered" || true)
    if [ "$got" != "$want" ]; then
      echo "::error file=$file::$overlay renders $repository as '${got:-nothing}', not $want"
      exit 1
    fi
  done

  if git diff --quiet -- "$file"; then
    echo "$environment already runs $tag"
    exit 0
  fi
  git add -- "$file"
  git commit --quiet \
    -m "deploy($environment): libertum $tag [skip ci]" \
    -m "Images $registry/{libertum,libertum-backup}:$tag, built from $commit." \
    -m "Run: ${GITHUB_SERVER_URL:-}/${GITHUB_REPOSITORY:-}/actions/runs/${GITHUB_RUN_ID:-}"
  if git push --quiet origin HEAD:main; then
    echo "$environment now runs $tag ($(git rev-parse --short HEAD) on main)"
    exit 0
  fi
  echo "push refused (main moved?), attempt $attempt; trying again" >&2
  sleep $((attempt * 5))
done
echo "could not push the $environment overlay to main" >&2
exit 1
