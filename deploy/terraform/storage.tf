# The storage account for MongoDB backups (from the backend VM and the AKS CronJob) and archived
# logs: Entra ID only (no shared keys, no SAS), reachable only through its private endpoint,
# every deletion recoverable for a while, and a lifecycle that moves old blobs to cheaper tiers.

resource "azurerm_storage_account" "main" {
  #checkov:skip=CKV_AZURE_33:No queue is used. Queue logging is configured through the queue data plane with the account key, which is disabled; reads and writes of the blobs that matter are logged by the blob diagnostic setting (monitoring.tf).
  #checkov:skip=CKV2_AZURE_1:Encrypted at rest with Microsoft-managed keys plus infrastructure (double) encryption; a customer-managed key would make every backup depend on one Key Vault key's availability and rotation, for no requirement that asks for it.
  name                     = local.storage_account_name
  location                 = azurerm_resource_group.main.location
  resource_group_name      = azurerm_resource_group.main.name
  account_kind             = "StorageV2"
  account_tier             = "Standard"
  account_replication_type = var.storage_replication_type
  access_tier              = "Hot"

  https_traffic_only_enabled        = true
  min_tls_version                   = "TLS1_2"
  allow_nested_items_to_be_public   = false
  shared_access_key_enabled         = false
  default_to_oauth_authentication   = true
  public_network_access_enabled     = false
  local_user_enabled                = false
  infrastructure_encryption_enabled = true
  cross_tenant_replication_enabled  = false
  allowed_copy_scope                = "AAD"

  # No SAS can be signed without a shared key anyway; if keys are ever re-enabled, SAS tokens
  # still expire within a day.
  sas_policy {
    expiration_period = "01.00:00:00"
    expiration_action = "Block"
  }

  network_rules {
    default_action = "Deny"
    # Azure Monitor (diagnostic settings) and other trusted services.
    bypass = ["AzureServices", "Logging", "Metrics"]
  }

  blob_properties {
    # A deleted or overwritten backup can be brought back: previous versions and soft-deleted
    # blobs are kept blob_soft_delete_days (the lifecycle policy deletes old versions).
    versioning_enabled            = true
    change_feed_enabled           = true
    change_feed_retention_in_days = 35

    delete_retention_policy {
      days = var.blob_soft_delete_days
    }

    container_delete_retention_policy {
      days = var.blob_soft_delete_days
    }
  }

  tags = local.tags
}

resource "azurerm_storage_container" "backups" {
  #checkov:skip=CKV2_AZURE_21:Blob reads, writes and deletes are logged by the diagnostic setting on blobServices/default (monitoring.tf) to Log Analytics; the storage-insights resource this check looks for needs an account key, and shared keys are disabled.
  name                  = local.backup_container
  storage_account_id    = azurerm_storage_account.main.id
  container_access_type = "private"
}

resource "azurerm_storage_container" "log_archive" {
  #checkov:skip=CKV2_AZURE_21:Blob reads, writes and deletes are logged by the diagnostic setting on blobServices/default (monitoring.tf) to Log Analytics; the storage-insights resource this check looks for needs an account key, and shared keys are disabled.
  name                  = local.log_archive_container
  storage_account_id    = azurerm_storage_account.main.id
  container_access_type = "private"
}

# Loki's chunks and index (deploy/observability/loki/loki.yml), written by Loki's own workload
# identity (identity.tf), which has Storage Blob Data Contributor on this container alone.
resource "azurerm_storage_container" "loki" {
  #checkov:skip=CKV2_AZURE_21:Blob reads, writes and deletes are logged by the diagnostic setting on blobServices/default (monitoring.tf) to Log Analytics; the storage-insights resource this check looks for needs an account key, and shared keys are disabled.
  name                  = local.loki_container
  storage_account_id    = azurerm_storage_account.main.id
  container_access_type = "private"
}

resource "azurerm_storage_management_policy" "main" {
  storage_account_id = azurerm_storage_account.main.id

  rule {
    name    = "mongodb-backups"
    enabled = true

    filters {
      blob_types   = ["blockBlob"]
      prefix_match = ["${local.backup_container}/"]
    }

    actions {
      base_blob {
        tier_to_cool_after_days_since_modification_greater_than    = var.backup_lifecycle_days.cool
        tier_to_archive_after_days_since_modification_greater_than = var.backup_lifecycle_days.archive
        delete_after_days_since_modification_greater_than          = var.backup_lifecycle_days.delete
      }

      # Versions left behind when the backup tool prunes (versioning keeps them).
      version {
        delete_after_days_since_creation = var.blob_soft_delete_days
      }

      snapshot {
        delete_after_days_since_creation_greater_than = var.blob_soft_delete_days
      }
    }
  }

  rule {
    name    = "log-archive"
    enabled = true

    filters {
      blob_types   = ["blockBlob"]
      prefix_match = ["${local.log_archive_container}/"]
    }

    actions {
      base_blob {
        tier_to_cool_after_days_since_modification_greater_than    = var.log_archive_lifecycle_days.cool
        tier_to_archive_after_days_since_modification_greater_than = var.log_archive_lifecycle_days.archive
        delete_after_days_since_modification_greater_than          = var.log_archive_lifecycle_days.delete
      }

      version {
        delete_after_days_since_creation = var.blob_soft_delete_days
      }

      snapshot {
        delete_after_days_since_creation_greater_than = var.blob_soft_delete_days
      }
    }
  }

  # Loki reads its chunks for every query within its 30 days of retention and its compactor
  # deletes them after that: no cooler tier (cool bills a 30-day minimum and every read), only a
  # backstop deletion, and the versions that Loki's rewrites of its index leave behind.
  rule {
    name    = "loki"
    enabled = true

    filters {
      blob_types   = ["blockBlob"]
      prefix_match = ["${local.loki_container}/"]
    }

    actions {
      base_blob {
        delete_after_days_since_modification_greater_than = var.loki_lifecycle_delete_days
      }

      version {
        delete_after_days_since_creation = var.blob_soft_delete_days
      }

      snapshot {
        delete_after_days_since_creation_greater_than = var.blob_soft_delete_days
      }
    }
  }
}

# The only way in: the backend VM and the cluster reach blob storage here (the account's public
# name resolves to this address inside the VNet through the linked private DNS zone). A static
# address, so that the backup's NetworkPolicy and the VM's NSG can name it alone (/32) rather
# than the endpoints subnet, where Key Vault's endpoint is too.
resource "azurerm_private_endpoint" "blob" {
  name                = "pe-${local.name}-blob"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  subnet_id           = azurerm_subnet.endpoints.id
  tags                = local.tags

  ip_configuration {
    name               = "blob"
    private_ip_address = var.blob_private_endpoint_ip
    subresource_name   = "blob"
    member_name        = "blob"
  }

  lifecycle {
    precondition {
      condition     = cidrsubnet("${var.blob_private_endpoint_ip}/${split("/", var.subnet_prefixes.endpoints)[1]}", 0, 0) == var.subnet_prefixes.endpoints
      error_message = "blob_private_endpoint_ip must be an address in subnet_prefixes.endpoints."
    }
  }

  private_service_connection {
    name                           = "blob"
    private_connection_resource_id = azurerm_storage_account.main.id
    subresource_names              = ["blob"]
    is_manual_connection           = false
  }

  private_dns_zone_group {
    name                 = "blob"
    private_dns_zone_ids = [azurerm_private_dns_zone.blob.id]
  }
}
