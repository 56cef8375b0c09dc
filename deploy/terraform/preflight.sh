#!/usr/bin/env bash
# Checks an Azure subscription before the first `terraform apply` of an environment, and says
# what to do about each problem: the Azure CLI's login and subscription, the resource providers,
# the EncryptionAtHost feature, the region's Network Watcher (which the flow logs need), whether
# Defender for Containers may be switched on by this environment, the vCPU quota of the VM sizes
# the variables use, and whether the globally unique names derived from name_prefix are valid and
# free (or already this subscription's). Read-only: it changes nothing.
#
#   cd deploy/terraform && ./preflight.sh -var-file=dev.tfvars [-var-file=...]
#
# Reads the variables the way Terraform does, for the settings it checks: the defaults of
# variables.tf, TF_VAR_* variables, terraform.tfvars and *.auto.tfvars in this directory, then
# each -var-file in order (simple `name = value` lines and the node counts' { min, max } objects;
# a variable set any other way is not seen). Needs az and jq. Prints one PASS or FAIL line per
# check and exits 1 if any failed.
#
#   ./preflight.sh --print-config -var-file=...   the settings it would check, KEY=VALUE, no Azure
#   ./preflight.sh --names-only -var-file=...     only the offline checks of the derived names
set -euo pipefail

# The defaults of variables.tf (deploy/terraform/test_preflight.py checks that they agree).
declare -A cfg=(
  [name_prefix]=""
  [environment]=""
  [location]="westeurope"
  [subscription_id]=""
  [backend_vm_enabled]="true"
  [backend_vm_size]="Standard_D2ls_v5"
  [backend_vm_zone]="1"
  [aks_node_vm_size]="Standard_D2s_v5"
  [aks_zones]="1 2 3"
  [aks_system_node_count_max]="3"
  [aks_user_node_count_max]="6"
  [flow_logs_enabled]="true"
  [network_watcher_name]=""
  [network_watcher_resource_group_name]="NetworkWatcherRG"
  [defender_for_containers_enabled]="false"
)
# Node pools surge by this much during upgrades (aks.tf: max_surge = "33%").
surge_percent=33

failures=0
pass() { printf 'PASS  %s\n' "$*"; }
fail() {
  printf 'FAIL  %s\n' "$1"
  shift
  local line
  for line in "$@"; do printf '      %s\n' "$line"; done
  failures=$((failures + 1))
}

# --- Variables -------------------------------------------------------------------------------

strip_value() { # a value as written in a .tfvars line, without quotes, comment or spaces
  local v=$1
  v=${v%%#*}
  v=${v%"${v##*[![:space:]]}"}
  v=${v#"${v%%[![:space:]]*}"}
  v=${v#\"}
  v=${v%\"}
  printf '%s' "$v"
}

read_var_file() {
  local file=$1 line name rest object="" zones
  [ -f "$file" ] || { echo "preflight: no such variables file: $file" >&2; exit 2; }
  while IFS= read -r line || [ -n "$line" ]; do
    if [ -n "$object" ]; then # inside `name = {` ... `}` spread over lines
      rest+=" $line"
      if [[ $line == *"}"* ]]; then
        set_object "$object" "$rest"
        object=""
      fi
      continue
    fi
    [[ $line =~ ^[[:space:]]*([a-z_]+)[[:space:]]*=[[:space:]]*(.*)$ ]] || continue
    name=${BASH_REMATCH[1]}
    rest=${BASH_REMATCH[2]}
    case $name in
      aks_system_node_count | aks_user_node_count)
        if [[ $rest == *"}"* ]]; then set_object "$name" "$rest"; else object=$name; fi
        ;;
      aks_zones)
        rest=${rest%%#*}
        read -ra zones <<<"${rest//[\[\]\",]/ }"
        cfg[aks_zones]="${zones[*]}"
        ;;
      name_prefix | environment | location | subscription_id | backend_vm_enabled | backend_vm_size | backend_vm_zone | \
        aks_node_vm_size | flow_logs_enabled | network_watcher_name | network_watcher_resource_group_name | defender_for_containers_enabled)
        cfg[$name]=$(strip_value "$rest")
        [ "${cfg[$name]}" != null ] || cfg[$name]=""
        ;;
    esac
  done <"$file"
}

set_object() { # NAME TEXT: the max of `{ min = 2, max = 6 }`
  local max
  max=$(grep -oE 'max[[:space:]]*=[[:space:]]*[0-9]+' <<<"$2" | grep -oE '[0-9]+$' || true)
  [ -z "$max" ] || cfg[${1}_max]=$max
}

var_files=()
mode=check
while [ $# -gt 0 ]; do
  case $1 in
    -var-file=* | --var-file=*) var_files+=("${1#*=}") ;;
    -var-file | --var-file | -f)
      [ $# -ge 2 ] || { echo "preflight: $1 needs a file" >&2; exit 2; }
      var_files+=("$2")
      shift
      ;;
    --print-config) mode=print ;;
    --names-only) mode=names ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *) echo "preflight: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

for name in name_prefix environment location subscription_id backend_vm_enabled backend_vm_size backend_vm_zone aks_node_vm_size \
  flow_logs_enabled network_watcher_name network_watcher_resource_group_name defender_for_containers_enabled; do
  env_name="TF_VAR_$name"
  [ -z "${!env_name:-}" ] || cfg[$name]=${!env_name}
done
for file in terraform.tfvars *.auto.tfvars; do
  [ ! -f "$file" ] || read_var_file "$file"
done
for file in "${var_files[@]}"; do read_var_file "$file"; done

# The derived names: main.tf's locals and backend.hcl.example's state account.
acr_name="${cfg[name_prefix]}${cfg[environment]}acr"
key_vault_name="${cfg[name_prefix]}-${cfg[environment]}-kv"
storage_name="${cfg[name_prefix]}${cfg[environment]}st"
state_name="${cfg[name_prefix]}tfstate"

if [ $mode = print ]; then
  for key in $(printf '%s\n' "${!cfg[@]}" | sort); do printf '%s=%s\n' "$key" "${cfg[$key]}"; done
  printf 'acr_name=%s\nkey_vault_name=%s\nstorage_account_name=%s\nstate_storage_account_name=%s\n' \
    "$acr_name" "$key_vault_name" "$storage_name" "$state_name"
  exit 0
fi

# --- Names, offline --------------------------------------------------------------------------

names_ok=yes
if [[ ! ${cfg[name_prefix]} =~ ^[a-z][a-z0-9]{1,11}$ ]]; then
  fail "name_prefix \"${cfg[name_prefix]}\": 2-12 lowercase letters or digits, starting with a letter" \
    "set name_prefix in the variables file to a short name nobody else uses (an organisation's)"
  names_ok=no
fi
if [[ ! ${cfg[environment]} =~ ^[a-z][a-z0-9]{1,7}$ ]]; then
  fail "environment \"${cfg[environment]}\": 2-8 lowercase letters or digits, starting with a letter" \
    "set environment (dev, prod, ...) in the variables file"
  names_ok=no
fi
check_format() { # KIND NAME REGEX RULE
  if [[ $2 =~ $3 ]]; then
    pass "$1 name $2 is well formed"
  else
    fail "$1 name $2 is not valid: $4" "shorten name_prefix or environment"
    names_ok=no
  fi
}
if [ $names_ok = yes ]; then
  check_format "registry" "$acr_name" '^[a-z0-9]{5,50}$' "5-50 letters or digits"
  check_format "Key Vault" "$key_vault_name" '^[a-z][a-z0-9-]{1,22}[a-z0-9]$' "3-24 letters, digits or hyphens, starting with a letter"
  check_format "storage account" "$storage_name" '^[a-z0-9]{3,24}$' "3-24 lowercase letters or digits"
  check_format "state storage account" "$state_name" '^[a-z0-9]{3,24}$' "3-24 lowercase letters or digits"
fi

if [ $mode = names ]; then
  [ $failures -eq 0 ] || { echo "preflight: $failures check(s) failed"; exit 1; }
  echo "preflight: the names are well formed (availability needs Azure: run without --names-only)"
  exit 0
fi

# --- Azure -----------------------------------------------------------------------------------

for tool in az jq; do
  command -v "$tool" >/dev/null 2>&1 || { echo "preflight: $tool is needed on PATH" >&2; exit 2; }
done

if ! account=$(az account show --output json 2>/dev/null); then
  fail "the Azure CLI is not logged in" "run az login (and az account set --subscription <id>), then this again"
  echo "preflight: $failures check(s) failed"
  exit 1
fi
subscription=$(jq -r '.id' <<<"$account")
pass "logged in as $(jq -r '.user.name' <<<"$account") on subscription $(jq -r '.name' <<<"$account") ($subscription)"
if [ -n "${cfg[subscription_id]}" ] && [ "${cfg[subscription_id]}" != "$subscription" ]; then
  fail "the variables name subscription ${cfg[subscription_id]}, the Azure CLI is on $subscription" \
    "az account set --subscription ${cfg[subscription_id]}"
fi
if [ -n "${ARM_SUBSCRIPTION_ID:-}" ] && [ "$ARM_SUBSCRIPTION_ID" != "$subscription" ]; then
  fail "ARM_SUBSCRIPTION_ID is $ARM_SUBSCRIPTION_ID, the Azure CLI is on $subscription" \
    "Terraform would deploy into ARM_SUBSCRIPTION_ID: az account set --subscription $ARM_SUBSCRIPTION_ID, or unset it"
fi

# Resource providers (README.md, "Before the first apply").
providers=(Microsoft.Compute Microsoft.ContainerService Microsoft.ContainerRegistry Microsoft.KeyVault
  Microsoft.Network Microsoft.Storage Microsoft.OperationalInsights Microsoft.Insights Microsoft.Monitor
  Microsoft.AlertsManagement Microsoft.ManagedIdentity Microsoft.PolicyInsights Microsoft.Security)
registered=$(az provider list --query "[?registrationState=='Registered'].namespace" --output json)
missing=()
for rp in "${providers[@]}"; do
  jq -e --arg rp "$rp" 'map(ascii_downcase) | index($rp | ascii_downcase) != null' <<<"$registered" >/dev/null ||
    missing+=("$rp")
done
if [ ${#missing[@]} -eq 0 ]; then
  pass "the ${#providers[@]} resource providers are registered"
else
  fail "resource providers not registered: ${missing[*]}" \
    "for rp in ${missing[*]}; do az provider register --namespace \$rp; done"
fi

# Host encryption of the nodes and the backend VM.
feature=$(az feature show --namespace Microsoft.Compute --name EncryptionAtHost --query properties.state --output tsv 2>/dev/null || echo NotRegistered)
if [ "$feature" = Registered ]; then
  pass "the feature Microsoft.Compute/EncryptionAtHost is registered"
else
  fail "the feature Microsoft.Compute/EncryptionAtHost is ${feature:-NotRegistered}" \
    "az feature register --namespace Microsoft.Compute --name EncryptionAtHost" \
    "wait until az feature show --namespace Microsoft.Compute --name EncryptionAtHost --query properties.state says Registered (minutes to an hour)" \
    "then az provider register --namespace Microsoft.Compute"
fi

# --- Network Watcher, Defender for Containers ------------------------------------------------

# The flow log (flowlogs.tf) belongs to the region's Network Watcher, which the module does not
# create: Azure makes one with a region's first VNet, unless the subscription opted out.
region=${cfg[location],,}
region=${region// /}
if [ "${cfg[flow_logs_enabled]}" = true ]; then
  watcher_group=${cfg[network_watcher_resource_group_name]}
  watcher_name=${cfg[network_watcher_name]:-NetworkWatcher_$region}
  watchers=$(az network watcher list --query "[?location=='$region']" --output json)
  if [ "$(jq length <<<"$watchers")" -eq 0 ]; then
    fail "no Network Watcher in $region, and the flow logs (flow_logs_enabled) need one" \
      "az group create --name $watcher_group --location $region" \
      "az network watcher configure --locations $region --enabled true --resource-group $watcher_group" \
      "or set flow_logs_enabled = false"
  elif jq -e --arg n "$watcher_name" --arg g "$watcher_group" \
    'any(.[]; (.name | ascii_downcase) == ($n | ascii_downcase) and (.resourceGroup | ascii_downcase) == ($g | ascii_downcase))' \
    <<<"$watchers" >/dev/null; then
    pass "the Network Watcher $watcher_name ($watcher_group) exists in $region, for the flow logs"
  else
    fail "the Network Watcher of $region is $(jq -r 'first | "\(.name) in \(.resourceGroup)"' <<<"$watchers"), not $watcher_name in $watcher_group" \
      "set network_watcher_name and network_watcher_resource_group_name in the variables file to that one"
  fi
else
  pass "flow_logs_enabled is false: no Network Watcher needed"
fi

# azurerm creates the subscription-wide Defender for Containers plan only from the Free tier: a
# plan already on (another environment's, or set by hand) stops the apply, asking for an import.
if [ "${cfg[defender_for_containers_enabled]}" = true ]; then
  tier=$(az security pricing show --name Containers --query pricingTier --output tsv 2>/dev/null) || tier=""
  case $tier in
    Free) pass "Defender for Containers is Free on this subscription: this environment turns it on (defender_for_containers_enabled)" ;;
    Standard)
      fail "Defender for Containers is on already in this subscription, and defender_for_containers_enabled is true: the apply would stop (azurerm creates the plan only from Free)" \
        "set defender_for_containers_enabled=false (it is on already), or terraform import 'azurerm_security_center_subscription_pricing.containers[0]' /subscriptions/$subscription/providers/Microsoft.Security/pricings/Containers" \
        "(after this environment's own first apply, which created it, this FAIL is expected: its state holds the plan)"
      ;;
    *)
      fail "could not read the Defender for Containers plan (az security pricing show --name Containers)${tier:+: $tier}" \
        "register Microsoft.Security (above), and check that you may read Defender for Cloud's settings"
      ;;
  esac
else
  pass "defender_for_containers_enabled is false: the subscription's Defender for Containers plan is left as it is"
fi

# --- vCPU quota ------------------------------------------------------------------------------

location=${cfg[location]}
usage=$(az vm list-usage --location "$location" --output json)
declare -A family_need=() family_sizes=()
total_need=0

size_info() { # SIZE -> JSON {family, vcpus, restricted, zones_restricted}
  az vm list-skus --location "$location" --size "$1" --resource-type virtualMachines --all --output json |
    jq -c --arg size "$1" '
      map(select(.name | ascii_downcase == ($size | ascii_downcase))) | first // empty |
      { family: .family,
        vcpus: ((.capabilities // []) | map(select(.name == "vCPUs")) | first | .value // "0" | tonumber),
        restricted: ((.restrictions // []) | map(select(.type == "Location")) | length > 0),
        zones_restricted: ((.restrictions // []) | map(select(.type == "Zone") | .restrictionInfo.zones // []) | add // []) }'
}

ceil_percent() { echo $((($1 * $2 + 99) / 100)); } # ceil(N * P / 100)

need_size() { # ROLE SIZE NODES ZONES...
  local role=$1 size=$2 nodes=$3 info family vcpus zone
  shift 3
  info=$(size_info "$size")
  if [ -z "$info" ]; then
    fail "$role: the size $size does not exist in $location" \
      "choose another size (az vm list-skus --location $location --resource-type virtualMachines --output table)"
    return
  fi
  if [ "$(jq -r .restricted <<<"$info")" = true ]; then
    fail "$role: $size is not available to this subscription in $location" \
      "request access (a support request, quota type \"Region access\") or choose another size or region"
    return
  fi
  for zone in "$@"; do
    if jq -e --arg z "$zone" '.zones_restricted | index($z) != null' <<<"$info" >/dev/null; then
      fail "$role: $size is not offered in zone $zone of $location" "choose other zones or another size"
    fi
  done
  family=$(jq -r .family <<<"$info")
  vcpus=$(jq -r .vcpus <<<"$info")
  family_need[$family]=$((${family_need[$family]:-0} + nodes * vcpus))
  family_sizes[$family]="${family_sizes[$family]:+${family_sizes[$family]}, }$role $nodes x $size"
  total_need=$((total_need + nodes * vcpus))
}

# shellcheck disable=SC2086 # the zones are a space-separated list
{
  system=${cfg[aks_system_node_count_max]}
  user=${cfg[aks_user_node_count_max]}
  need_size "AKS node pools" "${cfg[aks_node_vm_size]}" \
    $((system + $(ceil_percent "$system" $surge_percent) + user + $(ceil_percent "$user" $surge_percent))) ${cfg[aks_zones]}
  # An environment without the backend VM (preview) needs no room for it.
  [ "${cfg[backend_vm_enabled]}" = false ] || need_size "backend VM" "${cfg[backend_vm_size]}" 1 ${cfg[backend_vm_zone]}
}

check_quota() { # USAGE-NAME NEED WHAT
  local entry current limit
  entry=$(jq -c --arg n "$1" 'map(select(.name.value | ascii_downcase == ($n | ascii_downcase))) | first // empty' <<<"$usage")
  if [ -z "$entry" ]; then
    fail "no quota named $1 in $location" "check the size and region (az vm list-usage --location $location --output table)"
    return
  fi
  current=$(jq -r '.currentValue | tonumber' <<<"$entry")
  limit=$(jq -r '.limit | tonumber' <<<"$entry")
  if [ $((current + $2)) -le "$limit" ]; then
    pass "quota $1 in $location: $2 vCPUs needed ($3), $((limit - current)) of $limit free"
  else
    fail "quota $1 in $location: $2 vCPUs needed ($3), only $((limit - current)) of $limit free" \
      "request an increase to at least $((current + $2)) in the portal (Quotas > Compute, $location)" \
      "or lower the node counts' max or choose smaller sizes"
  fi
}

for family in $(printf '%s\n' "${!family_need[@]}" | sort); do
  check_quota "$family" "${family_need[$family]}" "${family_sizes[$family]} at most, upgrades' surge included"
done
[ $total_need -eq 0 ] || check_quota cores "$total_need" "all sizes together"

# --- Names, online ---------------------------------------------------------------------------

# A taken name is fine when it is this subscription's own resource (a second run, or the state
# account made by hand); otherwise someone else in Azure holds it.
check_available() { # KIND NAME AVAILABLE(true/false) MESSAGE OURS(yes/no/deleted)
  if [ "$3" = true ]; then
    pass "$1 name $2 is free"
  elif [ "$5" = yes ]; then
    pass "$1 name $2 already exists in this subscription (an earlier apply, or made for this purpose)"
  elif [ "$5" = deleted ]; then
    pass "$1 name $2 is a soft-deleted vault of this subscription: the apply recovers it (purge protection keeps it until its retention ends)"
  else
    fail "$1 name $2 is taken outside this subscription${4:+: $4}" \
      "choose another name_prefix (every derived name changes with it), and change backend.hcl to match"
  fi
}

if [ $names_ok = yes ]; then
  result=$(az acr check-name --name "$acr_name" --output json)
  ours=no
  [ "$(jq -r .nameAvailable <<<"$result")" = true ] || ! az acr show --name "$acr_name" --query id --output tsv >/dev/null 2>&1 || ours=yes
  check_available "registry" "$acr_name" "$(jq -r .nameAvailable <<<"$result")" "$(jq -r '.message // empty' <<<"$result")" $ours

  result=$(az rest --method post \
    --url "https://management.azure.com/subscriptions/$subscription/providers/Microsoft.KeyVault/checkNameAvailability?api-version=2023-07-01" \
    --body "{\"name\": \"$key_vault_name\", \"type\": \"Microsoft.KeyVault/vaults\"}" --output json)
  ours=no
  if [ "$(jq -r .nameAvailable <<<"$result")" != true ]; then
    if az keyvault show --name "$key_vault_name" --query id --output tsv >/dev/null 2>&1; then
      ours=yes
    elif az keyvault list-deleted --resource-type vault --output json |
      jq -e --arg n "$key_vault_name" 'map(.name | ascii_downcase) | index($n) != null' >/dev/null; then
      ours=deleted
    fi
  fi
  check_available "Key Vault" "$key_vault_name" "$(jq -r .nameAvailable <<<"$result")" "$(jq -r '.message // empty' <<<"$result")" $ours

  for name in "$storage_name" "$state_name"; do
    result=$(az storage account check-name --name "$name" --output json)
    ours=no
    [ "$(jq -r .nameAvailable <<<"$result")" = true ] || ! az storage account show --name "$name" --query id --output tsv >/dev/null 2>&1 || ours=yes
    kind="storage account"
    [ "$name" != "$state_name" ] || kind="state storage account"
    check_available "$kind" "$name" "$(jq -r .nameAvailable <<<"$result")" "$(jq -r '.message // empty' <<<"$result")" $ours
  done
fi

if [ $failures -gt 0 ]; then
  echo "preflight: $failures check(s) failed"
  exit 1
fi
echo "preflight: every check passed"
