# Key Vault: the backends' credentials (generated here, used by the VM's cloud-init and read by
# the pods through the Secrets Store CSI driver) and the ingress TLS certificate (imported by an
# operator, read by the application routing add-on). Azure RBAC only, no access policies; the
# workloads' readers are granted single secrets (identity.tf), never the vault.

resource "azurerm_key_vault" "main" {
  #checkov:skip=CKV_AZURE_189:The public endpoint is off unless operator_ip_ranges names where Terraform runs (it writes the secrets); even then the firewall denies every other address and the cluster uses the private endpoint.
  name                       = local.key_vault_name
  location                   = azurerm_resource_group.main.location
  resource_group_name        = azurerm_resource_group.main.name
  tenant_id                  = data.azurerm_client_config.current.tenant_id
  sku_name                   = "standard"
  rbac_authorization_enabled = true
  purge_protection_enabled   = true
  soft_delete_retention_days = 90

  # The private endpoint serves the cluster. The public endpoint exists only for the operators'
  # addresses (Terraform writes and reads the secrets from there); without any it is switched
  # off. kv-bootstrap.sh opens it to the address it runs from for one plan or apply, then closes
  # it again (README.md, "Key Vault from outside the VNet"); a runner inside the VNet needs none.
  public_network_access_enabled = length(var.operator_ip_ranges) > 0

  network_acls {
    default_action = "Deny"
    bypass         = "AzureServices"
    ip_rules       = var.operator_ip_ranges
  }

  tags = local.tags

  lifecycle {
    # modules/atlas moves only MongoDB: the services keep the VM's Kafka and Redis, and their
    # Atlas SecretProviderClasses read redis-url from this vault, which holds it only with the VM.
    precondition {
      condition     = !var.atlas_enabled || var.backend_vm_enabled
      error_message = "atlas_enabled needs backend_vm_enabled: Atlas replaces the backend VM's MongoDB only; Kafka and Redis stay on the VM (docs/atlas.md)."
    }
  }
}

resource "azurerm_private_endpoint" "key_vault" {
  name                = "pe-${local.name}-kv"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  subnet_id           = azurerm_subnet.endpoints.id
  tags                = local.tags

  private_service_connection {
    name                           = "vault"
    private_connection_resource_id = azurerm_key_vault.main.id
    subresource_names              = ["vault"]
    is_manual_connection           = false
  }

  private_dns_zone_group {
    name                 = "vault"
    private_dns_zone_ids = [azurerm_private_dns_zone.key_vault.id]
  }
}

# Whoever runs Terraform writes the generated secrets.
resource "azurerm_role_assignment" "key_vault_terraform" {
  scope                = azurerm_key_vault.main.id
  role_definition_name = "Key Vault Secrets Officer"
  principal_id         = data.azurerm_client_config.current.object_id
}

# ... and imports the ingress TLS certificate right after the first apply (README.md, "After the
# first apply"): `az keyvault certificate import` needs the certificates' data actions, which
# Secrets Officer lacks (the import is refused with 403 Forbidden).
resource "azurerm_role_assignment" "key_vault_terraform_certificates" {
  scope                = azurerm_key_vault.main.id
  role_definition_name = "Key Vault Certificates Officer"
  principal_id         = data.azurerm_client_config.current.object_id
}

resource "azurerm_role_assignment" "key_vault_administrators" {
  for_each             = toset(var.key_vault_administrator_object_ids)
  scope                = azurerm_key_vault.main.id
  role_definition_name = "Key Vault Administrator"
  principal_id         = each.value
}

# A new role assignment takes a minute or two to reach Key Vault's data plane; writing a secret
# before that fails with 403.
resource "time_sleep" "key_vault_rbac" {
  create_duration = "120s"
  depends_on      = [azurerm_role_assignment.key_vault_terraform]
}

# --- Generated credentials -------------------------------------------------------------------
# Letters and digits only: they go into URIs and config files unescaped. 32 of them are ~190
# bits. They are in the Terraform state (and the VM's cloud-init data): the state container must
# be as private as the vault.

resource "random_password" "mongodb_admin" {
  length  = 32
  special = false
}

resource "random_password" "mongodb_app" {
  length  = 32
  special = false
}

resource "random_password" "mongodb_backup" {
  length  = 32
  special = false
}

resource "random_password" "redis" {
  length  = 32
  special = false
}

locals {
  # readWrite on the services' databases only (a partitioned service has one per partition);
  # authSource admin is where the VM creates the users; replicaSet rs0 because the services
  # need transactions.
  mongodb_uri = "mongodb://libertum:${random_password.mongodb_app.result}@${var.backend_vm_private_ip}:27017/?replicaSet=rs0&authSource=admin"
  # The user the VM's cloud-init creates with MongoDB's backup role (and clusterMonitor): it
  # reads every database and writes none.
  mongodb_backup_uri = "mongodb://backup:${random_password.mongodb_backup.result}@${var.backend_vm_private_ip}:27017/?replicaSet=rs0&authSource=admin"
  mongodb_admin_uri  = "mongodb://admin:${random_password.mongodb_admin.result}@${var.backend_vm_private_ip}:27017/?replicaSet=rs0&authSource=admin"
  redis_url          = "redis://:${random_password.redis.result}@${var.backend_vm_private_ip}:6379"
}

# The names are what deploy/k8s/base/secretproviderclass.yaml (mongodb-uri, redis-url) and
# deploy/k8s/base/backup/secretproviderclass.yaml (mongodb-backup-uri) ask for.
# mongodb-admin-uri is for an operator's restore (root on MongoDB): no pod mounts it and no
# workload's identity may read it (identity.tf grants them single other secrets; the application
# routing add-on's vault-wide certificate role is the exception, README "Known limits").
# Only with the backend VM (backend_vm_enabled): in-cluster backends keep their passwords in
# Kubernetes Secrets (deploy/k8s/in-cluster-secrets.sh), not here.
locals {
  backend_secrets = {
    "mongodb-uri"        = { value = local.mongodb_uri, content_type = "text/x-mongodb-uri" }
    "redis-url"          = { value = local.redis_url, content_type = "text/x-redis-url" }
    "mongodb-backup-uri" = { value = local.mongodb_backup_uri, content_type = "text/x-mongodb-uri" }
    "mongodb-admin-uri"  = { value = local.mongodb_admin_uri, content_type = "text/x-mongodb-uri" }
  }
}

resource "azurerm_key_vault_secret" "backend" {
  #checkov:skip=CKV_AZURE_41:Key Vault does not enforce expiry on reads, so a date would only be a reminder; the value changes only when the password on the backend VM changes, which README "Rotate the backend credentials" describes and an expiry on this copy cannot drive.
  for_each     = { for name, secret in local.backend_secrets : name => secret if var.backend_vm_enabled }
  name         = each.key
  value        = each.value.value
  key_vault_id = azurerm_key_vault.main.id
  content_type = each.value.content_type
  tags         = local.tags

  depends_on = [time_sleep.key_vault_rbac, azurerm_private_endpoint.key_vault]
}
