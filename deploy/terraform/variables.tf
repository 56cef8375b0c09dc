# Inputs of the Libertum Azure deployment. terraform.tfvars.example shows a complete set; only
# the variables without a default must be given.

# --- Where and what --------------------------------------------------------------------------

variable "subscription_id" {
  description = "Azure subscription to deploy into. null: ARM_SUBSCRIPTION_ID or the Azure CLI's current subscription."
  type        = string
  default     = null
}

variable "location" {
  description = "Azure region. It must offer availability zones 1-3 (the AKS node pools spread over them)."
  type        = string
  default     = "westeurope"
}

variable "environment" {
  description = "Environment name (dev, prod, ...): part of every resource name, so two environments can share a subscription."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,7}$", var.environment))
    error_message = "environment: 2-8 lowercase letters or digits, starting with a letter (it ends up in storage and registry names)."
  }
}

variable "name_prefix" {
  description = "Prefix of every resource name."
  type        = string
  default     = "libertum"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,11}$", var.name_prefix))
    error_message = "name_prefix: 2-12 lowercase letters or digits, starting with a letter."
  }
}

variable "tags" {
  description = "Extra tags for every resource (cost centre, owner...)."
  type        = map(string)
  default     = {}
}

# --- Network ---------------------------------------------------------------------------------

variable "vnet_address_space" {
  description = "Address space of the virtual network."
  type        = list(string)
  default     = ["10.20.0.0/16"]
}

variable "subnet_prefixes" {
  description = <<-EOT
    Subnets of the VNet. public: reserved for the Internet-facing tier (an Application Gateway /
    WAF in front of the ingress when one is added); endpoints: private endpoints (Key Vault, blob);
    backend: the backend VM (Kafka, Redis, MongoDB); aks: nodes and pods (Azure CNI gives every
    pod an address here: nodes x (max_pods + 1) must fit, with room for upgrade surges).
  EOT
  type = object({
    public    = string
    endpoints = string
    backend   = string
    aks       = string
  })
  default = {
    public    = "10.20.0.0/24"
    endpoints = "10.20.2.0/24"
    backend   = "10.20.3.0/24"
    aks       = "10.20.16.0/20"
  }
}

variable "aks_service_cidr" {
  description = "Kubernetes service addresses; must not overlap the VNet or anything peered with it."
  type        = string
  default     = "10.21.0.0/16"
}

variable "aks_dns_service_ip" {
  description = "Address of the cluster DNS service, inside aks_service_cidr."
  type        = string
  default     = "10.21.0.10"
}

variable "allowed_ingress_cidrs" {
  description = "Sources allowed to reach the ingress (HTTPS, 443) in the AKS subnet. The default is the whole Internet: it is a public API."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "admin_ssh_source_cidrs" {
  description = <<-EOT
    Private sources (a VPN range, a jump host, an AzureBastionSubnet) allowed to SSH to the
    backend VM. Empty (the default): no SSH at all; use `az vm run-command invoke` instead. The VM
    has no public IP, so SSH from the Internet is impossible either way.
  EOT
  type        = list(string)
  default     = []
}

variable "operator_ip_ranges" {
  description = <<-EOT
    Public IPs/CIDRs of where Terraform runs (a workstation, a CI runner). Terraform writes the
    generated connection strings into Key Vault, whose firewall admits only these (and the
    private endpoint). Empty: Key Vault's public endpoint is disabled and Terraform must run from
    inside the VNet (or a peered network).
  EOT
  type        = list(string)
  default     = []
}

# --- Backend VM (Kafka, Redis, MongoDB) -------------------------------------------------------

variable "backend_vm_size" {
  description = "Size of the backend VM: 2 vCPU / 4 GiB. D2ls_v5 is not burstable; Standard_B2s costs half but runs out of CPU credits under a steady Kafka and MongoDB load."
  type        = string
  default     = "Standard_D2ls_v5"
}

variable "backend_vm_zone" {
  description = "Availability zone of the backend VM and its data disk."
  type        = string
  default     = "1"
}

variable "backend_vm_private_ip" {
  description = "Static private address of the backend VM in the backend subnet (Azure reserves .0-.3). Kafka advertises it and the connection strings name it, so it must not change."
  type        = string
  default     = "10.20.3.4"
}

variable "backend_vm_image_version" {
  description = "Version of the Ubuntu 22.04 LTS image. The image is only read when the VM is created; unattended-upgrades keeps the OS patched afterwards."
  type        = string
  default     = "latest"
}

variable "admin_username" {
  description = "Administrator account on the backend VM (SSH key only)."
  type        = string
  default     = "libertumadmin"
}

variable "admin_ssh_public_key" {
  description = "OpenSSH public key of the backend VM's administrator."
  type        = string
}

variable "backend_os_disk_size_gb" {
  description = "OS disk (Premium SSD) of the backend VM."
  type        = number
  default     = 30
}

variable "backend_data_disk_size_gb" {
  description = "Data disk (Premium SSD, /data) holding MongoDB's and Kafka's files; it survives a rebuild of the VM."
  type        = number
  default     = 64
}

variable "kafka_version" {
  description = "Apache Kafka release downloaded from the Apache archive (KRaft mode)."
  type        = string
  default     = "3.8.1"
}

variable "kafka_scala_version" {
  description = "Scala build of the Kafka release."
  type        = string
  default     = "2.13"
}

variable "kafka_heap" {
  description = "Kafka's JVM heap (-Xmx); the rest of the VM's memory is MongoDB's cache, Redis and the page cache Kafka relies on."
  type        = string
  default     = "1g"
}

variable "kafka_log_retention_hours" {
  description = "How long Kafka keeps events. The services' event stores in MongoDB are the record; Kafka only has to cover a consumer being down."
  type        = number
  default     = 168
}

variable "mongodb_series" {
  description = "MongoDB release series (the official repository's apt suite)."
  type        = string
  default     = "7.0"
}

variable "mongodb_cache_size_gb" {
  description = "WiredTiger cache size on the backend VM."
  type        = number
  default     = 0.75
}

variable "mongodb_database_prefix" {
  description = "LIBERTUM_MONGODB_DATABASE_PREFIX: the services' databases are <prefix>_assets and <prefix>_tokens (with <prefix>_assets_p1 ... _p11 and <prefix>_tokens_p1 ... _p11, one per partition of their writes) and <prefix>_ledger."
  type        = string
  default     = "libertum"
}

variable "redis_series" {
  description = "Redis release series from packages.redis.io (7.2 is the last BSD-licensed series)."
  type        = string
  default     = "7.2"
}

variable "redis_maxmemory" {
  description = "Redis memory cap; Redis holds only the read cache and rate-limit counters, so it evicts instead of failing."
  type        = string
  default     = "256mb"
}

# --- AKS -------------------------------------------------------------------------------------

variable "kubernetes_version" {
  description = "Kubernetes minor version (e.g. \"1.33\"); null: AKS's default at creation. The automatic upgrade channel keeps patches current."
  type        = string
  default     = null
}

variable "aks_sku_tier" {
  description = "AKS control plane tier: Standard carries the uptime SLA (about 0.10 USD/hour); Free has none."
  type        = string
  default     = "Standard"

  validation {
    condition     = contains(["Free", "Standard", "Premium"], var.aks_sku_tier)
    error_message = "aks_sku_tier: Free, Standard or Premium."
  }
}

variable "aks_node_vm_size" {
  description = "Node size of both node pools: 2 vCPU / 8 GiB."
  type        = string
  default     = "Standard_D2s_v5"
}

variable "aks_zones" {
  description = "Availability zones the node pools spread over."
  type        = list(string)
  default     = ["1", "2", "3"]
}

variable "aks_system_node_count" {
  description = "Cluster autoscaler bounds of the system node pool (critical add-ons only)."
  type = object({
    min = number
    max = number
  })
  default = {
    min = 2
    max = 3
  }
}

variable "aks_user_node_count" {
  description = "Cluster autoscaler bounds of the user node pool (the services, the ingress, monitoring)."
  type = object({
    min = number
    max = number
  })
  default = {
    min = 2
    max = 6
  }
}

variable "aks_max_pods" {
  description = "Pods per node. Azure CNI reserves this many subnet addresses per node."
  type        = number
  default     = 50
}

variable "aks_network_policy" {
  description = "NetworkPolicy engine (deploy/k8s/base/networkpolicies.yaml relies on it): calico or azure."
  type        = string
  default     = "calico"

  validation {
    condition     = contains(["calico", "azure"], var.aks_network_policy)
    error_message = "aks_network_policy: calico or azure."
  }
}

variable "aks_automatic_upgrade_channel" {
  description = "AKS automatic upgrade channel (patch, stable, rapid, node-image)."
  type        = string
  default     = "patch"
}

variable "aks_node_os_upgrade_channel" {
  description = "Node OS upgrade channel (NodeImage, SecurityPatch, Unmanaged, None)."
  type        = string
  default     = "NodeImage"
}

variable "aks_admin_group_object_ids" {
  description = "Entra ID groups that are cluster administrators (Azure RBAC for Kubernetes; local accounts are disabled)."
  type        = list(string)
  default     = []
}

variable "kubernetes_namespace" {
  description = "Namespace of the services and the backup CronJob (deploy/k8s/base): the federated credentials name its service accounts."
  type        = string
  default     = "libertum"
}

# --- Registry, vault, storage ----------------------------------------------------------------

variable "acr_name" {
  description = "Container registry name (globally unique, alphanumeric). null: <prefix><environment>acr."
  type        = string
  default     = null
}

variable "key_vault_name" {
  description = "Key Vault name (globally unique, 3-24 characters). null: <prefix>-<environment>-kv."
  type        = string
  default     = null
}

variable "key_vault_administrator_object_ids" {
  description = "Entra ID users or groups given \"Key Vault Administrator\" on the vault (to import the ingress TLS certificate, rotate secrets)."
  type        = list(string)
  default     = []
}

variable "storage_replication_type" {
  description = "Replication of the backup storage account. GRS keeps a copy in the paired region and, unlike ZRS/GZRS, supports the archive tier the lifecycle policy uses."
  type        = string
  default     = "GRS"
}

variable "backup_retention_days" {
  description = "BACKUP_RETENTION_DAYS of the VM's daily backup: the tool deletes its own backups older than this."
  type        = number
  default     = 35
}

variable "backup_lifecycle_days" {
  description = <<-EOT
    Lifecycle of blobs in mongodb-backups, in days since last modification: to cool, to archive,
    deleted. A backup is read only to restore it, so it goes cool after a day; with the backup
    jobs' 35-day retention it is then pruned after more than the cool tier's 30-day minimum (no
    early-deletion charge). Archive applies only to backups kept longer than 90 days (a raised
    BACKUP_RETENTION_DAYS); the delete step is the backstop behind the jobs' own pruning.
  EOT
  type = object({
    cool    = number
    archive = number
    delete  = number
  })
  default = {
    cool    = 1
    archive = 90
    delete  = 365
  }
}

variable "log_archive_lifecycle_days" {
  description = "Lifecycle of blobs in log-archive, in days since last modification: to cool, to archive, deleted."
  type = object({
    cool    = number
    archive = number
    delete  = number
  })
  default = {
    cool    = 30
    archive = 90
    delete  = 365
  }
}

variable "blob_private_endpoint_ip" {
  description = <<-EOT
    Static address of the blob storage private endpoint, in subnet_prefixes.endpoints. The backup
    pods' NetworkPolicy (deploy/k8s/base/backup/networkpolicy.yaml) and the backend VM's NSG admit
    443 to exactly this address, not to the whole subnet, which also holds Key Vault's endpoint.
    Above the low addresses Azure gives dynamically allocated endpoints (Key Vault's takes the
    first free one, 10.20.2.4).
  EOT
  type        = string
  default     = "10.20.2.10"
}

variable "backup_restore_access" {
  description = <<-EOT
    true only while a MongoDB restore runs on AKS (deploy/k8s/base/backup/restore-job.yaml.example):
    lets the mongodb-backup identity read the Key Vault secret mongodb-uri (the services' user,
    readWrite on libertum_*), which a restore needs and the daily backup does not. false (the
    default): that identity reads mongodb-backup-uri (MongoDB's backup role) and nothing else.
  EOT
  type        = bool
  default     = false
}

variable "blob_soft_delete_days" {
  description = "Days a deleted blob or container stays recoverable; also how long previous blob versions are kept."
  type        = number
  default     = 14
}

# --- Monitoring ------------------------------------------------------------------------------

variable "log_analytics_retention_days" {
  description = "Retention of the Log Analytics workspace (the first 31 days are included in the ingestion price)."
  type        = number
  default     = 30
}

variable "log_analytics_daily_quota_gb" {
  description = "Daily ingestion cap of the Log Analytics workspace (-1: none), a guard against a log storm's bill."
  type        = number
  default     = 5
}

variable "managed_prometheus_enabled" {
  description = "Azure Monitor managed Prometheus for the cluster's own metrics (nodes, kubelet, kube-state)."
  type        = bool
  default     = true
}

variable "alert_email" {
  description = "E-mail address of the action group that receives the Azure Monitor alerts."
  type        = string
}

# --- Continuous delivery ---------------------------------------------------------------------

variable "github_repository" {
  description = "GitHub repository (owner/name) whose CD workflow (in github_environment, or on github_branch) may push images (AcrPush) through OIDC. null: no CD identity."
  type        = string
  default     = null
}

variable "github_branch" {
  description = "Branch whose workflow runs get the CD identity (when github_environment is null)."
  type        = string
  default     = "main"
}

variable "github_environment" {
  description = "GitHub environment whose workflow runs get the CD identity instead of a branch's. .github/workflows/cd.yml runs its jobs in environments: \"dev\" for dev (after CI on main), \"production\" for prod (the manual promotion). null: runs on github_branch without an environment."
  type        = string
  default     = null
}

variable "github_promote_from_acr_id" {
  description = "Resource ID of the registry this environment's images are promoted from (prod: dev's registry, the dev outputs' acr_id). Gives the CD identity Reader on that registry (read and pull) and, here, a role with the import action and the registry's read. null: this environment builds its own images."
  type        = string
  default     = null
}
