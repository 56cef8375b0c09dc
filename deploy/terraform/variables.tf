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
  description = <<-EOT
    Prefix of every resource name, and the one source of the globally unique ones (main.tf):
    registry <prefix><environment>acr, Key Vault <prefix>-<environment>-kv, storage account
    <prefix><environment>st, and the state account <prefix>tfstate (backend.hcl.example). No
    default: choose one nobody else uses (an organisation's short name), and check it with
    preflight.sh, which asks Azure whether the names are free. 2-12 characters, so that with an
    environment of up to 8 every derived name fits: Key Vault 3-24, storage 3-24, registry 5-50.
  EOT
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,11}$", var.name_prefix))
    error_message = "name_prefix: 2-12 lowercase letters or digits, starting with a letter (it ends up in the Key Vault, registry and storage account names, which allow 24 characters and no hyphens in two of them)."
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
    Subnets of the VNet. public: empty today, reserved for an Application Gateway / WAF in front
    of the ingress (its NSG already admits 80 and 443); endpoints: private endpoints (Key Vault,
    blob); backend: the backend VM (Kafka, Redis, MongoDB); aks: nodes and pods (Azure CNI gives
    every pod an address here: nodes x (max_pods + 1) must fit, with room for upgrade surges);
    firewall: AzureFirewallSubnet, a /26, created only with firewall_enabled.
  EOT
  type = object({
    public    = string
    endpoints = string
    backend   = string
    aks       = string
    firewall  = optional(string, "10.20.1.0/26")
  })
  default = {
    public    = "10.20.0.0/24"
    firewall  = "10.20.1.0/26"
    endpoints = "10.20.2.0/24"
    backend   = "10.20.3.0/24"
    aks       = "10.20.16.0/20"
  }

  validation {
    condition     = endswith(var.subnet_prefixes.firewall, "/26")
    error_message = "subnet_prefixes.firewall: Azure Firewall needs a /26 (AzureFirewallSubnet)."
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
  description = "Sources allowed to reach the ingress in the AKS subnet: 443, and 80, which only answers with a redirect to HTTPS. The default is the whole Internet: it is a public API."
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
    Public IPs/CIDRs of where Terraform runs (a workstation, a CI runner). Terraform writes and
    reads the generated connection strings in Key Vault, whose firewall admits only these (and
    the private endpoint). Empty: Key Vault's public endpoint is disabled and Terraform must run
    from inside the VNet (or a peered network). Leave it unset and run kv-bootstrap.sh, which
    sets it to this machine's address for one plan or apply and empties it again afterwards.
  EOT
  type        = list(string)
  default     = []
}

# --- Backend VM (Kafka, Redis, MongoDB) -------------------------------------------------------

variable "backend_vm_enabled" {
  description = "Create the backend VM (Kafka, Redis, MongoDB), its data disk, the backend secrets in Key Vault (mongodb-uri, redis-url, mongodb-backup-uri, mongodb-admin-uri), their readers' roles and the VM's alerts. false: a preview or sandbox environment whose backends run in the cluster (deploy/k8s/overlays/preview, components/in-cluster-backends); the outputs backend_private_ip, kafka_brokers, backend_subnet_cidr and backend_vm_name are then null, and atlas_enabled is refused. Switching it off where the VM exists stops at the data disk's prevent_destroy."
  type        = bool
  default     = true
}

variable "backend_vm_name" {
  description = "Name of the backend VM in Azure. null: <environment>-Kafka-redis-libertum (the product, not name_prefix: the name need only be unique in its resource group), i.e. prod-Kafka-redis-libertum in production, as the design names it. Its host name is the same in lower case. Changing it replaces the VM (the data disk is kept)."
  type        = string
  default     = null

  validation {
    condition     = var.backend_vm_name == null || can(regex("^[A-Za-z0-9][A-Za-z0-9-]{0,62}[A-Za-z0-9]$", var.backend_vm_name))
    error_message = "backend_vm_name: 2-64 letters, digits or hyphens, starting and ending with a letter or digit (it is also the host name)."
  }
}

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
  description = "OpenSSH public key of the backend VM's administrator. Required with backend_vm_enabled (the VM's precondition says so); unused without it."
  type        = string
  default     = null
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
  description = "Entra ID groups that are cluster administrators (Azure RBAC for Kubernetes). Local accounts are disabled, so with none nobody could reach the cluster: at least one is required."
  type        = list(string)

  validation {
    condition     = length(var.aks_admin_group_object_ids) > 0
    error_message = "aks_admin_group_object_ids: name at least one Entra ID group (its object ID). Local accounts are disabled, so without an admin group nobody can use the cluster."
  }

  validation {
    condition     = alltrue([for id in var.aks_admin_group_object_ids : can(regex("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", id))])
    error_message = "aks_admin_group_object_ids: object IDs (GUIDs, lowercase), not group names."
  }
}

variable "kubernetes_namespace" {
  description = "Namespace of the services and the backup CronJob (deploy/k8s/base): the federated credentials name its service accounts."
  type        = string
  default     = "libertum"
}

# --- Registry, vault, storage ----------------------------------------------------------------

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

# --- Firewall, flow logs, Defender ----------------------------------------------------------

variable "firewall_enabled" {
  description = <<-EOT
    Azure Firewall (Standard) in AzureFirewallSubnet: the aks and backend subnets' egress goes
    through it (route tables), and it admits only what the workloads need (firewall.tf). The NAT
    gateway then serves the firewall's subnet, so egress keeps the same static address, and AKS
    uses outbound type userDefinedRouting. The ingress must then be published on an internal load
    balancer at firewall_ingress_private_ip; clients reach it through the firewall's public IP.
    About 900 USD a month plus traffic. false (the default): egress through the NAT gateway alone.
  EOT
  type        = bool
  default     = false
}

variable "firewall_ingress_private_ip" {
  description = "With firewall_enabled: the ingress controller's internal load balancer address, in subnet_prefixes.aks, to which the firewall forwards (DNAT) ports 80 and 443 of its public IP from allowed_ingress_cidrs. Required when the firewall is on."
  type        = string
  default     = null
}

# Hosts the default leaves out, which an operator may have to add (only HTTPS on 443 passes this
# list; a denied request shows in Log Analytics, AZFWApplicationRule):
# - Alertmanager's receivers: Slack "hooks.slack.com", PagerDuty "events.pagerduty.com", a
#   webhook's host. An SMTP relay (e.g. smtp.office365.com:587) is not HTTPS: it needs a network
#   rule of its own in firewall.tf, not this list.
# - Entra External ID, when investors' tokens come from it (docs/deploy.md, step 4): the services
#   fetch its keys from "<tenant>.ciamlogin.com" ("*.ciamlogin.com"); login.microsoftonline.com is
#   admitted already.
# - Traces to Azure Monitor instead of Tempo (deploy/observability/README.md): the ingestion
#   endpoint Azure gives for the resource, e.g. "<region>.in.applicationinsights.azure.com";
#   *.ingest.monitor.azure.com (data collection endpoints) is admitted already.
variable "firewall_cluster_allowed_fqdns" {
  description = "With firewall_enabled: host names the cluster may reach on 443 besides AKS's own, the registry, Entra ID, Azure Monitor and Azure Policy: the image registries of Argo CD and the monitoring stack, GitHub for Argo CD, and the Helm repositories and GitHub release downloads that docs/deploy.md step 7 installs from (helm runs in the cluster through az aks command invoke). Wildcards (*.example.com) are allowed. The comment above lists what an operator may have to add."
  type        = list(string)
  default = [
    "github.com",
    "raw.githubusercontent.com",
    "objects.githubusercontent.com",
    "release-assets.githubusercontent.com",
    # The Helm repositories of step 7 (their charts are GitHub release assets, above).
    "prometheus-community.github.io",
    "grafana.github.io",
    "grafana-community.github.io",
    "ghcr.io",
    "pkg-containers.githubusercontent.com",
    "quay.io",
    "*.quay.io",
    "registry.k8s.io",
    "*.pkg.dev",
    "registry-1.docker.io",
    "auth.docker.io",
    "production.cloudflare.docker.com",
    "public.ecr.aws",
  ]
}

variable "flow_logs_enabled" {
  description = "VNet flow logs (Network Watcher) into a dedicated storage account, with traffic analytics into the Log Analytics workspace."
  type        = bool
  default     = true
}

variable "flow_log_retention_days" {
  description = "Days the raw flow logs are kept in their storage account (traffic analytics' tables follow log_analytics_retention_days). 90, the CIS benchmark's minimum: enough to trace an incident found late."
  type        = number
  default     = 90
}

variable "network_watcher_name" {
  description = "The region's Network Watcher, which owns the flow log. null: NetworkWatcher_<location>, the one Azure creates with the first VNet of a region."
  type        = string
  default     = null
}

variable "network_watcher_resource_group_name" {
  description = "Resource group of that Network Watcher (Azure creates NetworkWatcherRG)."
  type        = string
  default     = "NetworkWatcherRG"
}

variable "defender_for_containers_enabled" {
  description = "Microsoft Defender for Containers (Standard) on the whole subscription: vulnerability scanning of the images in every registry, and agentless discovery of the clusters. Subscription-wide: set it true in exactly one environment per subscription. azurerm creates the plan only while it is Free, so a second environment with it true (or a subscription where the plan is on already) stops the apply until the plan is imported (preflight.sh checks). About 7 USD per vCore of the nodes per month."
  type        = bool
  default     = false
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

# --- Loki (logs in blob storage) -------------------------------------------------------------

variable "loki_service_account" {
  description = "Namespace and name of Loki's Kubernetes service account (the grafana/loki chart's, installed in namespace monitoring: deploy/observability/loki/values.yaml). Its federated credential lets Loki write its chunks and index to the loki container with no key."
  type = object({
    namespace = string
    name      = string
  })
  default = {
    namespace = "monitoring"
    name      = "loki"
  }
}

variable "loki_lifecycle_delete_days" {
  description = "Backstop deletion of blobs in the loki container, in days since last modification. Loki's compactor deletes chunks after its own 30-day retention (loki.yml); this only catches what it leaves behind, so it must stay above 30."
  type        = number
  default     = 60

  validation {
    condition     = var.loki_lifecycle_delete_days > 31
    error_message = "loki_lifecycle_delete_days: more than 31, or blobs Loki still serves (30 days of retention) would be deleted under it."
  }
}

# --- MongoDB Atlas (optional, modules/atlas; docs/atlas.md) -----------------------------------

variable "atlas_enabled" {
  description = "Create a MongoDB Atlas cluster on Azure with a private endpoint in the endpoints subnet, one database user per service and their connection strings in Key Vault (modules/atlas). For when the backend VM's MongoDB is outgrown; docs/atlas.md is the migration runbook. Needs Atlas credentials in MONGODB_ATLAS_CLIENT_ID and MONGODB_ATLAS_CLIENT_SECRET (a service account with Project Owner)."
  type        = bool
  default     = false
}

variable "atlas_org_id" {
  description = "Atlas organisation in which to create the project libertum-<environment>. Ignored when atlas_project_id is set."
  type        = string
  default     = null
}

variable "atlas_project_id" {
  description = "An existing Atlas project to create the cluster in. null: a new project in atlas_org_id."
  type        = string
  default     = null
}

variable "atlas_region" {
  description = "Atlas's name of the Azure region of the cluster and of its private endpoint: the same region as location (westeurope is EUROPE_WEST, northeurope EUROPE_NORTH)."
  type        = string
  default     = "EUROPE_WEST"
}

variable "atlas_instance_size" {
  description = "Cluster tier of the three electable nodes (Atlas spreads them over the region's availability zones). Compute auto-scaling moves between this and atlas_max_instance_size."
  type        = string
  default     = "M30"
}

variable "atlas_max_instance_size" {
  description = "Largest tier compute auto-scaling may reach."
  type        = string
  default     = "M60"
}

variable "atlas_mongodb_version" {
  description = "MongoDB major version of the Atlas cluster. null: mongodb_series, the backend VM's, which mongosync needs on both sides of a migration (upgrade on Atlas afterwards)."
  type        = string
  default     = null
}

variable "atlas_private_endpoint_ip" {
  description = "Static address of the Atlas private endpoint in subnet_prefixes.endpoints: the services' NetworkPolicy admits TCP 1024-65535 to exactly this /32 (Atlas gives each node its own port behind the endpoint)."
  type        = string
  default     = "10.20.2.20"
}

variable "atlas_migration_user" {
  description = "true only during a migration to Atlas (docs/atlas.md): a database user with atlasAdmin for mongosync, its connection string in the Key Vault secret atlas-mongosync-uri. false again once the migration is committed."
  type        = bool
  default     = false
}
