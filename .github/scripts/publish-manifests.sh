#!/usr/bin/env bash
# CD's last step: publishes the Kubernetes manifests to the manifests repository Argo CD deploys
# from, with one environment's overlay pointed at the images of one commit, proves that the
# rendered overlay uses exactly those images, and commits and pushes that.
#
#   .github/scripts/publish-manifests.sh ENVIRONMENT REGISTRY COMMIT [--forward-only] [--tags-only]
#
# Run it from a checkout of this repository (the source). ENVIRONMENT is an overlay under
# deploy/k8s/overlays; REGISTRY the ACR login server (libertumdevacr.azurecr.io); COMMIT the full
# SHA the images were built from (tag sha-<COMMIT>, which CD locks in the registry).
# --forward-only (dev): do nothing when the overlay already names a newer commit, so that a CD
# run that finishes late never rolls dev back. Promotion to prod may go back on purpose.
# --tags-only (promotion to prod or preview): change the tags alone, not deploy/k8s; the
# manifests come only from the commits dev deployed, each of which passed CI.
#
# Environment:
#   MANIFESTS_URL     the manifests repository, as git clones it (https://github.com/o/r.git,
#                     git@github.com:o/r.git, file:///srv/manifests.git)
#   MANIFESTS_SELF    true when that is this repository itself: its deploy/k8s is then already
#                     the source's, and only the environment's image tags change
#   MANIFESTS_BRANCH  the branch Argo CD follows (default main)
#
# A separate manifests repository holds deploy/k8s at the same path as here (so Argo CD's
# Applications name the same path either way), the file SOURCE_COMMIT (the commit of this
# repository its deploy/k8s was copied from) and a README. Each run replaces its deploy/k8s with
# the source commit's (git archive: committed files only), keeps every overlay's image tags as
# they were there, then sets ENVIRONMENT's. The tree only moves forward: when SOURCE_COMMIT is
# not an ancestor of the source commit (a newer run published already), the tree stays and only
# the tags change. An empty repository is fine: the first run creates the branch.
#
# The commit is made as whoever git's configuration or GIT_AUTHOR_*/GIT_COMMITTER_* name, and
# pushed with the credentials git has (in CD: as-cd-app.sh or as-deploy-key.sh). When the push is
# refused because the branch moved, the whole edit is redone on the new tip (a rebase that cannot
# conflict), up to 5 times. The commit says [skip ci]: a push by the App would otherwise start CI.
set -euo pipefail

[ $# -ge 3 ] || { sed -n '2,33p' "$0" >&2; exit 2; }
environment=$1 registry=$2 commit=$3 forward_only='' tags_only=''
shift 3
for option in "$@"; do
  case $option in
    --forward-only) forward_only=$option ;;
    --tags-only) tags_only=$option ;;
    *) echo "unknown option: $option" >&2; exit 2 ;;
  esac
done
[[ $commit =~ ^[0-9a-f]{40}$ ]] || { echo "not a full commit SHA: $commit" >&2; exit 2; }
[[ $environment =~ ^[a-z0-9][a-z0-9-]*$ ]] || { echo "not an environment name: $environment" >&2; exit 2; }
: "${MANIFESTS_URL:?the manifests repository to push to}"
self=${MANIFESTS_SELF:-false} branch=${MANIFESTS_BRANCH:-main}
case $self in true | false) ;; *) echo "MANIFESTS_SELF is true or false, not $self" >&2; exit 2 ;; esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source=$(git rev-parse --show-toplevel)
source_commit=$(git -C "$source" rev-parse HEAD)
source_name="${GITHUB_SERVER_URL:-}${GITHUB_SERVER_URL:+/}${GITHUB_REPOSITORY:-$(basename "$source")}"
overlay=deploy/k8s/overlays/$environment
file=$overlay/kustomization.yaml
tag=sha-$commit
repositories=(libertum libertum-backup)
retry_seconds=${PUBLISH_RETRY_SECONDS:-5}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

set_tag() { python3 "$here/set-image-tag.py" "$@"; }

# Whether $1 (a commit) is known to the source checkout or the clone; prints its full SHA.
known() {
  git -C "$source" rev-parse --quiet --verify "$1^{commit}" 2>/dev/null \
    || git rev-parse --quiet --verify "$1^{commit}" 2>/dev/null
}

# Whether the commit $1 is $2 or an ancestor of it, in the source checkout or the clone.
ancestor() {
  git -C "$source" merge-base --is-ancestor "$1" "$2" 2>/dev/null \
    || git merge-base --is-ancestor "$1" "$2" 2>/dev/null
}

# The clone's overlays' current image tags, as lines "FILE REPOSITORY TAG".
current_tags() {
  local f repository t
  for f in deploy/k8s/overlays/*/kustomization.yaml; do
    [ -f "$f" ] || continue
    for repository in "${repositories[@]}"; do
      t=$(set_tag "$f" "$repository")
      [ -z "$t" ] || echo "$f $repository $t"
    done
  done
}

# Replaces the clone's deploy/k8s with the source commit's, keeping the overlays' image tags.
copy_tree() {
  local kept f repository t
  kept=$(current_tags)
  rm -rf deploy/k8s
  git -C "$source" archive --format=tar "$source_commit" deploy/k8s | tar -xf -
  while read -r f repository t; do
    if [ -z "$f" ] || [ ! -f "$f" ]; then continue; fi
    set_tag "$f" "$repository" "$t" || [ $? -eq 3 ]  # 3: the new tree has no such entry
  done <<<"$kept"
  echo "$source_commit" >SOURCE_COMMIT
  [ -f README.md ] || cat >README.md <<EOF
# Libertum's Kubernetes manifests

Argo CD deploys \`deploy/k8s/overlays/<environment>\` from this repository's \`$branch\`.
CD writes it (.github/scripts/publish-manifests.sh in $source_name): \`deploy/k8s\` is a copy
of that repository's, at the commit in \`SOURCE_COMMIT\`, with the image tags CD set. Change the
manifests there, not here; roll back by reverting CD's commit here.
EOF
}

cd "$work"
git init --quiet
git remote add origin "$MANIFESTS_URL"
for attempt in 1 2 3 4 5; do
  # From the branch as it is now, every attempt: another CD run or a person may have pushed.
  if [ -n "$(git ls-remote --heads origin "refs/heads/$branch")" ]; then
    git fetch --quiet origin "+refs/heads/$branch:refs/remotes/origin/$branch"
    git checkout --quiet --force -B "$branch" "origin/$branch"
    git clean --quiet -dffx
    parent=yes
  elif [ "$self" = true ]; then
    echo "$MANIFESTS_URL has no branch $branch" >&2; exit 1
  else
    # An empty repository: the first commit starts the branch.
    git symbolic-ref HEAD "refs/heads/$branch"
    git update-ref -d "refs/heads/$branch"
    git read-tree --empty
    git clean --quiet -dffx
    parent=no
  fi

  if [ "$forward_only" = --forward-only ] && [ -f "$file" ]; then
    current=$(set_tag "$file" libertum)
    if deployed=$(known "${current#sha-}") && [ "$deployed" != "$commit" ] \
       && ancestor "$commit" "$deployed"; then
      echo "$environment already runs $current, a descendant of $commit: nothing to do"
      exit 0
    fi
  fi

  tree=unchanged
  if [ "$self" = false ] && [ -z "$tags_only" ]; then
    published=$(cat SOURCE_COMMIT 2>/dev/null || true)
    if [ -z "$published" ] || ancestor "$published" "$source_commit"; then
      copy_tree
      tree=copied
    else
      echo "the manifests come from $published, not an ancestor of $source_commit: only the tags change"
    fi
  fi
  [ -f "$file" ] || { echo "no overlay $file in $MANIFESTS_URL${tags_only:+ (--tags-only: a dev run publishes the manifests first)}" >&2; exit 1; }

  for repository in "${repositories[@]}"; do
    set_tag "$file" "$repository" "$tag"
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

  git add --all
  if [ "$parent" = yes ] && git diff --cached --quiet; then
    echo "$environment already runs $tag, and the manifests are up to date"
    exit 0
  fi
  if [ "$tree" = copied ]; then
    from="Manifests: deploy/k8s of $source_name at $source_commit."
  else
    from="Manifests: unchanged."
  fi
  git commit --quiet \
    -m "deploy($environment): libertum $tag [skip ci]" \
    -m "Images $registry/{libertum,libertum-backup}:$tag, built from $commit." \
    -m "$from" \
    -m "Run: ${GITHUB_SERVER_URL:-}/${GITHUB_REPOSITORY:-}/actions/runs/${GITHUB_RUN_ID:-}"
  if git push --quiet origin "HEAD:refs/heads/$branch"; then
    echo "$environment now runs $tag ($(git rev-parse --short HEAD) on $branch of $MANIFESTS_URL)"
    exit 0
  fi
  echo "push refused ($branch moved?), attempt $attempt: redoing the edit on the new tip" >&2
  sleep $((attempt * retry_seconds))
done
echo "could not push the $environment overlay to $branch of $MANIFESTS_URL" >&2
exit 1
