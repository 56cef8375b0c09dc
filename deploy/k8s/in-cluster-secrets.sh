#!/usr/bin/env bash
# Makes the Secrets of an environment whose Kafka, MongoDB and Redis run in the cluster
# (deploy/k8s/components/in-cluster-backends, e.g. the preview overlay), with kubectl's current
# context. Nothing of it is in git. Run it once per cluster, before or after the first Argo CD
# sync (pods wait for their Secrets, then start):
#
#   deploy/k8s/in-cluster-secrets.sh [NAMESPACE]        (default: libertum)
#
# On a private cluster, through Azure:
#   az aks command invoke -g <rg> -n <aks> --file deploy/k8s/in-cluster-secrets.sh \
#     --command "bash in-cluster-secrets.sh"
#
#   mongodb            keyfile (the members' shared key), admin-password, app-password,
#                      backup-password: MongoDB's users, created by the replset container
#   redis              auth.conf: Redis's requirepass line
#   libertum-backends  mongodb-uri, redis-url: the services' LIBERTUM_MONGODB_URI and
#                      LIBERTUM_REDIS_URL (user libertum)
#   mongodb-backup     mongodb-backup-uri: the backup CronJob's login (user backup, read-only)
#
# Random values are made only when the Secret mongodb (or redis) does not exist yet; otherwise
# its values are read back, so running the script again only rewrites the two derived Secrets.
# To change a password: delete the Secret, run this again, restart the pods (kubectl rollout
# restart statefulset/mongodb statefulset/redis deployment -l app.kubernetes.io/component=api).
# Passwords never appear on a command line: kubectl reads them from files in a private
# temporary directory, removed on exit.
set -euo pipefail

ns=${1:-libertum}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 700 "$work"

random_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
exists() { kubectl -n "$ns" get secret "$1" >/dev/null 2>&1; }
# read_key SECRET KEY FILE: the key's value into FILE.
read_key() {
  kubectl -n "$ns" get secret "$1" -o go-template="{{index .data \"$2\" | base64decode}}" >"$3"
  [ -s "$3" ] || { echo "the Secret $1 has no $2: delete it and run this again" >&2; exit 1; }
}
# apply SECRET FILE...: creates or updates a generic Secret whose keys are the files' names.
apply() {
  local name=$1 args=()
  shift
  for file in "$@"; do args+=(--from-file="$file"); done
  kubectl -n "$ns" create secret generic "$name" "${args[@]}" --dry-run=client -o yaml |
    kubectl -n "$ns" apply -f - >/dev/null
  echo "in-cluster-secrets: $ns/$name"
}

kubectl get namespace "$ns" >/dev/null 2>&1 || kubectl create namespace "$ns"

mkdir "$work/mongodb" "$work/redis" "$work/libertum-backends" "$work/mongodb-backup"
m=$work/mongodb
if exists mongodb; then
  for key in keyfile admin-password app-password backup-password; do read_key mongodb "$key" "$m/$key"; done
else
  # A key file: base64 characters, 6 to 1024 of them (MongoDB's rule); 756 bytes give 1008.
  head -c 756 /dev/urandom | base64 | tr -d '\n' >"$m/keyfile"
  # Hexadecimal passwords need no escaping in a URI.
  for key in admin-password app-password backup-password; do random_hex 24 >"$m/$key"; done
  apply mongodb "$m/keyfile" "$m/admin-password" "$m/app-password" "$m/backup-password"
fi

r=$work/redis
if exists redis; then
  read_key redis auth.conf "$r/auth.conf"
  redis_password=$(sed -n 's/^requirepass \([0-9a-f]*\)$/\1/p' "$r/auth.conf")
  [ -n "$redis_password" ] || { echo "the Secret redis has no requirepass line" >&2; exit 1; }
else
  redis_password=$(random_hex 24)
  printf 'requirepass %s\n' "$redis_password" >"$r/auth.conf"
  apply redis "$r/auth.conf"
fi

# The replica set's members, as the services' and the backup's URIs name them.
domain=mongodb.$ns.svc.cluster.local
hosts=mongodb-0.$domain:27017,mongodb-1.$domain:27017,mongodb-2.$domain:27017
printf 'mongodb://libertum:%s@%s/?replicaSet=rs0&authSource=admin' \
  "$(cat "$m/app-password")" "$hosts" >"$work/libertum-backends/mongodb-uri"
printf 'redis://:%s@redis.%s.svc.cluster.local:6379' \
  "$redis_password" "$ns" >"$work/libertum-backends/redis-url"
apply libertum-backends "$work/libertum-backends/mongodb-uri" "$work/libertum-backends/redis-url"
printf 'mongodb://backup:%s@%s/?replicaSet=rs0&authSource=admin' \
  "$(cat "$m/backup-password")" "$hosts" >"$work/mongodb-backup/mongodb-backup-uri"
apply mongodb-backup "$work/mongodb-backup/mongodb-backup-uri"
