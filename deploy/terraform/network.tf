# The virtual network: four subnets, one NSG each, and the NAT gateway that is the only way out
# to the Internet for the private subnets (AKS and the backend VM). With firewall_enabled, a
# fifth subnet holds Azure Firewall, and the private subnets' egress goes through it
# (firewall.tf).
#
#   public    hosts nothing today. It is kept for an Application Gateway / WAF in front of the
#             ingress, and its NSG already admits what one needs (80, 443, the gateway manager).
#             The ingress (AKS application routing add-on, managed NGINX) is published by the
#             cluster's Standard load balancer, whose public front end lives outside any subnet;
#             its traffic is admitted by the AKS subnet's NSG below.
#   endpoints private endpoints of Key Vault and the backup storage account.
#   backend   the backend VM: Kafka 9092, Redis 6379, MongoDB 27017, reachable only from AKS.
#   aks       nodes and (Azure CNI) pods.
#
# Port 80 is open wherever 443 is: the ingress answers plain HTTP only with a redirect to HTTPS
# (nginx.ingress.kubernetes.io/ssl-redirect), and a client that tries http:// first must get that
# redirect instead of a timeout.

resource "azurerm_virtual_network" "main" {
  name                = "vnet-${local.name}"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  address_space       = var.vnet_address_space
  tags                = local.tags
}

resource "azurerm_subnet" "public" {
  name                 = "snet-public"
  resource_group_name  = azurerm_resource_group.main.name
  virtual_network_name = azurerm_virtual_network.main.name
  address_prefixes     = [var.subnet_prefixes.public]
}

resource "azurerm_subnet" "endpoints" {
  name                 = "snet-endpoints"
  resource_group_name  = azurerm_resource_group.main.name
  virtual_network_name = azurerm_virtual_network.main.name
  address_prefixes     = [var.subnet_prefixes.endpoints]
  # Private endpoints need no Internet access of their own.
  default_outbound_access_enabled = false
  # Without this the subnet's NSG is not applied to private endpoints, and every subnet of the
  # VNet could reach Key Vault and the backups.
  private_endpoint_network_policies = "Enabled"
}

resource "azurerm_subnet" "backend" {
  name                 = "snet-backend"
  resource_group_name  = azurerm_resource_group.main.name
  virtual_network_name = azurerm_virtual_network.main.name
  address_prefixes     = [var.subnet_prefixes.backend]
  # Egress only through the NAT gateway's static address, never Azure's implicit default SNAT.
  default_outbound_access_enabled = false
}

resource "azurerm_subnet" "aks" {
  name                            = "snet-aks"
  resource_group_name             = azurerm_resource_group.main.name
  virtual_network_name            = azurerm_virtual_network.main.name
  address_prefixes                = [var.subnet_prefixes.aks]
  default_outbound_access_enabled = false
}

# --- NSGs ------------------------------------------------------------------------------------

resource "azurerm_network_security_group" "public" {
  name                = "nsg-${local.name}-public"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  tags                = local.tags

  # 80 only for the redirect to HTTPS.
  security_rule {
    name                       = "allow-http-https-from-clients"
    priority                   = 100
    direction                  = "Inbound"
    access                     = "Allow"
    protocol                   = "Tcp"
    source_port_range          = "*"
    destination_port_ranges    = ["80", "443"]
    source_address_prefixes    = var.allowed_ingress_cidrs
    destination_address_prefix = var.subnet_prefixes.public
  }

  # What an Application Gateway v2 requires on its subnet (its management plane and probes),
  # so that one can be added here without touching the rules.
  security_rule {
    name                       = "allow-gateway-manager"
    priority                   = 110
    direction                  = "Inbound"
    access                     = "Allow"
    protocol                   = "Tcp"
    source_port_range          = "*"
    destination_port_range     = "65200-65535"
    source_address_prefix      = "GatewayManager"
    destination_address_prefix = "*"
  }

  security_rule {
    name                       = "allow-azure-load-balancer"
    priority                   = 120
    direction                  = "Inbound"
    access                     = "Allow"
    protocol                   = "*"
    source_port_range          = "*"
    destination_port_range     = "*"
    source_address_prefix      = "AzureLoadBalancer"
    destination_address_prefix = "*"
  }

  security_rule {
    name                       = "deny-all-inbound"
    priority                   = 4096
    direction                  = "Inbound"
    access                     = "Deny"
    protocol                   = "*"
    source_port_range          = "*"
    destination_port_range     = "*"
    source_address_prefix      = "*"
    destination_address_prefix = "*"
  }
}

resource "azurerm_network_security_group" "endpoints" {
  name                = "nsg-${local.name}-endpoints"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  tags                = local.tags

  # Key Vault (the CSI driver, the ingress certificate) and blob storage (the backup CronJob)
  # from the cluster; blob storage from the backend VM's backup job.
  security_rule {
    name                       = "allow-https-from-aks-and-backend"
    priority                   = 100
    direction                  = "Inbound"
    access                     = "Allow"
    protocol                   = "Tcp"
    source_port_range          = "*"
    destination_port_range     = "443"
    source_address_prefixes    = [var.subnet_prefixes.aks, var.subnet_prefixes.backend]
    destination_address_prefix = var.subnet_prefixes.endpoints
  }

  # MongoDB Atlas's private endpoint (atlas.tf), from the cluster only: Atlas gives each node
  # of the replica set a port of its own behind the one address, hence the range.
  dynamic "security_rule" {
    for_each = var.atlas_enabled ? [1] : []
    content {
      name                       = "allow-atlas-from-aks"
      priority                   = 110
      direction                  = "Inbound"
      access                     = "Allow"
      protocol                   = "Tcp"
      source_port_range          = "*"
      destination_port_range     = "1024-65535"
      source_address_prefix      = var.subnet_prefixes.aks
      destination_address_prefix = "${var.atlas_private_endpoint_ip}/32"
    }
  }

  security_rule {
    name                       = "deny-all-inbound"
    priority                   = 4096
    direction                  = "Inbound"
    access                     = "Deny"
    protocol                   = "*"
    source_port_range          = "*"
    destination_port_range     = "*"
    source_address_prefix      = "*"
    destination_address_prefix = "*"
  }
}

resource "azurerm_network_security_group" "backend" {
  name                = "nsg-${local.name}-backend"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  tags                = local.tags

  # The only traffic the backends serve: Kafka, Redis and MongoDB, to the pods and nodes.
  security_rule {
    name                       = "allow-backends-from-aks"
    priority                   = 100
    direction                  = "Inbound"
    access                     = "Allow"
    protocol                   = "Tcp"
    source_port_range          = "*"
    destination_port_ranges    = ["9092", "6379", "27017"]
    source_address_prefix      = var.subnet_prefixes.aks
    destination_address_prefix = "${var.backend_vm_private_ip}/32"
  }

  # SSH only from the private ranges an administrator names (none by default).
  dynamic "security_rule" {
    for_each = length(var.admin_ssh_source_cidrs) > 0 ? [1] : []
    content {
      name                       = "allow-ssh-from-admin"
      priority                   = 110
      direction                  = "Inbound"
      access                     = "Allow"
      protocol                   = "Tcp"
      source_port_range          = "*"
      destination_port_range     = "22"
      source_address_prefixes    = var.admin_ssh_source_cidrs
      destination_address_prefix = "${var.backend_vm_private_ip}/32"
    }
  }

  security_rule {
    name                       = "deny-all-inbound"
    priority                   = 4096
    direction                  = "Inbound"
    access                     = "Deny"
    protocol                   = "*"
    source_port_range          = "*"
    destination_port_range     = "*"
    source_address_prefix      = "*"
    destination_address_prefix = "*"
  }

  # Out: blob storage's private endpoint (the backup upload) and the Internet through the NAT
  # gateway or the firewall (packages); nothing else in the VNet (not Key Vault's endpoint
  # either), so a compromised VM cannot reach the cluster.
  security_rule {
    name                       = "allow-https-to-blob-endpoint"
    priority                   = 100
    direction                  = "Outbound"
    access                     = "Allow"
    protocol                   = "Tcp"
    source_port_range          = "*"
    destination_port_range     = "443"
    source_address_prefix      = "*"
    destination_address_prefix = "${var.blob_private_endpoint_ip}/32"
  }

  security_rule {
    name                       = "deny-vnet-outbound"
    priority                   = 4000
    direction                  = "Outbound"
    access                     = "Deny"
    protocol                   = "*"
    source_port_range          = "*"
    destination_port_range     = "*"
    source_address_prefix      = "*"
    destination_address_prefix = "VirtualNetwork"
  }
}

resource "azurerm_network_security_group" "aks" {
  name                = "nsg-${local.name}-aks"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  tags                = local.tags

  # The ingress controller's load balancer: 443, and 80, where the ingress only redirects to
  # HTTPS (the certificate comes from Key Vault: no ACME HTTP-01 challenge uses it).
  security_rule {
    name                       = "allow-http-https-to-ingress"
    priority                   = 100
    direction                  = "Inbound"
    access                     = "Allow"
    protocol                   = "Tcp"
    source_port_range          = "*"
    destination_port_ranges    = ["80", "443"]
    source_address_prefixes    = var.allowed_ingress_cidrs
    destination_address_prefix = "*"
  }

  # With the firewall, clients come in through its public IP: it forwards (DNAT) 80 and 443 to
  # the ingress's internal address, from its own private addresses.
  dynamic "security_rule" {
    for_each = var.firewall_enabled ? [1] : []
    content {
      name                       = "allow-http-https-from-firewall"
      priority                   = 105
      direction                  = "Inbound"
      access                     = "Allow"
      protocol                   = "Tcp"
      source_port_range          = "*"
      destination_port_ranges    = ["80", "443"]
      source_address_prefix      = var.subnet_prefixes.firewall
      destination_address_prefix = var.firewall_ingress_private_ip
    }
  }

  # Nodes and pods among themselves, and the private API server endpoint AKS puts here.
  security_rule {
    name                       = "allow-aks-subnet"
    priority                   = 110
    direction                  = "Inbound"
    access                     = "Allow"
    protocol                   = "*"
    source_port_range          = "*"
    destination_port_range     = "*"
    source_address_prefix      = var.subnet_prefixes.aks
    destination_address_prefix = var.subnet_prefixes.aks
  }

  # The load balancer's health probes of the ingress service.
  security_rule {
    name                       = "allow-azure-load-balancer"
    priority                   = 120
    direction                  = "Inbound"
    access                     = "Allow"
    protocol                   = "*"
    source_port_range          = "*"
    destination_port_range     = "*"
    source_address_prefix      = "AzureLoadBalancer"
    destination_address_prefix = "*"
  }

  # Everything else, the rest of the VNet included (the backend VM never calls into the cluster).
  security_rule {
    name                       = "deny-all-inbound"
    priority                   = 4096
    direction                  = "Inbound"
    access                     = "Deny"
    protocol                   = "*"
    source_port_range          = "*"
    destination_port_range     = "*"
    source_address_prefix      = "*"
    destination_address_prefix = "*"
  }

  lifecycle {
    precondition {
      condition = !var.firewall_enabled || (
        var.firewall_ingress_private_ip != null &&
        cidrsubnet("${coalesce(var.firewall_ingress_private_ip, "0.0.0.0")}/${split("/", var.subnet_prefixes.aks)[1]}", 0, 0) == var.subnet_prefixes.aks
      )
      error_message = "firewall_enabled needs firewall_ingress_private_ip: the ingress's internal load balancer address, in subnet_prefixes.aks (the firewall forwards 80 and 443 to it)."
    }
  }
}

resource "azurerm_subnet_network_security_group_association" "public" {
  subnet_id                 = azurerm_subnet.public.id
  network_security_group_id = azurerm_network_security_group.public.id
}

resource "azurerm_subnet_network_security_group_association" "endpoints" {
  subnet_id                 = azurerm_subnet.endpoints.id
  network_security_group_id = azurerm_network_security_group.endpoints.id
}

resource "azurerm_subnet_network_security_group_association" "backend" {
  subnet_id                 = azurerm_subnet.backend.id
  network_security_group_id = azurerm_network_security_group.backend.id
}

resource "azurerm_subnet_network_security_group_association" "aks" {
  subnet_id                 = azurerm_subnet.aks.id
  network_security_group_id = azurerm_network_security_group.aks.id
}

# --- NAT gateway -----------------------------------------------------------------------------

# One static address for all egress: what allow-lists elsewhere (a partner API, Atlas, GitHub
# Enterprise) would name.
resource "azurerm_public_ip" "nat" {
  name                = "pip-${local.name}-nat"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  allocation_method   = "Static"
  sku                 = "Standard"
  tags                = local.tags
}

# Regional (no zone): a Standard NAT gateway is either zonal or zone-less, and the node pools
# span three zones.
resource "azurerm_nat_gateway" "main" {
  name                    = "ng-${local.name}"
  location                = azurerm_resource_group.main.location
  resource_group_name     = azurerm_resource_group.main.name
  sku_name                = "Standard"
  idle_timeout_in_minutes = 10
  tags                    = local.tags
}

resource "azurerm_nat_gateway_public_ip_association" "main" {
  nat_gateway_id       = azurerm_nat_gateway.main.id
  public_ip_address_id = azurerm_public_ip.nat.id
}

# Without the firewall, the NAT gateway serves the private subnets directly; with it, it serves
# AzureFirewallSubnet instead (firewall.tf), and the private subnets route to the firewall.
resource "azurerm_subnet_nat_gateway_association" "aks" {
  count          = var.firewall_enabled ? 0 : 1
  subnet_id      = azurerm_subnet.aks.id
  nat_gateway_id = azurerm_nat_gateway.main.id
}

resource "azurerm_subnet_nat_gateway_association" "backend" {
  count          = var.firewall_enabled ? 0 : 1
  subnet_id      = azurerm_subnet.backend.id
  nat_gateway_id = azurerm_nat_gateway.main.id
}

# Both associations had no count before firewall_enabled existed.
moved {
  from = azurerm_subnet_nat_gateway_association.aks
  to   = azurerm_subnet_nat_gateway_association.aks[0]
}

moved {
  from = azurerm_subnet_nat_gateway_association.backend
  to   = azurerm_subnet_nat_gateway_association.backend[0]
}

# --- Private DNS for the private endpoints ---------------------------------------------------

resource "azurerm_private_dns_zone" "blob" {
  name                = "privatelink.blob.core.windows.net"
  resource_group_name = azurerm_resource_group.main.name
  tags                = local.tags
}

resource "azurerm_private_dns_zone" "key_vault" {
  name                = "privatelink.vaultcore.azure.net"
  resource_group_name = azurerm_resource_group.main.name
  tags                = local.tags
}

resource "azurerm_private_dns_zone_virtual_network_link" "blob" {
  name                  = "link-${local.name}-blob"
  resource_group_name   = azurerm_resource_group.main.name
  private_dns_zone_name = azurerm_private_dns_zone.blob.name
  virtual_network_id    = azurerm_virtual_network.main.id
  tags                  = local.tags
}

resource "azurerm_private_dns_zone_virtual_network_link" "key_vault" {
  name                  = "link-${local.name}-kv"
  resource_group_name   = azurerm_resource_group.main.name
  private_dns_zone_name = azurerm_private_dns_zone.key_vault.name
  virtual_network_id    = azurerm_virtual_network.main.id
  tags                  = local.tags
}
