# Names, tags and the resource group every other file builds on.

data "azurerm_client_config" "current" {}

# Storage account names are global and cannot carry hyphens; a short random suffix keeps two
# subscriptions with the same environment name from colliding. Stable once created.
resource "random_string" "storage_suffix" {
  length  = 5
  upper   = false
  special = false
}

locals {
  name = "${var.name_prefix}-${var.environment}"

  tags = merge(
    {
      project     = "libertum"
      environment = var.environment
      managed-by  = "terraform"
    },
    var.tags,
  )

  key_vault_name       = coalesce(var.key_vault_name, "${local.name}-kv")
  acr_name             = coalesce(var.acr_name, "${var.name_prefix}${var.environment}acr")
  storage_account_name = substr("${var.name_prefix}${var.environment}st${random_string.storage_suffix.result}", 0, 24)

  # The services' Kubernetes service accounts (deploy/k8s/base), each with its own identity.
  service_accounts = ["assets", "tokens", "ledger", "mongodb-backup"]

  backup_container      = "mongodb-backups"
  log_archive_container = "log-archive"
  # The VM's backups go under their own prefix: the AKS CronJob writes (and prunes) mongodb/,
  # and neither job's retention must touch the other's files.
  vm_backup_prefix = "mongodb-vm/"
}

resource "azurerm_resource_group" "main" {
  name     = "rg-${local.name}"
  location = var.location
  tags     = local.tags
}
