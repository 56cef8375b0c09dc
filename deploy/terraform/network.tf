# The virtual network: four subnets, one NSG each, and the NAT gateway that is the only way out
# to the Internet for the private subnets (AKS and the backend VM).
#
#   public    Internet-facing tier, reserved for an Application Gateway / WAF in front of the
#             ingress. Today the ingress (AKS application routing add-on, managed NGINX) is
#             published by the cluster's Standard load balancer, whose public front end lives
#             outside any subnet; its traffic is admitted by the AKS subnet's NSG below.
#   endpoints private endpoints of Key Vault and the backup storage account.
#   backend   the backend VM: Kafka 9092, Redis 6379, MongoDB 27017, reachable only from AKS.
#   aks       nodes and (Azure CNI) pods.

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

  security_rule {
    name                       = "allow-https-from-clients"
    priority                   = 100
    direction                  = "Inbound"
    access                     = "Allow"
    protocol                   = "Tcp"
    source_port_range          = "*"
    destination_port_range     = "443"
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
  # gateway (packages); nothing else in the VNet (not Key Vault's endpoint either), so a
  # compromised VM cannot reach the cluster.
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

  # The ingress controller's load balancer. HTTPS only: the API has no business on plain HTTP,
  # and the certificate comes from Key Vault, so no ACME HTTP-01 challenge needs port 80.
  security_rule {
    name                       = "allow-https-to-ingress"
    priority                   = 100
    direction                  = "Inbound"
    access                     = "Allow"
    protocol                   = "Tcp"
    source_port_range          = "*"
    destination_port_range     = "443"
    source_address_prefixes    = var.allowed_ingress_cidrs
    destination_address_prefix = "*"
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

resource "azurerm_subnet_nat_gateway_association" "aks" {
  subnet_id      = azurerm_subnet.aks.id
  nat_gateway_id = azurerm_nat_gateway.main.id
}

resource "azurerm_subnet_nat_gateway_association" "backend" {
  subnet_id      = azurerm_subnet.backend.id
  nat_gateway_id = azurerm_nat_gateway.main.id
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
