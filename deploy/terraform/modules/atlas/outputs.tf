# What the root module passes on (outputs.tf there); nothing secret.

output "project_id" {
  description = "The Atlas project."
  value       = local.project_id
}

output "cluster_name" {
  description = "The Atlas cluster."
  value       = mongodbatlas_advanced_cluster.this.name
}

output "private_endpoint_ip" {
  description = "The private endpoint's address in the endpoints subnet (the NetworkPolicy's /32)."
  value       = azurerm_private_endpoint.atlas.private_service_connection[0].private_ip_address
}

output "srv_host" {
  description = "The private-endpoint-aware SRV host (mongodb+srv://<this>), null until Atlas lists the endpoint."
  value       = local.srv_host
}

output "secret_names" {
  description = "Key Vault secret per workload: assets, tokens, ledger, mongodb-backup (and mongosync while migration_user is true)."
  value = merge(
    { for service in keys(local.databases) : service => "atlas-mongodb-uri-${service}" },
    { "mongodb-backup" = "atlas-mongodb-backup-uri" },
    var.migration_user ? { mongosync = "atlas-mongosync-uri" } : {},
  )
}
