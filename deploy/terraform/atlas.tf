# MongoDB Atlas, off by default (atlas_enabled): the cluster, its private endpoint in the
# endpoints subnet, the services' database users and their connection strings in Key Vault
# (modules/atlas). Creating it changes nothing that runs: the services keep the backend VM's
# MongoDB until the cut-over of docs/atlas.md adds the overlay's atlas component
# (deploy/k8s/components/atlas), which points them at the Atlas secrets.

module "atlas" {
  source = "./modules/atlas"
  count  = var.atlas_enabled ? 1 : 0

  name                = local.name
  environment         = var.environment
  org_id              = var.atlas_org_id
  project_id          = var.atlas_project_id
  region              = var.atlas_region
  instance_size       = var.atlas_instance_size
  max_instance_size   = var.atlas_max_instance_size
  mongodb_version     = coalesce(var.atlas_mongodb_version, var.mongodb_series)
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  subnet_id           = azurerm_subnet.endpoints.id
  subnet_prefix       = var.subnet_prefixes.endpoints
  private_endpoint_ip = var.atlas_private_endpoint_ip
  database_prefix     = var.mongodb_database_prefix
  key_vault_id        = azurerm_key_vault.main.id
  migration_user      = var.atlas_migration_user
  tags                = local.tags

  # Each service's own workload identity (not the shared Key Vault reader, which every
  # service's ServiceAccount can use): with one user per service, a service may read only its
  # own user's password. These are the identities the SecretProviderClasses of
  # deploy/k8s/components/atlas name (workload_identity_client_ids), and each may read exactly
  # what its class lists: its own atlas-mongodb-uri-<service> and redis-url; the backup's,
  # atlas-mongodb-backup-uri.
  service_principal_ids = {
    for service in ["assets", "tokens", "ledger"] :
    service => azurerm_user_assigned_identity.workload[service].principal_id
  }
  backup_principal_id = azurerm_user_assigned_identity.workload["mongodb-backup"].principal_id
  redis_url_secret_id = azurerm_key_vault_secret.backend["redis-url"].resource_versionless_id

  # Its secrets are written like keyvault.tf's: once Terraform's own role has reached the vault,
  # through the private endpoint or the operator's address.
  depends_on = [time_sleep.key_vault_rbac, azurerm_private_endpoint.key_vault]
}
