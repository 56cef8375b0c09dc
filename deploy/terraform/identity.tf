# Managed identities and their role assignments:
#   - the AKS control plane and kubelet identities (created here so that their roles exist
#     before the cluster does: no race between the first image pull and the AcrPull assignment);
#   - one workload identity per Kubernetes service account (assets, tokens, ledger,
#     mongodb-backup), federated with the cluster's OIDC issuer. The services' three carry no
#     role here: the services call no Azure API themselves (with atlas_enabled, modules/atlas
#     lets each read its own Atlas connection string and redis-url, for the SecretProviderClass
#     deploy/k8s/components/atlas gives it). The backup's may write the backups
#     container and read one Key Vault secret, mongodb-backup-uri (MongoDB's backup role;
#     with atlas_enabled also Atlas's atlas-mongodb-backup-uri, modules/atlas);
#   - a Key Vault reader federated with the three services' service accounts, for the one
#     SecretProviderClass they share (deploy/k8s/base/secretproviderclass.yaml names one
#     clientID, and the CSI driver exchanges the token of whichever pod mounts it): it may read
#     mongodb-uri and redis-url, nothing else. The backup CronJob's own SecretProviderClass uses
#     the mongodb-backup identity;
#   - Loki's identity, federated with its service account (monitoring/loki by default), with
#     Storage Blob Data Contributor on the loki container only;
#   - the CD identity for GitHub Actions (AcrPush; for prod also the import), when
#     github_repository is set.
#
# The workloads' Key Vault roles are granted per secret (scope <vault id>/secrets/<name>), never
# on the vault: the vault also holds mongodb-admin-uri (MongoDB root), which no workload may
# read. The one role on the whole vault is the application routing add-on's (below).

# --- AKS -------------------------------------------------------------------------------------

resource "azurerm_user_assigned_identity" "aks_control_plane" {
  name                = "id-${local.name}-aks"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  tags                = local.tags
}

resource "azurerm_user_assigned_identity" "aks_kubelet" {
  name                = "id-${local.name}-aks-kubelet"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  tags                = local.tags
}

# The cloud provider joins load balancers and nodes to the subnets of this VNet, and
# userAssignedNATGateway makes AKS check the NAT gateway on the node subnet.
resource "azurerm_role_assignment" "aks_network" {
  scope                            = azurerm_virtual_network.main.id
  role_definition_name             = "Network Contributor"
  principal_id                     = azurerm_user_assigned_identity.aks_control_plane.principal_id
  skip_service_principal_aad_check = true
}

resource "azurerm_role_assignment" "aks_nat_gateway" {
  scope                            = azurerm_nat_gateway.main.id
  role_definition_name             = "Network Contributor"
  principal_id                     = azurerm_user_assigned_identity.aks_control_plane.principal_id
  skip_service_principal_aad_check = true
}

# Required for a control plane to hand a user-assigned kubelet identity to the nodes.
resource "azurerm_role_assignment" "aks_kubelet_operator" {
  scope                            = azurerm_user_assigned_identity.aks_kubelet.id
  role_definition_name             = "Managed Identity Operator"
  principal_id                     = azurerm_user_assigned_identity.aks_control_plane.principal_id
  skip_service_principal_aad_check = true
}

# The application routing add-on reads the ingress certificate (kubernetes.azure.com/
# tls-cert-keyvault-uri in deploy/k8s/base/ingress.yaml) with its own identity. On the vault,
# because the certificate exists only once an operator has imported it, after this apply; the
# role reads secrets too (secrets/getSecret/action), so this identity could read every secret
# (README "Known limits").
resource "azurerm_role_assignment" "app_routing_certificates" {
  scope                            = azurerm_key_vault.main.id
  role_definition_name             = "Key Vault Certificate User"
  principal_id                     = azurerm_kubernetes_cluster.main.web_app_routing[0].web_app_routing_identity[0].object_id
  skip_service_principal_aad_check = true
}

# --- Workload identities ---------------------------------------------------------------------

resource "azurerm_user_assigned_identity" "workload" {
  for_each            = toset(local.service_accounts)
  name                = "id-${local.name}-${each.key}"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  tags                = local.tags
}

resource "azurerm_federated_identity_credential" "workload" {
  for_each                  = toset(local.service_accounts)
  name                      = "aks-${var.kubernetes_namespace}-${each.key}"
  user_assigned_identity_id = azurerm_user_assigned_identity.workload[each.key].id
  audience                  = ["api://AzureADTokenExchange"]
  issuer                    = azurerm_kubernetes_cluster.main.oidc_issuer_url
  subject                   = "system:serviceaccount:${var.kubernetes_namespace}:${each.key}"
}

# The backup's MongoDB user (MongoDB's backup role: it reads, it cannot write), through the
# backup's SecretProviderClass (deploy/k8s/base/backup/secretproviderclass.yaml). Like every
# grant on a backend secret, only with the backend VM (backend_vm.tf), whose secrets they are.
resource "azurerm_role_assignment" "backup_key_vault" {
  count                            = local.backend_vm_count
  scope                            = azurerm_key_vault_secret.backend["mongodb-backup-uri"].resource_versionless_id
  role_definition_name             = "Key Vault Secrets User"
  principal_id                     = azurerm_user_assigned_identity.workload["mongodb-backup"].principal_id
  skip_service_principal_aad_check = true
}

# It had no count before backend_vm_enabled existed.
moved {
  from = azurerm_role_assignment.backup_key_vault
  to   = azurerm_role_assignment.backup_key_vault[0]
}

# Only while a restore runs on AKS (backup_restore_access = true): the services' user
# (readWrite on libertum_*), which a restore needs to write and which restore-job.yaml.example
# mounts through the SecretProviderClass mongodb-restore. Off again once the restore is done.
resource "azurerm_role_assignment" "backup_restore_key_vault" {
  count                            = var.backup_restore_access && var.backend_vm_enabled ? 1 : 0
  scope                            = azurerm_key_vault_secret.backend["mongodb-uri"].resource_versionless_id
  role_definition_name             = "Key Vault Secrets User"
  principal_id                     = azurerm_user_assigned_identity.workload["mongodb-backup"].principal_id
  skip_service_principal_aad_check = true
}

resource "azurerm_role_assignment" "backup_blob" {
  scope                            = azurerm_storage_container.backups.id
  role_definition_name             = "Storage Blob Data Contributor"
  principal_id                     = azurerm_user_assigned_identity.workload["mongodb-backup"].principal_id
  skip_service_principal_aad_check = true
}

# --- Loki ------------------------------------------------------------------------------------

# Loki (deploy/observability/loki) stores its chunks and index in the loki container with this
# identity: the chart's pod carries azure.workload.identity/use, its service account the client
# ID (output loki_client_id), and loki.yml sets use_federated_token.
resource "azurerm_user_assigned_identity" "loki" {
  name                = "id-${local.name}-loki"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  tags                = local.tags
}

resource "azurerm_federated_identity_credential" "loki" {
  name                      = "aks-${var.loki_service_account.namespace}-${var.loki_service_account.name}"
  user_assigned_identity_id = azurerm_user_assigned_identity.loki.id
  audience                  = ["api://AzureADTokenExchange"]
  issuer                    = azurerm_kubernetes_cluster.main.oidc_issuer_url
  subject                   = "system:serviceaccount:${var.loki_service_account.namespace}:${var.loki_service_account.name}"
}

resource "azurerm_role_assignment" "loki_blob" {
  scope                            = azurerm_storage_container.loki.id
  role_definition_name             = "Storage Blob Data Contributor"
  principal_id                     = azurerm_user_assigned_identity.loki.principal_id
  skip_service_principal_aad_check = true
}

# --- The shared Key Vault reader -------------------------------------------------------------

resource "azurerm_user_assigned_identity" "key_vault_reader" {
  name                = "id-${local.name}-kv-reader"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  tags                = local.tags
}

# The two secrets the services' SecretProviderClass asks for (none without the backend VM: the
# identity then reads nothing, and the in-cluster backends' overlay drops that class).
resource "azurerm_role_assignment" "key_vault_reader" {
  for_each = {
    for name in ["mongodb-uri", "redis-url"] :
    name => azurerm_key_vault_secret.backend[name].resource_versionless_id if var.backend_vm_enabled
  }
  scope                            = each.value
  role_definition_name             = "Key Vault Secrets User"
  principal_id                     = azurerm_user_assigned_identity.key_vault_reader.principal_id
  skip_service_principal_aad_check = true
}

# Azure refuses concurrent writes of federated credentials under one identity (409), so these
# three are chained rather than created with for_each.
resource "azurerm_federated_identity_credential" "key_vault_reader_assets" {
  name                      = "aks-${var.kubernetes_namespace}-assets"
  user_assigned_identity_id = azurerm_user_assigned_identity.key_vault_reader.id
  audience                  = ["api://AzureADTokenExchange"]
  issuer                    = azurerm_kubernetes_cluster.main.oidc_issuer_url
  subject                   = "system:serviceaccount:${var.kubernetes_namespace}:assets"
}

resource "azurerm_federated_identity_credential" "key_vault_reader_tokens" {
  name                      = "aks-${var.kubernetes_namespace}-tokens"
  user_assigned_identity_id = azurerm_user_assigned_identity.key_vault_reader.id
  audience                  = ["api://AzureADTokenExchange"]
  issuer                    = azurerm_kubernetes_cluster.main.oidc_issuer_url
  subject                   = "system:serviceaccount:${var.kubernetes_namespace}:tokens"
  depends_on                = [azurerm_federated_identity_credential.key_vault_reader_assets]
}

resource "azurerm_federated_identity_credential" "key_vault_reader_ledger" {
  name                      = "aks-${var.kubernetes_namespace}-ledger"
  user_assigned_identity_id = azurerm_user_assigned_identity.key_vault_reader.id
  audience                  = ["api://AzureADTokenExchange"]
  issuer                    = azurerm_kubernetes_cluster.main.oidc_issuer_url
  subject                   = "system:serviceaccount:${var.kubernetes_namespace}:ledger"
  depends_on                = [azurerm_federated_identity_credential.key_vault_reader_tokens]
}

# --- Continuous delivery (GitHub Actions, OIDC) ----------------------------------------------

resource "azurerm_user_assigned_identity" "github_cd" {
  count               = var.github_repository == null ? 0 : 1
  name                = "id-${local.name}-github-cd"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  tags                = local.tags
}

# Only workflow runs of the named repository get tokens for this identity, and only in the named
# GitHub environment (.github/workflows/cd.yml: `dev` for the job after CI on main, `production`
# for the manual promotion, which the environment's protection rules can hold for approval), or,
# with no environment named, on the named branch; never pull requests, other branches or forks.
locals {
  github_subject = var.github_environment == null ? "ref:refs/heads/${var.github_branch}" : "environment:${var.github_environment}"
}

resource "azurerm_federated_identity_credential" "github_cd" {
  count                     = var.github_repository == null ? 0 : 1
  name                      = "github-${replace("${var.github_repository}-${local.github_subject}", "/[^0-9A-Za-z_-]/", "-")}"
  user_assigned_identity_id = azurerm_user_assigned_identity.github_cd[0].id
  audience                  = ["api://AzureADTokenExchange"]
  issuer                    = "https://token.actions.githubusercontent.com"
  subject                   = "repo:${var.github_repository}:${local.github_subject}"
}

# Promotion copies the image that ran in dev into this registry with
#   az acr import --name <this acr> --registry <dev's acr_id> --source libertum:sha-<full commit>
# which AcrPush does not allow. Here: a role with the import action, and the read of this
# registry's resource (az acr import looks the registry up by name first: registries/read).
resource "azurerm_role_definition" "acr_import" {
  count       = var.github_repository != null && var.github_promote_from_acr_id != null ? 1 : 0
  name        = "${local.name}-acr-import"
  scope       = azurerm_container_registry.main.id
  description = "Import images into the Libertum registry from another registry (promotion)."
  permissions {
    actions = [
      "Microsoft.ContainerRegistry/registries/read",
      "Microsoft.ContainerRegistry/registries/importImage/action",
    ]
  }
  assignable_scopes = [azurerm_container_registry.main.id]
}

resource "azurerm_role_assignment" "github_cd_acr_import" {
  count                            = length(azurerm_role_definition.acr_import)
  scope                            = azurerm_container_registry.main.id
  role_definition_id               = azurerm_role_definition.acr_import[0].role_definition_resource_id
  principal_id                     = azurerm_user_assigned_identity.github_cd[0].principal_id
  skip_service_principal_aad_check = true
}

# On the source (dev's registry, possibly in another subscription), the import reads the
# registry's resource (registries/read: the source is named by resource ID) and pulls the image
# (registries/pull/read). Reader on that one registry is both, and every other right it gives
# there is a read too. A custom role with just those two actions would be narrower, but it
# would have to be defined in dev's subscription, which takes the right to define roles there.
resource "azurerm_role_assignment" "github_cd_source_acr_read" {
  count                            = length(azurerm_role_definition.acr_import)
  scope                            = var.github_promote_from_acr_id
  role_definition_name             = "Reader"
  principal_id                     = azurerm_user_assigned_identity.github_cd[0].principal_id
  skip_service_principal_aad_check = true
}

# Push (dev), and in either registry look a tag up (az acr repository show) and lock it
# (az acr repository update --write-enabled false): AcrPush pulls, pushes and manages tags.
resource "azurerm_role_assignment" "github_cd_acr_push" {
  count                            = var.github_repository == null ? 0 : 1
  scope                            = azurerm_container_registry.main.id
  role_definition_name             = "AcrPush"
  principal_id                     = azurerm_user_assigned_identity.github_cd[0].principal_id
  skip_service_principal_aad_check = true
}
