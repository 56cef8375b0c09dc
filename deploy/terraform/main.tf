# Names, tags and the resource group every other file builds on.

data "azurerm_client_config" "current" {}

# A short random suffix for the flow logs' storage account (flowlogs.tf). Stable once created.
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

  # The globally unique names, all from name_prefix (its validation keeps them within Azure's
  # limits; preflight.sh asks Azure whether they are free before the first apply). The state
  # account, <prefix>tfstate, is made by hand before Terraform runs (README.md).
  key_vault_name       = "${local.name}-kv"
  acr_name             = "${var.name_prefix}${var.environment}acr"
  storage_account_name = "${var.name_prefix}${var.environment}st"

  # The services' Kubernetes service accounts (deploy/k8s/base), each with its own identity.
  service_accounts = ["assets", "tokens", "ledger", "mongodb-backup"]

  backup_container      = "mongodb-backups"
  log_archive_container = "log-archive"
  # Loki's chunks and index (deploy/observability/loki/loki.yml, container_name).
  loki_container = "loki"
  # The VM's backups go under their own prefix: the AKS CronJob writes (and prunes) mongodb/,
  # and neither job's retention must touch the other's files.
  vm_backup_prefix = "mongodb-vm/"
}

resource "azurerm_resource_group" "main" {
  name     = "rg-${local.name}"
  location = var.location
  tags     = local.tags
}
