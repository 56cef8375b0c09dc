# Azure Monitor: a Log Analytics workspace (Container Insights, control-plane and resource logs),
# an Azure Monitor workspace for managed Prometheus (the cluster's own metrics), an action group
# that mails the operators, and a few platform alerts on what no in-cluster Prometheus can see:
# the backend VM itself and its own backup. The services' own metrics and alerts
# (deploy/observability) are scraped and evaluated by the in-cluster Prometheus
# (ServiceMonitor, PrometheusRule).

resource "azurerm_log_analytics_workspace" "main" {
  name                = "log-${local.name}"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  sku                 = "PerGB2018"
  retention_in_days   = var.log_analytics_retention_days
  daily_quota_gb      = var.log_analytics_daily_quota_gb
  # Only Entra ID callers (the agents use their managed identities).
  local_authentication_enabled = false
  tags                         = local.tags
}

# --- Container Insights (the AKS monitoring add-on with managed identity) --------------------
# With msi_auth_for_monitoring_enabled the add-on only collects what a data collection rule
# associated with the cluster asks for; the portal creates this rule, Terraform must.

resource "azurerm_monitor_data_collection_rule" "container_insights" {
  name                = "MSCI-${local.name}"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  tags                = local.tags

  destinations {
    log_analytics {
      name                  = "ciworkspace"
      workspace_resource_id = azurerm_log_analytics_workspace.main.id
    }
  }

  data_flow {
    streams      = ["Microsoft-ContainerInsights-Group-Default"]
    destinations = ["ciworkspace"]
  }

  data_sources {
    extension {
      name           = "ContainerInsightsExtension"
      extension_name = "ContainerInsights"
      streams        = ["Microsoft-ContainerInsights-Group-Default"]
      extension_json = jsonencode({
        dataCollectionSettings = {
          interval               = "1m"
          namespaceFilteringMode = "Off"
          enableContainerLogV2   = true
        }
      })
    }
  }
}

resource "azurerm_monitor_data_collection_rule_association" "container_insights" {
  name                    = "ContainerInsightsExtension"
  target_resource_id      = azurerm_kubernetes_cluster.main.id
  data_collection_rule_id = azurerm_monitor_data_collection_rule.container_insights.id
}

# --- Managed Prometheus ----------------------------------------------------------------------

resource "azurerm_monitor_workspace" "main" {
  count               = var.managed_prometheus_enabled ? 1 : 0
  name                = "amw-${local.name}"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  tags                = local.tags
}

resource "azurerm_monitor_data_collection_endpoint" "prometheus" {
  count               = var.managed_prometheus_enabled ? 1 : 0
  name                = "MSProm-${local.name}"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  kind                = "Linux"
  tags                = local.tags
}

resource "azurerm_monitor_data_collection_rule" "prometheus" {
  count                       = var.managed_prometheus_enabled ? 1 : 0
  name                        = "MSProm-${local.name}"
  location                    = azurerm_resource_group.main.location
  resource_group_name         = azurerm_resource_group.main.name
  data_collection_endpoint_id = azurerm_monitor_data_collection_endpoint.prometheus[0].id
  kind                        = "Linux"
  tags                        = local.tags

  destinations {
    monitor_account {
      name               = "MonitoringAccount1"
      monitor_account_id = azurerm_monitor_workspace.main[0].id
    }
  }

  data_flow {
    streams      = ["Microsoft-PrometheusMetrics"]
    destinations = ["MonitoringAccount1"]
  }

  data_sources {
    prometheus_forwarder {
      name    = "PrometheusDataSource"
      streams = ["Microsoft-PrometheusMetrics"]
    }
  }
}

resource "azurerm_monitor_data_collection_rule_association" "prometheus" {
  count                   = var.managed_prometheus_enabled ? 1 : 0
  name                    = "MSProm-${local.name}"
  target_resource_id      = azurerm_kubernetes_cluster.main.id
  data_collection_rule_id = azurerm_monitor_data_collection_rule.prometheus[0].id
}

# --- Diagnostic settings ---------------------------------------------------------------------

resource "azurerm_monitor_diagnostic_setting" "aks" {
  name                       = "to-log-analytics"
  target_resource_id         = azurerm_kubernetes_cluster.main.id
  log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id
  # Resource-specific tables (AKSAudit, AKSControlPlane...) instead of AzureDiagnostics.
  log_analytics_destination_type = "Dedicated"

  # The API server's audit log of writes (not reads: kube-audit would multiply the volume),
  # the control plane's own logs, the autoscaler's decisions and Entra ID sign-ins (guard).
  dynamic "enabled_log" {
    for_each = ["kube-audit-admin", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "cluster-autoscaler", "guard"]
    content {
      category = enabled_log.value
    }
  }

  enabled_metric {
    category = "AllMetrics"
  }
}

resource "azurerm_monitor_diagnostic_setting" "key_vault" {
  name                       = "to-log-analytics"
  target_resource_id         = azurerm_key_vault.main.id
  log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id

  # Every secret read and every change, with the caller.
  enabled_log {
    category_group = "audit"
  }

  enabled_metric {
    category = "AllMetrics"
  }
}

resource "azurerm_monitor_diagnostic_setting" "storage" {
  name                       = "to-log-analytics"
  target_resource_id         = azurerm_storage_account.main.id
  log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id

  enabled_metric {
    category = "Transaction"
  }
}

# Who read, wrote or deleted which backup.
resource "azurerm_monitor_diagnostic_setting" "storage_blob" {
  name                       = "to-log-analytics"
  target_resource_id         = "${azurerm_storage_account.main.id}/blobServices/default"
  log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id

  enabled_log {
    category = "StorageRead"
  }

  enabled_log {
    category = "StorageWrite"
  }

  enabled_log {
    category = "StorageDelete"
  }

  enabled_metric {
    category = "Transaction"
  }
}

# --- Alerts ----------------------------------------------------------------------------------

resource "azurerm_monitor_action_group" "operators" {
  name                = "ag-${local.name}-operators"
  resource_group_name = azurerm_resource_group.main.name
  short_name          = substr("lbt${var.environment}", 0, 12)
  tags                = local.tags

  email_receiver {
    name                    = "operators"
    email_address           = var.alert_email
    use_common_alert_schema = true
  }
}

# The single Kafka/Redis/MongoDB node: its loss stops every service. This alert, the next two and
# backend_vm_backup_missing exist only with the backend VM (backend_vm_enabled).
resource "azurerm_monitor_metric_alert" "backend_vm_availability" {
  count               = local.backend_vm_count
  name                = "backend-vm-unavailable-${local.name}"
  resource_group_name = azurerm_resource_group.main.name
  scopes              = [azurerm_linux_virtual_machine.backend[0].id]
  description         = "The backend VM (Kafka, Redis, MongoDB) is not available: every service is down or degraded."
  severity            = 0
  frequency           = "PT1M"
  window_size         = "PT5M"
  tags                = local.tags

  criteria {
    metric_namespace = "Microsoft.Compute/virtualMachines"
    metric_name      = "VmAvailabilityMetric"
    aggregation      = "Average"
    operator         = "LessThan"
    threshold        = 1
  }

  action {
    action_group_id = azurerm_monitor_action_group.operators.id
  }
}

resource "azurerm_monitor_metric_alert" "backend_vm_cpu" {
  count               = local.backend_vm_count
  name                = "backend-vm-cpu-${local.name}"
  resource_group_name = azurerm_resource_group.main.name
  scopes              = [azurerm_linux_virtual_machine.backend[0].id]
  description         = "The backend VM has used more than 85% CPU for 15 minutes: Kafka and MongoDB latency will follow."
  severity            = 2
  frequency           = "PT5M"
  window_size         = "PT15M"
  tags                = local.tags

  criteria {
    metric_namespace = "Microsoft.Compute/virtualMachines"
    metric_name      = "Percentage CPU"
    aggregation      = "Average"
    operator         = "GreaterThan"
    threshold        = 85
  }

  action {
    action_group_id = azurerm_monitor_action_group.operators.id
  }
}

resource "azurerm_monitor_metric_alert" "backend_vm_memory" {
  count               = local.backend_vm_count
  name                = "backend-vm-memory-${local.name}"
  resource_group_name = azurerm_resource_group.main.name
  scopes              = [azurerm_linux_virtual_machine.backend[0].id]
  description         = "The backend VM has had less than 256 MiB of available memory for 15 minutes: the OOM killer would pick Kafka or MongoDB."
  severity            = 1
  frequency           = "PT5M"
  window_size         = "PT15M"
  tags                = local.tags

  criteria {
    metric_namespace = "Microsoft.Compute/virtualMachines"
    metric_name      = "Available Memory Bytes"
    aggregation      = "Average"
    operator         = "LessThan"
    threshold        = 268435456
  }

  action {
    action_group_id = azurerm_monitor_action_group.operators.id
  }
}

# The backend VM's daily backup (its systemd timer, 03:30 UTC, into mongodb-backups/mongodb-vm/)
# would otherwise fail unnoticed: nothing in the cluster watches the VM (the in-cluster
# Prometheus alerts on the AKS CronJob's backup, LibertumBackupMissing). The blob diagnostic
# setting above logs every write, so: no sidecar manifest (<time>.manifest.json, one Put Blob
# that deploy/backup/libertum-backup.py writes only once the archive is committed and read back
# intact) under that prefix for 26 hours, a day plus a margin for a slow run. The rule's window
# is two days (the nearest allowed value above 26 h) and the query narrows it to 26 h. The union
# with an empty table keeps the query valid before the first blob log has created the table
# StorageBlobLogs in the workspace (it then counts 0 and fires: no backup was written yet).
# Logs that stop arriving (the workspace's daily cap reached) also make it fire.
resource "azurerm_monitor_scheduled_query_rules_alert_v2" "backend_vm_backup_missing" {
  count                   = local.backend_vm_count
  name                    = "backend-vm-backup-missing-${local.name}"
  resource_group_name     = azurerm_resource_group.main.name
  location                = azurerm_resource_group.main.location
  scopes                  = [azurerm_log_analytics_workspace.main.id]
  description             = "No MongoDB backup from the backend VM (${local.backup_container}/${local.vm_backup_prefix}) for 26 hours: its daily timer failed or did not run. On the VM: systemctl list-timers libertum-backup.timer; journalctl -u libertum-backup."
  severity                = 1
  evaluation_frequency    = "PT1H"
  window_duration         = "P2D"
  auto_mitigation_enabled = true
  tags                    = local.tags

  criteria {
    query                   = <<-KQL
      union isfuzzy=true
          (datatable(TimeGenerated: datetime, AccountName: string, OperationName: string, StatusText: string, ObjectKey: string)[]),
          StorageBlobLogs
      | where TimeGenerated > ago(26h)
      | where AccountName == "${azurerm_storage_account.main.name}"
      | where OperationName == "PutBlob" and StatusText == "Success"
      | where ObjectKey startswith "/${azurerm_storage_account.main.name}/${local.backup_container}/${local.vm_backup_prefix}"
      | where ObjectKey endswith ".manifest.json"
      | summarize Backups = count()
    KQL
    time_aggregation_method = "Total"
    metric_measure_column   = "Backups"
    operator                = "LessThan"
    threshold               = 1

    failing_periods {
      minimum_failing_periods_to_trigger_alert = 1
      number_of_evaluation_periods             = 1
    }
  }

  action {
    action_groups = [azurerm_monitor_action_group.operators.id]
  }
}

# The backend VM's alerts had no count before backend_vm_enabled existed.
moved {
  from = azurerm_monitor_metric_alert.backend_vm_availability
  to   = azurerm_monitor_metric_alert.backend_vm_availability[0]
}

moved {
  from = azurerm_monitor_metric_alert.backend_vm_cpu
  to   = azurerm_monitor_metric_alert.backend_vm_cpu[0]
}

moved {
  from = azurerm_monitor_metric_alert.backend_vm_memory
  to   = azurerm_monitor_metric_alert.backend_vm_memory[0]
}

moved {
  from = azurerm_monitor_scheduled_query_rules_alert_v2.backend_vm_backup_missing
  to   = azurerm_monitor_scheduled_query_rules_alert_v2.backend_vm_backup_missing[0]
}
