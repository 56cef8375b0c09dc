# Azure Firewall, optional (firewall_enabled, off by default): the egress of the aks and backend
# subnets goes through it, and it admits only what the workloads need, by host name where it can.
# It sits in AzureFirewallSubnet with the NAT gateway attached there, so egress keeps the NAT
# gateway's static address (nat_public_ip). Every decision is logged to Log Analytics
# (AZFWApplicationRule, AZFWNetworkRule, AZFWNatRule, AZFWThreatIntel).
#
# Routes: the aks and backend subnets send 0.0.0.0/0 to the firewall. Traffic inside the VNet
# (Key Vault's and blob's private endpoints, the private API server, the backend VM) keeps its
# more specific VNet route and never crosses the firewall; Azure DNS, IMDS and the VM agent's
# wire server (168.63.129.16, 169.254.169.254) are platform addresses that no route diverts.
#
# Ingress: with a default route to the firewall, replies to clients that came in through the
# cluster's public load balancer would leave through the firewall, which never saw the request
# and drops them (asymmetric routing). So with the firewall on, clients come in through the
# firewall's public IP, which forwards (DNAT) 80 and 443 to the ingress controller's internal
# load balancer at firewall_ingress_private_ip (README, "Azure Firewall").
#
# AKS uses outbound type userDefinedRouting with the firewall (local.aks_outbound_type).

locals {
  firewall_count = var.firewall_enabled ? 1 : 0

  # aks.tf's network_profile.outbound_type.
  aks_outbound_type = var.firewall_enabled ? "userDefinedRouting" : "userAssignedNATGateway"

  # The registry's REST endpoint and its dedicated data endpoint (data_endpoint_enabled).
  acr_fqdns = [
    azurerm_container_registry.main.login_server,
    "${azurerm_container_registry.main.name}.${azurerm_resource_group.main.location}.data.azurecr.io",
  ]
}

resource "azurerm_subnet" "firewall" {
  count = local.firewall_count
  # The name Azure Firewall requires.
  name                 = "AzureFirewallSubnet"
  resource_group_name  = azurerm_resource_group.main.name
  virtual_network_name = azurerm_virtual_network.main.name
  address_prefixes     = [var.subnet_prefixes.firewall]
}

resource "azurerm_subnet_nat_gateway_association" "firewall" {
  count          = local.firewall_count
  subnet_id      = azurerm_subnet.firewall[0].id
  nat_gateway_id = azurerm_nat_gateway.main.id
}

# The firewall's own address: the ingress's public address while the firewall is on (DNAT), and
# what Azure requires of every firewall. Outbound connections leave through the NAT gateway.
resource "azurerm_public_ip" "firewall" {
  count               = local.firewall_count
  name                = "pip-${local.name}-afw"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  allocation_method   = "Static"
  sku                 = "Standard"
  zones               = var.aks_zones
  tags                = local.tags
}

resource "azurerm_firewall_policy" "main" {
  #checkov:skip=CKV_AZURE_220:Intrusion detection (IDPS) exists only in the Premium tier, which doubles the firewall's cost; the Standard tier filters by host name and threat intelligence (Deny), and every decision is logged.
  count                    = local.firewall_count
  name                     = "afwp-${local.name}"
  location                 = azurerm_resource_group.main.location
  resource_group_name      = azurerm_resource_group.main.name
  sku                      = "Standard"
  threat_intelligence_mode = "Deny"
  tags                     = local.tags
}

resource "azurerm_firewall" "main" {
  #checkov:skip=CKV_AZURE_216:Threat intelligence is Deny in the firewall policy (threat_intelligence_mode), which is what governs a firewall attached to a policy.
  count               = local.firewall_count
  name                = "afw-${local.name}"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  sku_name            = "AZFW_VNet"
  sku_tier            = "Standard"
  firewall_policy_id  = azurerm_firewall_policy.main[0].id
  zones               = var.aks_zones
  tags                = local.tags

  ip_configuration {
    name                 = "public"
    subnet_id            = azurerm_subnet.firewall[0].id
    public_ip_address_id = azurerm_public_ip.firewall[0].id
  }

  depends_on = [azurerm_subnet_nat_gateway_association.firewall]
}

resource "azurerm_firewall_policy_rule_collection_group" "main" {
  count              = local.firewall_count
  name               = "libertum"
  firewall_policy_id = azurerm_firewall_policy.main[0].id
  priority           = 100

  # --- In: the ingress ------------------------------------------------------------------------
  # 443, and 80 for the ingress's redirect to HTTPS, from the clients allowed_ingress_cidrs names.
  nat_rule_collection {
    name     = "ingress"
    priority = 100
    action   = "Dnat"

    dynamic "rule" {
      for_each = ["80", "443"]
      content {
        name                = "ingress-${rule.value}"
        protocols           = ["TCP"]
        source_addresses    = var.allowed_ingress_cidrs
        destination_address = azurerm_public_ip.firewall[0].ip_address
        destination_ports   = [rule.value]
        translated_address  = var.firewall_ingress_private_ip
        translated_port     = rule.value
      }
    }
  }

  # --- Out: by address and port ---------------------------------------------------------------
  network_rule_collection {
    name     = "network"
    priority = 200
    action   = "Allow"

    # AKS's required network rules: the nodes' tunnel to the managed control plane (konnectivity
    # on TCP 9000, the older tunnel on UDP 1194), to the region's Azure addresses. The API
    # server itself (443) needs no rule: this cluster's is private, an endpoint in the aks
    # subnet that VNet routing reaches without the firewall.
    rule {
      name                  = "aks-tunnel"
      protocols             = ["UDP"]
      source_addresses      = [var.subnet_prefixes.aks]
      destination_addresses = ["AzureCloud.${azurerm_resource_group.main.location}"]
      destination_ports     = ["1194"]
    }

    rule {
      name                  = "aks-konnectivity"
      protocols             = ["TCP"]
      source_addresses      = [var.subnet_prefixes.aks]
      destination_addresses = ["AzureCloud.${azurerm_resource_group.main.location}"]
      destination_ports     = ["9000"]
    }

    # Time (ntp.ubuntu.com and the like). By address, because a network rule by host name needs
    # the firewall's DNS proxy and every client resolving through it.
    rule {
      name                  = "ntp"
      protocols             = ["UDP"]
      source_addresses      = [var.subnet_prefixes.aks, var.subnet_prefixes.backend]
      destination_addresses = ["*"]
      destination_ports     = ["123"]
    }
  }

  # --- Out: by host name (TLS SNI, or the HTTP Host header) -------------------------------------
  application_rule_collection {
    name     = "cluster"
    priority = 300
    action   = "Allow"

    # Everything AKS itself needs (mcr.microsoft.com and its data endpoints, management.azure.com,
    # login.microsoftonline.com, packages.aks.azure.com, acs-mirror.azureedge.net, ...), kept
    # current by Microsoft.
    rule {
      name                  = "aks-required"
      source_addresses      = [var.subnet_prefixes.aks]
      destination_fqdn_tags = ["AzureKubernetesService"]
      protocols {
        type = "Https"
        port = 443
      }
      protocols {
        type = "Http"
        port = 80
      }
    }

    # The services' and the backup job's images.
    rule {
      name              = "container-registry"
      source_addresses  = [var.subnet_prefixes.aks]
      destination_fqdns = local.acr_fqdns
      protocols {
        type = "Https"
        port = 443
      }
    }

    # Workload identity's token exchange (the Key Vault CSI driver, the backup job) and the
    # services' Entra ID keys (LIBERTUM_AUTH_* JWKS). Key Vault and blob storage themselves are
    # reached through their private endpoints, inside the VNet: no rule.
    rule {
      name              = "entra-id"
      source_addresses  = [var.subnet_prefixes.aks]
      destination_fqdns = ["login.microsoftonline.com"]
      protocols {
        type = "Https"
        port = 443
      }
    }

    # Container Insights (the monitoring add-on) and managed Prometheus.
    rule {
      name             = "azure-monitor"
      source_addresses = [var.subnet_prefixes.aks]
      destination_fqdns = [
        "dc.services.visualstudio.com",
        "*.ods.opinsights.azure.com",
        "*.oms.opinsights.azure.com",
        "*.monitoring.azure.com",
        "global.handler.control.monitor.azure.com",
        "*.handler.control.monitor.azure.com",
        "*.ingest.monitor.azure.com",
      ]
      protocols {
        type = "Https"
        port = 443
      }
    }

    # The Azure Policy add-on.
    rule {
      name              = "azure-policy"
      source_addresses  = [var.subnet_prefixes.aks]
      destination_fqdns = ["data.policy.core.windows.net", "store.policy.core.windows.net"]
      protocols {
        type = "Https"
        port = 443
      }
    }

    # Argo CD (git, its install manifest, its images) and the monitoring stack's images.
    rule {
      name              = "cluster-extras"
      source_addresses  = [var.subnet_prefixes.aks]
      destination_fqdns = var.firewall_cluster_allowed_fqdns
      protocols {
        type = "Https"
        port = 443
      }
    }
  }

  application_rule_collection {
    name     = "packages"
    priority = 310
    action   = "Allow"

    # Ubuntu's archives (apt speaks HTTP and checks signatures): the backend VM's packages and
    # unattended-upgrades, and the AKS nodes' security updates between node images. Nothing here
    # runs Debian: the images are built in CI, not in the cluster.
    rule {
      name             = "ubuntu-archive"
      source_addresses = [var.subnet_prefixes.aks, var.subnet_prefixes.backend]
      destination_fqdns = [
        "azure.archive.ubuntu.com",
        "archive.ubuntu.com",
        "security.ubuntu.com",
        "changelogs.ubuntu.com",
      ]
      protocols {
        type = "Http"
        port = 80
      }
      protocols {
        type = "Https"
        port = 443
      }
    }

    # What the backend VM's setup script downloads (cloud-init/backend.yaml.tftpl): MongoDB's
    # and Redis' apt repositories and keys, Kafka from the Apache archive, and the backup
    # tool's Python packages (deploy/backup/backup-vm.sh builds its venv from PyPI).
    rule {
      name             = "backend-vm-downloads"
      source_addresses = [var.subnet_prefixes.backend]
      destination_fqdns = [
        "pgp.mongodb.com",
        "repo.mongodb.org",
        "packages.redis.io",
        "archive.apache.org",
        "pypi.org",
        "files.pythonhosted.org",
      ]
      protocols {
        type = "Https"
        port = 443
      }
    }
  }

  lifecycle {
    precondition {
      condition     = var.firewall_ingress_private_ip != null
      error_message = "firewall_enabled needs firewall_ingress_private_ip (the ingress's internal load balancer address)."
    }
  }
}

# --- Routes: the private subnets' default route to the firewall --------------------------------

resource "azurerm_route_table" "aks" {
  count                         = local.firewall_count
  name                          = "rt-${local.name}-aks"
  location                      = azurerm_resource_group.main.location
  resource_group_name           = azurerm_resource_group.main.name
  bgp_route_propagation_enabled = false
  tags                          = local.tags

  route {
    name                   = "default-via-firewall"
    address_prefix         = "0.0.0.0/0"
    next_hop_type          = "VirtualAppliance"
    next_hop_in_ip_address = azurerm_firewall.main[0].ip_configuration[0].private_ip_address
  }
}

resource "azurerm_route_table" "backend" {
  count                         = local.firewall_count
  name                          = "rt-${local.name}-backend"
  location                      = azurerm_resource_group.main.location
  resource_group_name           = azurerm_resource_group.main.name
  bgp_route_propagation_enabled = false
  tags                          = local.tags

  route {
    name                   = "default-via-firewall"
    address_prefix         = "0.0.0.0/0"
    next_hop_type          = "VirtualAppliance"
    next_hop_in_ip_address = azurerm_firewall.main[0].ip_configuration[0].private_ip_address
  }
}

resource "azurerm_subnet_route_table_association" "aks" {
  count          = local.firewall_count
  subnet_id      = azurerm_subnet.aks.id
  route_table_id = azurerm_route_table.aks[0].id
}

resource "azurerm_subnet_route_table_association" "backend" {
  count          = local.firewall_count
  subnet_id      = azurerm_subnet.backend.id
  route_table_id = azurerm_route_table.backend[0].id
}

# With userDefinedRouting, AKS reads the node subnet's route table (and checks its default
# route) when it creates or upgrades the cluster.
resource "azurerm_role_assignment" "aks_route_table" {
  count                            = local.firewall_count
  scope                            = azurerm_route_table.aks[0].id
  role_definition_name             = "Network Contributor"
  principal_id                     = azurerm_user_assigned_identity.aks_control_plane.principal_id
  skip_service_principal_aad_check = true
}

# --- Logs ------------------------------------------------------------------------------------

resource "azurerm_monitor_diagnostic_setting" "firewall" {
  count                      = local.firewall_count
  name                       = "to-log-analytics"
  target_resource_id         = azurerm_firewall.main[0].id
  log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id
  # Resource-specific tables (AZFWApplicationRule, ...) instead of AzureDiagnostics.
  log_analytics_destination_type = "Dedicated"

  dynamic "enabled_log" {
    for_each = ["AZFWApplicationRule", "AZFWNetworkRule", "AZFWNatRule", "AZFWThreatIntel"]
    content {
      category = enabled_log.value
    }
  }

  enabled_metric {
    category = "AllMetrics"
  }
}
