# Traffic logging: VNet flow logs (every flow in and out of every NIC of the VNet, with the NSG
# rule that allowed or denied it) written by Network Watcher to a storage account of their own,
# and traffic analytics, which aggregates them every 10 minutes into the Log Analytics workspace
# (tables NTANetAnalytics and NTAIpDetails). On by default (flow_logs_enabled).
#
# VNet flow logs, not NSG flow logs: Azure refuses to create NSG flow logs since 30 June 2025,
# and azurerm ~> 4.81 takes the VNet as target_resource_id.
#
# The flow log belongs to the region's Network Watcher, which Azure creates (NetworkWatcher_<region>
# in NetworkWatcherRG) with the subscription's first VNet in that region; it is not managed here,
# because a region holds only one per subscription (README, "Flow logs").

locals {
  network_watcher_name  = coalesce(var.network_watcher_name, "NetworkWatcher_${azurerm_resource_group.main.location}")
  flow_log_storage_name = substr("${var.name_prefix}${var.environment}fl${random_string.storage_suffix.result}", 0, 24)
}

# A dedicated account: the flow log's retention is applied by Network Watcher as a lifecycle
# management rule on the account, which would replace the backup account's own lifecycle policy,
# and Network Watcher writes with the account key (below), which the backup account refuses.
resource "azurerm_storage_account" "flow_logs" {
  #checkov:skip=CKV2_AZURE_40:Network Watcher writes flow logs with the account key unless the flow log has a user-assigned identity, which azurerm does not expose (hashicorp/terraform-provider-azurerm#30219). The key is never read by anyone here: readers use Entra ID (default_to_oauth_authentication), SAS tokens expire within a day.
  #checkov:skip=CKV_AZURE_59:Network Watcher and traffic analytics reach the account as trusted Azure services, through its public endpoint; the firewall denies everything else (network_rules default Deny).
  #checkov:skip=CKV2_AZURE_33:Flow logs cannot be written through a private endpoint; the public endpoint admits only trusted Azure services.
  #checkov:skip=CKV2_AZURE_1:Network telemetry kept for flow_log_retention_days, encrypted with Microsoft-managed keys plus infrastructure encryption; a customer-managed key would add a Key Vault dependency to logging for no stated requirement.
  #checkov:skip=CKV_AZURE_33:No queue is used.
  #checkov:skip=CKV_AZURE_206:Flow logs are telemetry, not a record that must survive a zone or region loss; zone-redundant storage would only raise the bill.
  count                    = var.flow_logs_enabled ? 1 : 0
  name                     = local.flow_log_storage_name
  location                 = azurerm_resource_group.main.location
  resource_group_name      = azurerm_resource_group.main.name
  account_kind             = "StorageV2"
  account_tier             = "Standard"
  account_replication_type = "LRS"
  access_tier              = "Hot"

  https_traffic_only_enabled        = true
  min_tls_version                   = "TLS1_2"
  allow_nested_items_to_be_public   = false
  shared_access_key_enabled         = true
  default_to_oauth_authentication   = true
  public_network_access_enabled     = true
  local_user_enabled                = false
  infrastructure_encryption_enabled = true
  cross_tenant_replication_enabled  = false
  allowed_copy_scope                = "AAD"

  sas_policy {
    expiration_period = "01.00:00:00"
    expiration_action = "Block"
  }

  network_rules {
    default_action = "Deny"
    # Network Watcher (the flow logs) and traffic analytics are trusted services.
    bypass = ["AzureServices", "Logging", "Metrics"]
  }

  blob_properties {
    delete_retention_policy {
      days = 7
    }

    container_delete_retention_policy {
      days = 7
    }
  }

  tags = local.tags
}

resource "azurerm_network_watcher_flow_log" "vnet" {
  count                = var.flow_logs_enabled ? 1 : 0
  name                 = "fl-${local.name}-vnet"
  network_watcher_name = local.network_watcher_name
  resource_group_name  = var.network_watcher_resource_group_name
  location             = azurerm_resource_group.main.location
  target_resource_id   = azurerm_virtual_network.main.id
  storage_account_id   = azurerm_storage_account.flow_logs[0].id
  enabled              = true
  version              = 2
  tags                 = local.tags

  retention_policy {
    enabled = true
    days    = var.flow_log_retention_days
  }

  traffic_analytics {
    enabled               = true
    workspace_id          = azurerm_log_analytics_workspace.main.workspace_id
    workspace_region      = azurerm_log_analytics_workspace.main.location
    workspace_resource_id = azurerm_log_analytics_workspace.main.id
    interval_in_minutes   = 10
  }
}
