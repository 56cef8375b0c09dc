#!/usr/bin/env bash
# Runs `terraform plan` or `terraform apply` from outside the VNet with Key Vault's firewall open
# to this machine's public address only for the run, in three steps:
#
#   1. open:  terraform apply -target=azurerm_key_vault.main -var=operator_ip_ranges=["<ip>"]
#             (on the first run this creates only the resource group and the vault), then wait
#             until the vault's firewall lets this address through;
#   2. run:   terraform plan|apply -var=operator_ip_ranges=["<ip>"] with your arguments: Terraform
#             reads and writes the secrets (mongodb-uri, ...) through the public endpoint;
#   3. close: terraform apply -target=azurerm_key_vault.main -var=operator_ip_ranges=[]
#             (public network access off again), also when step 2 fails.
#
#   cd deploy/terraform
#   ./kv-bootstrap.sh apply -var-file=dev.tfvars
#   ./kv-bootstrap.sh --ip 198.51.100.7 --yes apply -var-file=dev.tfvars -auto-approve
#
# Options: --ip ADDRESS (default: $OPERATOR_IP, else what https://api.ipify.org sees; give it when
# Azure sees another address, e.g. behind a proxy), --keep-open (skip step 3), --yes (approve
# steps 1 and 3 without asking; step 2 asks unless you pass -auto-approve yourself). Leave
# operator_ip_ranges unset in the variables files. A saved plan cannot be applied this way
# (Terraform refuses -var with a plan file): use `apply`, which shows the plan and asks.
#
# Without this script: run Terraform from a machine inside the VNet or a peered one (a
# self-hosted runner), with operator_ip_ranges empty; Key Vault is then reached through its
# private endpoint and its public endpoint stays off.
set -euo pipefail

ip=${OPERATOR_IP:-}
keep_open=no
approve=()
while [ $# -gt 0 ]; do
  case $1 in
    --ip)
      [ $# -ge 2 ] || { echo "kv-bootstrap: --ip needs an address" >&2; exit 2; }
      ip=$2
      shift
      ;;
    --keep-open) keep_open=yes ;;
    --yes) approve=(-auto-approve) ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    plan | apply) break ;;
    *) echo "kv-bootstrap: unknown argument $1: the command (plan or apply) comes before Terraform's arguments" >&2; exit 2 ;;
  esac
  shift
done
[ $# -ge 1 ] || { echo "usage: kv-bootstrap.sh [--ip ADDRESS] [--keep-open] [--yes] plan|apply [TERRAFORM ARGUMENTS...]" >&2; exit 2; }
command=$1
shift
for tool in terraform az jq curl; do
  command -v "$tool" >/dev/null 2>&1 || { echo "kv-bootstrap: $tool is needed on PATH" >&2; exit 2; }
done

# The variables (files) of the run also go to the open and close steps: the vault's other
# settings come from them.
var_args=()
for arg in "$@"; do
  case $arg in -var-file=* | -var=*) var_args+=("$arg") ;; esac
done
for arg in "$@"; do
  case $arg in
    -var-file | -var) echo "kv-bootstrap: write $arg=VALUE (one argument), so that the open and close steps get it too" >&2; exit 2 ;;
    *.tfplan) echo "kv-bootstrap: a saved plan cannot take the vault's address (-var): use apply without it" >&2; exit 2 ;;
  esac
done

if [ -z "$ip" ]; then
  ip=$(curl -fsS --max-time 10 https://api.ipify.org) ||
    { echo "kv-bootstrap: could not learn this machine's public address: give --ip" >&2; exit 1; }
fi
[[ $ip =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || { echo "kv-bootstrap: $ip is not an IPv4 address" >&2; exit 2; }

vault_access() { # apply the vault alone with operator_ip_ranges = $1
  terraform apply -target=azurerm_key_vault.main "${var_args[@]}" "-var=operator_ip_ranges=$1" "${approve[@]}"
}

close_vault() {
  echo "kv-bootstrap: closing Key Vault's public endpoint again"
  if ! vault_access '[]'; then
    echo "kv-bootstrap: WARNING: the vault is still open to $ip. Close it with:" >&2
    echo "  terraform apply -target=azurerm_key_vault.main ${var_args[*]} -var='operator_ip_ranges=[]'" >&2
    return 1
  fi
}

echo "kv-bootstrap: opening Key Vault's firewall to $ip"
vault_access "[\"$ip\"]"
[ "$keep_open" = yes ] || trap close_vault EXIT

# A firewall change takes a while to reach the vault's data plane. Until it has, a call from
# here is refused by the firewall; once it has, it succeeds, or on the first run is refused by
# RBAC (Terraform grants itself the secrets' role in step 2): either means the way is open.
vault=$(terraform show -json | jq -r '.values.root_module.resources[] | select(.address == "azurerm_key_vault.main") | .values.name')
[ -n "$vault" ] || { echo "kv-bootstrap: azurerm_key_vault.main is not in the state" >&2; exit 1; }
for attempt in $(seq 1 40); do
  if out=$(az keyvault secret list --vault-name "$vault" --maxresults 1 --output none 2>&1) ||
    [[ $out == *ForbiddenByRbac* ]]; then
    echo "kv-bootstrap: $vault answers $ip"
    break
  fi
  if [ "$attempt" = 40 ]; then
    echo "kv-bootstrap: $vault still refuses $ip after 10 minutes: $out" >&2
    echo "kv-bootstrap: is $ip the address Azure sees? Give the right one with --ip." >&2
    exit 1
  fi
  sleep 15
done

terraform "$command" "$@" "-var=operator_ip_ranges=[\"$ip\"]"
