# What the Kubernetes overlays (deploy/k8s/overlays/<env>), CD and operators need from this
# deployment. Nothing secret: the connection strings are in Key Vault, not in outputs.

output "resource_group_name" {
  description = "Resource group holding everything but the AKS nodes."
  value       = azurerm_resource_group.main.name
}

output "aks_cluster_name" {
  description = "AKS cluster name (az aks get-credentials / az aks command invoke)."
  value       = azurerm_kubernetes_cluster.main.name
}

output "aks_private_fqdn" {
  description = "Private FQDN of the API server, resolvable only inside the VNet."
  value       = azurerm_kubernetes_cluster.main.private_fqdn
}

output "aks_oidc_issuer_url" {
  description = "OIDC issuer of the cluster (workload identity)."
  value       = azurerm_kubernetes_cluster.main.oidc_issuer_url
}

output "acr_login_server" {
  description = "Registry host for the images (overlays' images: newName)."
  value       = azurerm_container_registry.main.login_server
}

output "acr_name" {
  description = "Registry name: CD's DEV_ACR_NAME / PROD_ACR_NAME repository variables."
  value       = azurerm_container_registry.main.name
}

output "acr_id" {
  description = "Registry resource ID: prod's github_promote_from_acr_id is dev's."
  value       = azurerm_container_registry.main.id
}

output "key_vault_name" {
  description = "Key Vault name: the SecretProviderClass keyvaultName and the ingress certificate URI's host."
  value       = azurerm_key_vault.main.name
}

output "key_vault_uri" {
  description = "Key Vault URI."
  value       = azurerm_key_vault.main.vault_uri
}

output "ingress_certificate_uri" {
  description = "Where the ingress expects its TLS certificate (import it under this name; kubernetes.azure.com/tls-cert-keyvault-uri)."
  value       = "${azurerm_key_vault.main.vault_uri}certificates/libertum-tls"
}

output "tenant_id" {
  description = "Entra ID tenant (SecretProviderClass tenantId; the JWKS and issuer URLs of LIBERTUM_AUTH_*)."
  value       = data.azurerm_client_config.current.tenant_id
}

output "workload_identity_client_ids" {
  description = "Client ID per Kubernetes service account (annotation azure.workload.identity/client-id)."
  value       = { for sa, identity in azurerm_user_assigned_identity.workload : sa => identity.client_id }
}

output "key_vault_reader_client_id" {
  description = "Client ID for the services' shared SecretProviderClass (clientID): federated with the assets, tokens and ledger service accounts, may read the secrets mongodb-uri and redis-url."
  value       = azurerm_user_assigned_identity.key_vault_reader.client_id
}

output "backend_private_ip" {
  description = "The backend VM's address: LIBERTUM_KAFKA_BROKERS is <this>:9092. null without the VM (backend_vm_enabled = false)."
  value       = var.backend_vm_enabled ? var.backend_vm_private_ip : null
}

output "kafka_brokers" {
  description = "LIBERTUM_KAFKA_BROKERS. null without the backend VM (the in-cluster backends' overlay names its own brokers)."
  value       = var.backend_vm_enabled ? "${var.backend_vm_private_ip}:9092" : null
}

output "backend_subnet_cidr" {
  description = "The backend subnet (the allow-backends-egress NetworkPolicy's ipBlock). null without the backend VM."
  value       = var.backend_vm_enabled ? var.subnet_prefixes.backend : null
}

output "backend_vm_name" {
  description = "The backend VM (az vm run-command invoke --name ...): prod-Kafka-redis-libertum in production. null without the VM."
  value       = var.backend_vm_enabled ? azurerm_linux_virtual_machine.backend[0].name : null
}

output "storage_account_name" {
  description = "Storage account of the backups and the log archive."
  value       = azurerm_storage_account.main.name
}

output "backup_storage_account_url" {
  description = "AZURE_STORAGE_ACCOUNT_URL of the backup jobs (resolves to the private endpoint inside the VNet)."
  value       = trimsuffix(azurerm_storage_account.main.primary_blob_endpoint, "/")
}

output "backup_container_name" {
  description = "BACKUP_CONTAINER of the backup jobs."
  value       = azurerm_storage_container.backups.name
}

output "log_archive_container_name" {
  description = "Container for archived logs (exports kept beyond Loki's 30 days)."
  value       = azurerm_storage_container.log_archive.name
}

output "blob_private_endpoint_ip" {
  description = "Blob storage's private endpoint: the backup NetworkPolicy's blob ipBlock is <this>/32."
  value       = azurerm_private_endpoint.blob.private_service_connection[0].private_ip_address
}

output "nat_public_ip" {
  description = "The single egress address of the cluster and the backend VM, for allow-lists elsewhere (with the firewall too: the NAT gateway then serves the firewall's subnet)."
  value       = azurerm_public_ip.nat.ip_address
}

output "firewall_public_ip" {
  description = "With firewall_enabled: the ingress's public address (the API's DNS name points here; the firewall forwards 80 and 443 to firewall_ingress_private_ip). null without the firewall."
  value       = var.firewall_enabled ? azurerm_public_ip.firewall[0].ip_address : null
}

output "firewall_ingress_private_ip" {
  description = "With firewall_enabled: the ingress controller's internal load balancer address, which deploy/k8s/cluster/nginx-internal.yaml takes (docs/deploy.md, step 7). null without the firewall."
  value       = var.firewall_enabled ? var.firewall_ingress_private_ip : null
}

output "firewall_private_ip" {
  description = "With firewall_enabled: the next hop of the aks and backend subnets' default route. null without the firewall."
  value       = var.firewall_enabled ? azurerm_firewall.main[0].ip_configuration[0].private_ip_address : null
}

output "aks_outbound_type" {
  description = "The cluster's outbound type: userAssignedNATGateway, or userDefinedRouting with the firewall."
  value       = local.aks_outbound_type
}

output "flow_log_storage_account_name" {
  description = "Storage account of the raw VNet flow logs (null with flow_logs_enabled = false); traffic analytics writes NTANetAnalytics in the Log Analytics workspace."
  value       = var.flow_logs_enabled ? azurerm_storage_account.flow_logs[0].name : null
}

output "log_analytics_workspace_id" {
  description = "Log Analytics workspace (Container Insights, resource logs)."
  value       = azurerm_log_analytics_workspace.main.id
}

output "monitor_workspace_query_endpoint" {
  description = "PromQL endpoint of the managed Prometheus workspace (null when disabled)."
  value       = var.managed_prometheus_enabled ? azurerm_monitor_workspace.main[0].query_endpoint : null
}

output "github_cd_client_id" {
  description = "Client ID for azure/login in the CD workflow (AZURE_CLIENT_ID), null without github_repository."
  value       = var.github_repository == null ? null : azurerm_user_assigned_identity.github_cd[0].client_id
}

output "subscription_id" {
  description = "Subscription deployed into (AZURE_SUBSCRIPTION_ID of the CD workflow)."
  value       = data.azurerm_client_config.current.subscription_id
}

output "loki_client_id" {
  description = "Client ID of Loki's workload identity: the azure.workload.identity/client-id annotation of the service account monitoring/loki (loki_service_account). It may write the loki container only."
  value       = azurerm_user_assigned_identity.loki.client_id
}

output "loki_container_name" {
  description = "Container of Loki's chunks and index (deploy/observability/loki/loki.yml, container_name), in storage_account_name."
  value       = azurerm_storage_container.loki.name
}

output "atlas_private_endpoint_ip" {
  description = "With atlas_enabled: the Atlas private endpoint's address; the services' and the backup's NetworkPolicies admit TCP 1024-65535 to <this>/32. null without Atlas."
  value       = var.atlas_enabled ? module.atlas[0].private_endpoint_ip : null
}

output "atlas_cluster_name" {
  description = "With atlas_enabled: the Atlas cluster (and its project, atlas_project_id). null without Atlas."
  value       = var.atlas_enabled ? module.atlas[0].cluster_name : null
}

output "atlas_project_id" {
  description = "With atlas_enabled: the Atlas project holding the cluster. null without Atlas."
  value       = var.atlas_enabled ? module.atlas[0].project_id : null
}

output "atlas_secret_names" {
  description = "With atlas_enabled: the Key Vault secret holding each workload's Atlas connection string (mongodb+srv, TLS), readable by that workload's own identity (workload_identity_client_ids). null without Atlas."
  value       = var.atlas_enabled ? module.atlas[0].secret_names : null
}
