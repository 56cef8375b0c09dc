# The backend VM: Ubuntu 22.04 LTS with Kafka, Redis and MongoDB (cloud-init/backend.yaml.tftpl),
# no public IP, a static private address in the backend subnet, a Premium data disk for /data,
# and a system-assigned identity that may write the backups container and nothing else.
# Its name is prod-Kafka-redis-libertum in production, as the design names it
# (<environment>-Kafka-redis-libertum; backend_vm_name overrides it).
#
# Only with backend_vm_enabled (the default). Without it (a preview or sandbox environment,
# deploy/k8s/overlays/preview) nothing here exists, nor the backend secrets in Key Vault, their
# readers' roles and the VM's alerts: Kafka, MongoDB and Redis run in the cluster instead.

locals {
  backend_vm_name  = coalesce(var.backend_vm_name, "${var.environment}-Kafka-redis-libertum")
  backend_vm_count = var.backend_vm_enabled ? 1 : 0
}

resource "azurerm_network_interface" "backend" {
  count               = local.backend_vm_count
  name                = "nic-${local.name}-backend"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  tags                = local.tags

  ip_configuration {
    name                          = "private"
    subnet_id                     = azurerm_subnet.backend.id
    private_ip_address_allocation = "Static"
    private_ip_address            = var.backend_vm_private_ip
  }
}

locals {
  backend_cloud_init = templatefile("${path.module}/cloud-init/backend.yaml.tftpl", {
    private_ip                = var.backend_vm_private_ip
    mongodb_series            = var.mongodb_series
    mongodb_cache_size_gb     = var.mongodb_cache_size_gb
    mongodb_database_prefix   = var.mongodb_database_prefix
    mongodb_admin_password    = random_password.mongodb_admin.result
    mongodb_app_password      = random_password.mongodb_app.result
    mongodb_backup_password   = random_password.mongodb_backup.result
    redis_series              = var.redis_series
    redis_password            = random_password.redis.result
    redis_maxmemory           = var.redis_maxmemory
    kafka_version             = var.kafka_version
    kafka_scala_version       = var.kafka_scala_version
    kafka_heap                = var.kafka_heap
    kafka_log_retention_hours = var.kafka_log_retention_hours
    storage_account_url       = trimsuffix(azurerm_storage_account.main.primary_blob_endpoint, "/")
    backup_container          = local.backup_container
    backup_prefix             = local.vm_backup_prefix
    backup_retention_days     = var.backup_retention_days
    # The backup tool and its runner, maintained in deploy/backup.
    backup_py = file("${path.module}/../backup/libertum-backup.py")
    backup_sh = file("${path.module}/../backup/backup-vm.sh")
  })
}

resource "azurerm_linux_virtual_machine" "backend" {
  #checkov:skip=CKV_AZURE_50:The VM agent's extensions are how an operator reaches this VM without SSH (az vm run-command invoke) and how the Azure Monitor agent would be installed; no extension is installed by this module.
  count = local.backend_vm_count
  # The host name is the same in lower case (host names are case-insensitive in DNS anyway).
  name                  = local.backend_vm_name
  computer_name         = lower(local.backend_vm_name)
  location              = azurerm_resource_group.main.location
  resource_group_name   = azurerm_resource_group.main.name
  zone                  = var.backend_vm_zone
  size                  = var.backend_vm_size
  network_interface_ids = [azurerm_network_interface.backend[0].id]

  admin_username                  = var.admin_username
  disable_password_authentication = true
  admin_ssh_key {
    username   = var.admin_username
    public_key = var.admin_ssh_public_key
  }

  # gzip first: the backup tool alone is ~37 KB and Azure caps custom data at 64 KiB.
  custom_data = base64gzip(local.backend_cloud_init)

  os_disk {
    name                 = "osdisk-${local.name}-backend"
    caching              = "ReadWrite"
    storage_account_type = "Premium_LRS"
    disk_size_gb         = var.backend_os_disk_size_gb
  }

  source_image_reference {
    publisher = "Canonical"
    offer     = "0001-com-ubuntu-server-jammy"
    sku       = "22_04-lts-gen2"
    version   = var.backend_vm_image_version
  }

  # Trusted launch, and host encryption (temp disk and caches encrypted too; needs the
  # EncryptionAtHost feature registered on the subscription, see README).
  secure_boot_enabled        = true
  vtpm_enabled               = true
  encryption_at_host_enabled = true

  allow_extension_operations = true
  provision_vm_agent         = true
  # Assessment only: reboots for patches are an operator's decision, since this VM is the single
  # Kafka, Redis and MongoDB node (unattended-upgrades installs security fixes without rebooting).
  patch_mode            = "ImageDefault"
  patch_assessment_mode = "AutomaticByPlatform"

  identity {
    type = "SystemAssigned"
  }

  # Managed boot diagnostics storage: the serial log and screenshot for a VM nobody can SSH to.
  boot_diagnostics {}

  tags = local.tags

  lifecycle {
    # Changing cloud-init would rebuild the VM (custom data forces a new one). Do that on
    # purpose with `terraform apply -replace='azurerm_linux_virtual_machine.backend[0]'`: /data
    # is on its own disk and the setup script picks it up again.
    ignore_changes = [custom_data]

    precondition {
      condition     = var.admin_ssh_public_key != null
      error_message = "The backend VM needs admin_ssh_public_key (only an environment with backend_vm_enabled = false may leave it unset)."
    }
  }

  # Default outbound access is off in the backend subnet: until its egress path exists (the NAT
  # gateway, or with the firewall the route to it and the rules that admit the downloads), the
  # setup script cannot reach the package mirrors. It retries until it can (the unit
  # libertum-backend-setup.service), but the VM should not boot before that path is there.
  depends_on = [
    azurerm_subnet_nat_gateway_association.backend,
    azurerm_subnet_network_security_group_association.backend,
    azurerm_subnet_route_table_association.backend,
    azurerm_firewall_policy_rule_collection_group.main,
    azurerm_subnet_nat_gateway_association.firewall,
    azurerm_nat_gateway_public_ip_association.main,
  ]
}

resource "azurerm_managed_disk" "backend_data" {
  #checkov:skip=CKV_AZURE_93:Encrypted at rest with a platform-managed key, and through host encryption on the VM; a customer-managed disk encryption set would make MongoDB's and Kafka's disk depend on a Key Vault key's availability for no stated requirement.
  count                = local.backend_vm_count
  name                 = "disk-${local.name}-backend-data"
  location             = azurerm_resource_group.main.location
  resource_group_name  = azurerm_resource_group.main.name
  zone                 = var.backend_vm_zone
  storage_account_type = "Premium_LRS"
  create_option        = "Empty"
  disk_size_gb         = var.backend_data_disk_size_gb
  # Only attached to the VM; never exported through a SAS URL.
  public_network_access_enabled = false
  network_access_policy         = "DenyAll"
  tags                          = local.tags

  lifecycle {
    # MongoDB's and Kafka's data: removing it takes an explicit change of this rule first (so
    # does switching backend_vm_enabled off in an environment that has the VM).
    prevent_destroy = true
  }
}

# LUN 0 is what the setup script waits for (/dev/disk/azure/scsi1/lun0).
resource "azurerm_virtual_machine_data_disk_attachment" "backend_data" {
  count              = local.backend_vm_count
  managed_disk_id    = azurerm_managed_disk.backend_data[0].id
  virtual_machine_id = azurerm_linux_virtual_machine.backend[0].id
  lun                = 0
  caching            = "ReadOnly"
}

resource "azurerm_role_assignment" "backend_vm_backup_blob" {
  count                            = local.backend_vm_count
  scope                            = azurerm_storage_container.backups.id
  role_definition_name             = "Storage Blob Data Contributor"
  principal_id                     = azurerm_linux_virtual_machine.backend[0].identity[0].principal_id
  skip_service_principal_aad_check = true
}

# None of these had a count before backend_vm_enabled existed: an environment made before keeps
# its VM, disk and roles at index 0.
moved {
  from = azurerm_network_interface.backend
  to   = azurerm_network_interface.backend[0]
}

moved {
  from = azurerm_linux_virtual_machine.backend
  to   = azurerm_linux_virtual_machine.backend[0]
}

moved {
  from = azurerm_managed_disk.backend_data
  to   = azurerm_managed_disk.backend_data[0]
}

moved {
  from = azurerm_virtual_machine_data_disk_attachment.backend_data
  to   = azurerm_virtual_machine_data_disk_attachment.backend_data[0]
}

moved {
  from = azurerm_role_assignment.backend_vm_backup_blob
  to   = azurerm_role_assignment.backend_vm_backup_blob[0]
}
