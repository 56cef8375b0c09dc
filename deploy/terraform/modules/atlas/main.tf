# MongoDB Atlas for Libertum, for when the backend VM's single MongoDB is outgrown (docs/atlas.md):
# a replica set of three electable nodes on Azure in the environment's region (Atlas spreads
# them over the region's availability zones), reachable only through a private endpoint in the
# VNet's endpoints subnet (no IP access list: nothing on the Internet may connect), with cloud
# backups and point-in-time restore; one database user per service with readWrite on its own
# databases only, a read-only user for the backup CronJob, and their connection strings in
# Key Vault, each readable by that workload's identity alone.

locals {
  project_id = var.project_id != null ? var.project_id : mongodbatlas_project.this[0].id

  # The databases each service writes (crates/adapters/src/wire.rs): the assets and tokens
  # services one per partition of their writes, <prefix>_<service> being partition 0.
  databases = {
    for service, partitions in { assets = var.partitions, tokens = var.partitions, ledger = 1 } :
    service => concat(
      ["${var.database_prefix}_${service}"],
      [for p in range(1, partitions) : "${var.database_prefix}_${service}_p${p}"],
    )
  }

  atlas_tags = merge(var.tags, { environment = var.environment })
}

resource "mongodbatlas_project" "this" {
  count  = var.project_id == null ? 1 : 0
  name   = var.name
  org_id = var.org_id
  tags   = local.atlas_tags

  lifecycle {
    precondition {
      condition     = var.org_id != null
      error_message = "atlas_org_id: set it (the organisation of the new Atlas project), or give atlas_project_id."
    }
  }
}

resource "mongodbatlas_advanced_cluster" "this" {
  project_id             = local.project_id
  name                   = var.name
  cluster_type           = "REPLICASET"
  mongo_db_major_version = var.mongodb_version

  # Snapshots and the oplog kept by Atlas: a restore to any second of the retention window.
  backup_enabled = true
  pit_enabled    = true
  # Deleting the cluster takes a deliberate change here first, as with the VM's data disk.
  termination_protection_enabled = true
  # Auto-scaling changes the tier and disk inside Atlas; these keep that from showing as drift.
  use_effective_fields = true

  replication_specs = [
    {
      region_configs = [
        {
          provider_name = "AZURE"
          region_name   = var.region
          priority      = 7
          electable_specs = {
            instance_size = var.instance_size
            node_count    = 3
          }
          auto_scaling = {
            disk_gb_enabled            = true
            compute_enabled            = true
            compute_scale_down_enabled = true
            compute_min_instance_size  = var.instance_size
            compute_max_instance_size  = var.max_instance_size
          }
        }
      ]
    }
  ]

  advanced_configuration = {
    minimum_enabled_tls_protocol = "TLS1_2"
    # The services run no server-side JavaScript.
    javascript_enabled    = false
    default_write_concern = "majority"
  }

  tags = local.atlas_tags
}

# --- Private endpoint ------------------------------------------------------------------------

# Atlas's side: an Azure Private Link service in Atlas's subscription, in the cluster's region.
resource "mongodbatlas_privatelink_endpoint" "this" {
  project_id    = local.project_id
  provider_name = "AZURE"
  region        = var.region
}

# Ours: an endpoint in the endpoints subnet at a fixed address, which the services'
# NetworkPolicy and the endpoints subnet's NSG name (TCP 1024-65535: Atlas maps each node of
# the cluster to its own port of this one address). Atlas's DNS resolves the cluster's
# private-endpoint host names to it, so no private DNS zone is needed.
resource "azurerm_private_endpoint" "atlas" {
  name                = "pe-${var.name}-atlas"
  location            = var.location
  resource_group_name = var.resource_group_name
  subnet_id           = var.subnet_id
  tags                = var.tags

  ip_configuration {
    name               = "atlas"
    private_ip_address = var.private_endpoint_ip
  }

  private_service_connection {
    name                           = mongodbatlas_privatelink_endpoint.this.private_link_service_name
    private_connection_resource_id = mongodbatlas_privatelink_endpoint.this.private_link_service_resource_id
    # Atlas's subscription owns the service: the connection is approved by Atlas, below.
    is_manual_connection = true
    request_message      = "Libertum ${var.environment}: MongoDB Atlas"
  }

  lifecycle {
    precondition {
      condition     = cidrsubnet("${var.private_endpoint_ip}/${split("/", var.subnet_prefix)[1]}", 0, 0) == var.subnet_prefix
      error_message = "atlas_private_endpoint_ip must be an address in subnet_prefixes.endpoints."
    }
  }
}

# Atlas accepts our endpoint into its service.
resource "mongodbatlas_privatelink_endpoint_service" "this" {
  project_id                  = mongodbatlas_privatelink_endpoint.this.project_id
  private_link_id             = mongodbatlas_privatelink_endpoint.this.private_link_id
  endpoint_service_id         = azurerm_private_endpoint.atlas.id
  private_endpoint_ip_address = azurerm_private_endpoint.atlas.private_service_connection[0].private_ip_address
  provider_name               = "AZURE"
}

# The cluster's connection strings only list the endpoint once Atlas has accepted it: read them
# after that (the resource's own attributes date from the cluster's creation).
data "mongodbatlas_advanced_cluster" "this" {
  project_id = local.project_id
  name       = mongodbatlas_advanced_cluster.this.name
  depends_on = [mongodbatlas_privatelink_endpoint_service.this]
}

locals {
  # The private-endpoint-aware SRV host of our endpoint (Atlas compares IDs case-insensitively).
  srv_hosts = [
    for pe in coalesce(data.mongodbatlas_advanced_cluster.this.connection_strings.private_endpoint, []) :
    trimprefix(pe.srv_connection_string, "mongodb+srv://")
    if contains([for e in pe.endpoints : lower(e.endpoint_id)], lower(azurerm_private_endpoint.atlas.id))
  ]
  srv_host = length(local.srv_hosts) > 0 ? local.srv_hosts[0] : null
}

# --- Database users and their connection strings ---------------------------------------------

# Letters and digits only: they go into URIs unescaped (as the VM's, keyvault.tf).
resource "random_password" "service" {
  for_each = local.databases
  length   = 32
  special  = false
}

resource "random_password" "backup" {
  length  = 32
  special = false
}

resource "random_password" "mongosync" {
  count   = var.migration_user ? 1 : 0
  length  = 32
  special = false
}

# One user per service, readWrite on its own databases and nothing else (on the VM one user
# serves all three: keyvault.tf, mongodb-uri).
resource "mongodbatlas_database_user" "service" {
  for_each           = local.databases
  project_id         = local.project_id
  auth_database_name = "admin"
  username           = "libertum-${each.key}"
  password           = random_password.service[each.key].result

  dynamic "roles" {
    for_each = each.value
    content {
      role_name     = "readWrite"
      database_name = roles.value
    }
  }

  scopes {
    name = mongodbatlas_advanced_cluster.this.name
    type = "CLUSTER"
  }
}

# The backup CronJob's user: read on every service database (listDatabases then shows only
# these), no write anywhere. Atlas's own cloud backups run beside it.
resource "mongodbatlas_database_user" "backup" {
  project_id         = local.project_id
  auth_database_name = "admin"
  username           = "libertum-backup"
  password           = random_password.backup.result

  dynamic "roles" {
    for_each = flatten(values(local.databases))
    content {
      role_name     = "read"
      database_name = roles.value
    }
  }

  scopes {
    name = mongodbatlas_advanced_cluster.this.name
    type = "CLUSTER"
  }
}

# Only while migrating (atlas_migration_user): mongosync writes every database on the
# destination, which takes atlasAdmin. Removed again once the migration is committed.
resource "mongodbatlas_database_user" "mongosync" {
  count              = var.migration_user ? 1 : 0
  project_id         = local.project_id
  auth_database_name = "admin"
  username           = "libertum-mongosync"
  password           = random_password.mongosync[0].result

  roles {
    role_name     = "atlasAdmin"
    database_name = "admin"
  }

  scopes {
    name = mongodbatlas_advanced_cluster.this.name
    type = "CLUSTER"
  }
}

locals {
  secret_names = concat(
    [for service in keys(local.databases) : "atlas-mongodb-uri-${service}"],
    ["atlas-mongodb-backup-uri"],
    var.migration_user ? ["atlas-mongosync-uri"] : [],
  )
  # mongodb+srv implies TLS (Atlas accepts nothing else); tls=true says so where it is read.
  # The SRV record's TXT entry adds the replica set's name and authSource=admin.
  secrets = merge(
    {
      for service in keys(local.databases) : "atlas-mongodb-uri-${service}" =>
      "mongodb+srv://libertum-${service}:${random_password.service[service].result}@${coalesce(local.srv_host, "pending")}/?tls=true&authSource=admin"
    },
    {
      "atlas-mongodb-backup-uri" = "mongodb+srv://libertum-backup:${random_password.backup.result}@${coalesce(local.srv_host, "pending")}/?tls=true&authSource=admin"
    },
    var.migration_user ? {
      "atlas-mongosync-uri" = "mongodb+srv://libertum-mongosync:${random_password.mongosync[0].result}@${coalesce(local.srv_host, "pending")}/?tls=true&authSource=admin"
    } : {},
  )
}

resource "azurerm_key_vault_secret" "atlas" {
  #checkov:skip=CKV_AZURE_41:Key Vault does not enforce expiry on reads, so a date would only be a reminder; the password changes only with its random_password (docs/atlas.md, rotation), which an expiry on this copy cannot drive.
  for_each     = toset(local.secret_names)
  name         = each.key
  value        = local.secrets[each.key]
  key_vault_id = var.key_vault_id
  content_type = "text/x-mongodb-uri"
  tags         = var.tags

  lifecycle {
    precondition {
      condition     = local.srv_host != null
      error_message = "Atlas does not list the private endpoint in the cluster's connection strings yet (it does once the endpoint is AVAILABLE): run terraform apply again in a few minutes."
    }
  }

  depends_on = [
    mongodbatlas_database_user.service,
    mongodbatlas_database_user.backup,
    mongodbatlas_database_user.mongosync,
  ]
}

# Exactly what the Kubernetes side mounts with each identity (deploy/k8s/components/atlas): each
# service's SecretProviderClass names the service's own identity and lists its own user's
# connection string and redis-url (Redis stays on the VM); the backup's class, the backup's
# identity, lists the read-only user's. Nobody's reads atlas-mongosync-uri (an operator does, as
# a Key Vault administrator). The shared Key Vault reader (identity.tf), federated with all
# three services' ServiceAccounts, gets none of these: any service could then read the others'.
resource "azurerm_role_assignment" "service" {
  for_each                         = var.service_principal_ids
  scope                            = azurerm_key_vault_secret.atlas["atlas-mongodb-uri-${each.key}"].resource_versionless_id
  role_definition_name             = "Key Vault Secrets User"
  principal_id                     = each.value
  skip_service_principal_aad_check = true
}

# redis-url is the shared reader's already, and so readable by every service's pod; granting it
# to each service's own identity as well lets no pod read anything new.
resource "azurerm_role_assignment" "service_redis" {
  for_each                         = var.service_principal_ids
  scope                            = var.redis_url_secret_id
  role_definition_name             = "Key Vault Secrets User"
  principal_id                     = each.value
  skip_service_principal_aad_check = true
}

resource "azurerm_role_assignment" "backup" {
  scope                            = azurerm_key_vault_secret.atlas["atlas-mongodb-backup-uri"].resource_versionless_id
  role_definition_name             = "Key Vault Secrets User"
  principal_id                     = var.backup_principal_id
  skip_service_principal_aad_check = true
}
