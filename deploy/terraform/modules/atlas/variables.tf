# Inputs of the Atlas module; the root module's atlas_* variables describe them for operators.

variable "name" {
  description = "<prefix>-<environment>: names the project, the cluster and the Azure private endpoint."
  type        = string
}

variable "environment" {
  description = "Environment name, for the project's and cluster's tags."
  type        = string
}

variable "org_id" {
  description = "Atlas organisation of the new project (when project_id is null)."
  type        = string
  default     = null
}

variable "project_id" {
  description = "An existing Atlas project; null creates one in org_id."
  type        = string
  default     = null
}

variable "region" {
  description = "Atlas's name of the Azure region (EUROPE_WEST for westeurope): the cluster's and the private endpoint service's."
  type        = string
}

variable "instance_size" {
  description = "Tier of the three electable nodes, and the floor of compute auto-scaling."
  type        = string
}

variable "max_instance_size" {
  description = "Ceiling of compute auto-scaling."
  type        = string
}

variable "mongodb_version" {
  description = "MongoDB major version (7.0, 8.0)."
  type        = string
}

variable "resource_group_name" {
  description = "Resource group of the Azure private endpoint."
  type        = string
}

variable "location" {
  description = "Azure region of the private endpoint (the VNet's)."
  type        = string
}

variable "subnet_id" {
  description = "The endpoints subnet."
  type        = string
}

variable "subnet_prefix" {
  description = "The endpoints subnet's CIDR, to check private_endpoint_ip against."
  type        = string
}

variable "private_endpoint_ip" {
  description = "Static address of the private endpoint in the endpoints subnet."
  type        = string
}

variable "database_prefix" {
  description = "LIBERTUM_MONGODB_DATABASE_PREFIX: the services' databases are <prefix>_<service> (and _p1 ... _p11 for assets and tokens)."
  type        = string
}

variable "partitions" {
  description = "Databases of the assets and the tokens service each: their writes' partitions (fixed at 12, docs/ARCHITECTURE.md)."
  type        = number
  default     = 12
}

variable "key_vault_id" {
  description = "The environment's Key Vault, which receives the connection strings."
  type        = string
}

variable "redis_url_secret_id" {
  description = "Versionless ID of the Key Vault secret redis-url (the backend VM's Redis): each service's identity may read it too, since its Atlas SecretProviderClass lists it beside the service's own connection string."
  type        = string
}

variable "service_principal_ids" {
  description = "Principal ID of each service's workload identity (assets, tokens, ledger): each may read its own connection string only."
  type        = map(string)

  validation {
    condition     = toset(keys(var.service_principal_ids)) == toset(["assets", "tokens", "ledger"])
    error_message = "service_principal_ids: exactly assets, tokens and ledger."
  }
}

variable "backup_principal_id" {
  description = "Principal ID of the mongodb-backup workload identity: it may read the read-only backup user's connection string."
  type        = string
}

variable "migration_user" {
  description = "Create the mongosync user (atlasAdmin) and its secret atlas-mongosync-uri, for the duration of a migration."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Azure tags of the private endpoint and the secrets (Atlas takes the same as its own tags)."
  type        = map(string)
}
