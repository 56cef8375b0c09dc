# The AKS cluster: private API server, Azure CNI in the AKS subnet, egress through the NAT
# gateway, Entra ID with Azure RBAC (no local accounts), workload identity, the Key Vault CSI
# driver, the application routing add-on (the ingress of deploy/k8s), Azure Policy, Container
# Insights and managed Prometheus. Two node pools of 2 vCPU / 8 GiB nodes over three zones.

resource "azurerm_kubernetes_cluster" "main" {
  #checkov:skip=CKV_AZURE_117:Node OS disks are encrypted at rest with platform-managed keys, and end to end (caches included) by host encryption; a customer-managed disk encryption set would tie every node to a Key Vault key's availability for no stated requirement.
  #checkov:skip=CKV_AZURE_226:Standard_D2s_v5 has neither a cache nor a temp disk to hold an ephemeral OS disk; choose a *ds_v5 size (local temp disk) to switch os_disk_type to Ephemeral.
  name                = "aks-${local.name}"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  node_resource_group = "rg-${local.name}-aks-nodes"
  dns_prefix          = local.name
  kubernetes_version  = var.kubernetes_version
  sku_tier            = var.aks_sku_tier

  # Private API server; operators use `az aks command invoke` or a host in the VNet. Argo CD
  # runs inside the cluster, so CD needs no API access from outside.
  private_cluster_enabled             = true
  private_dns_zone_id                 = "System"
  private_cluster_public_fqdn_enabled = false

  automatic_upgrade_channel = var.aks_automatic_upgrade_channel
  node_os_upgrade_channel   = var.aks_node_os_upgrade_channel

  local_account_disabled            = true
  role_based_access_control_enabled = true
  azure_active_directory_role_based_access_control {
    tenant_id              = data.azurerm_client_config.current.tenant_id
    azure_rbac_enabled     = true
    admin_group_object_ids = var.aks_admin_group_object_ids
  }

  oidc_issuer_enabled       = true
  workload_identity_enabled = true
  azure_policy_enabled      = true
  cost_analysis_enabled     = var.aks_sku_tier != "Free"

  # Removes unused images with known vulnerabilities from the nodes.
  image_cleaner_enabled        = true
  image_cleaner_interval_hours = 48

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.aks_control_plane.id]
  }

  kubelet_identity {
    client_id                 = azurerm_user_assigned_identity.aks_kubelet.client_id
    object_id                 = azurerm_user_assigned_identity.aks_kubelet.principal_id
    user_assigned_identity_id = azurerm_user_assigned_identity.aks_kubelet.id
  }

  default_node_pool {
    name                         = "system"
    temporary_name_for_rotation  = "systemtmp"
    vm_size                      = var.aks_node_vm_size
    vnet_subnet_id               = azurerm_subnet.aks.id
    zones                        = var.aks_zones
    auto_scaling_enabled         = true
    min_count                    = var.aks_system_node_count.min
    max_count                    = var.aks_system_node_count.max
    max_pods                     = var.aks_max_pods
    os_disk_type                 = "Managed"
    os_disk_size_gb              = 64
    host_encryption_enabled      = true
    node_public_ip_enabled       = false
    only_critical_addons_enabled = true

    upgrade_settings {
      max_surge                     = "33%"
      drain_timeout_in_minutes      = 30
      node_soak_duration_in_minutes = 0
    }

    tags = local.tags
  }

  network_profile {
    network_plugin    = "azure"
    network_policy    = var.aks_network_policy
    load_balancer_sku = "standard"
    # The NAT gateway, or the firewall's route table when firewall_enabled (firewall.tf).
    outbound_type  = local.aks_outbound_type
    service_cidr   = var.aks_service_cidr
    dns_service_ip = var.aks_dns_service_ip
  }

  # The Secrets Store CSI driver: mongodb-uri and redis-url into the services' pods,
  # mongodb-backup-uri into the backup's; rotation picks up a new secret version within two
  # minutes (the services read env vars, so they restart to use it).
  key_vault_secrets_provider {
    secret_rotation_enabled  = true
    secret_rotation_interval = "2m"
  }

  # Managed NGINX (class webapprouting.kubernetes.azure.com): the ingress
  # deploy/k8s/base/ingress.yaml uses. DNS records stay with the operator.
  # Without the firewall, the add-on's default controller, on a public load balancer.
  # With it, None: the add-on makes no controller of its own, and the operator applies
  # deploy/k8s/cluster/nginx-internal.yaml, the same controller (NginxIngressController
  # "default", same class) on an internal load balancer at firewall_ingress_private_ip, where
  # the firewall's DNAT rule sends the clients (firewall.tf). A public load balancer would not
  # do: its replies would leave through the firewall's default route and be dropped. "Internal"
  # would not do either: the add-on re-applies its default controller every few minutes, on an
  # address Azure picks, not the one the firewall forwards to.
  web_app_routing {
    dns_zone_ids             = []
    default_nginx_controller = var.firewall_enabled ? "None" : "External"
  }

  oms_agent {
    log_analytics_workspace_id      = azurerm_log_analytics_workspace.main.id
    msi_auth_for_monitoring_enabled = true
  }

  dynamic "monitor_metrics" {
    for_each = var.managed_prometheus_enabled ? [1] : []
    content {
      annotations_allowed = null
      labels_allowed      = null
    }
  }

  # Upgrades on Sunday nights (UTC), after the 02:30 and 03:30 backups.
  maintenance_window_auto_upgrade {
    frequency   = "Weekly"
    interval    = 1
    day_of_week = "Sunday"
    start_time  = "03:00"
    utc_offset  = "+00:00"
    duration    = 4
  }

  maintenance_window_node_os {
    frequency   = "Weekly"
    interval    = 1
    day_of_week = "Sunday"
    start_time  = "03:00"
    utc_offset  = "+00:00"
    duration    = 4
  }

  tags = local.tags

  lifecycle {
    # The cluster autoscaler owns the node counts.
    ignore_changes = [default_node_pool[0].node_count]
  }

  depends_on = [
    azurerm_role_assignment.aks_network,
    azurerm_role_assignment.aks_nat_gateway,
    azurerm_role_assignment.aks_kubelet_operator,
    azurerm_role_assignment.aks_acr_pull,
    azurerm_subnet_nat_gateway_association.aks,
    azurerm_nat_gateway_public_ip_association.main,
    azurerm_subnet_network_security_group_association.aks,
    # With firewall_enabled, the cluster's egress goes through the firewall from its first
    # node: the route, the rules that admit what the nodes fetch, and the control plane's
    # right to manage the route table (firewall.tf).
    azurerm_subnet_route_table_association.aks,
    azurerm_firewall_policy_rule_collection_group.main,
    azurerm_role_assignment.aks_route_table,
    azurerm_subnet_nat_gateway_association.firewall,
  ]
}

# The services, the ingress controller and monitoring run here; the system pool keeps only
# critical add-ons (CriticalAddonsOnly taint), so a busy service cannot starve CoreDNS.
resource "azurerm_kubernetes_cluster_node_pool" "user" {
  name                        = "user"
  temporary_name_for_rotation = "usertmp"
  kubernetes_cluster_id       = azurerm_kubernetes_cluster.main.id
  mode                        = "User"
  vm_size                     = var.aks_node_vm_size
  vnet_subnet_id              = azurerm_subnet.aks.id
  zones                       = var.aks_zones
  auto_scaling_enabled        = true
  min_count                   = var.aks_user_node_count.min
  max_count                   = var.aks_user_node_count.max
  max_pods                    = var.aks_max_pods
  os_disk_type                = "Managed"
  os_disk_size_gb             = 64
  host_encryption_enabled     = true
  node_public_ip_enabled      = false

  upgrade_settings {
    max_surge                     = "33%"
    drain_timeout_in_minutes      = 30
    node_soak_duration_in_minutes = 0
  }

  node_labels = {
    "libertum.io/pool" = "user"
  }

  tags = local.tags

  lifecycle {
    ignore_changes = [node_count]
  }
}
