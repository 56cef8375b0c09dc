# The container registry for the libertum and libertum-backup images: Entra ID only (no admin
# user, no anonymous pull); the kubelets pull with AcrPull, CD pushes with AcrPush (identity.tf).
# Premium for zone redundancy, dedicated data endpoints and the untagged-manifest retention.
# Images are scanned twice: in CI before they are pushed, and by Microsoft Defender for
# Containers once in the registry (on push, and again as new vulnerabilities are published).

resource "azurerm_container_registry" "main" {
  #checkov:skip=CKV_AZURE_139:GitHub-hosted CD runners push from changing Internet addresses, so the registry keeps a public endpoint; every call needs an Entra ID token with AcrPush/AcrPull, and there is no admin user or anonymous pull.
  #checkov:skip=CKV_AZURE_165:One region: the cluster and the registry live in the same region, and losing the region loses the cluster too; geo-replication would double the registry's cost for nothing.
  #checkov:skip=CKV_AZURE_166:Quarantine holds every pushed image until a scanner releases it; with no scanner wired to the quarantine API, deployments would never get their images. Instead CI scans every image before it is pushed (the scanner step of .github/workflows) and Defender for Containers scans the registry (below).
  #checkov:skip=CKV_AZURE_164:Docker Content Trust is being retired by Azure in favour of Notation signatures; images are sha-<full commit> tags pushed only by the CD identity, which locks each one right after pushing or importing it (az acr repository update --write-enabled false), so no tag can be moved or deleted.
  name                = local.acr_name
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  sku                 = "Premium"

  admin_enabled                 = false
  anonymous_pull_enabled        = false
  public_network_access_enabled = true
  zone_redundancy_enabled       = true
  data_endpoint_enabled         = true
  # Untagged manifests (superseded pushes) are deleted after a week.
  retention_policy_in_days = 7

  tags = local.tags
}

resource "azurerm_role_assignment" "aks_acr_pull" {
  scope                            = azurerm_container_registry.main.id
  role_definition_name             = "AcrPull"
  principal_id                     = azurerm_user_assigned_identity.aks_kubelet.principal_id
  skip_service_principal_aad_check = true
}

# Microsoft Defender for Containers: vulnerability assessment of every image in the
# subscription's registries (results under Defender for Cloud > Recommendations, "Azure registry
# container images should have vulnerabilities resolved") and agentless discovery of the
# clusters. A subscription-wide plan (defender_for_containers_enabled, off by default): one
# environment turns it on for every registry and cluster in the subscription, and destroying that
# environment turns it off again (Free tier) for all of them. azurerm creates it only from the
# Free tier: where the plan is on already (another environment's, or set by hand), the apply stops
# and asks for an import, so turn it on in exactly one environment per subscription, or import it
# (preflight.sh checks; README, "Image scanning"). Only the two extensions below are configured: the
# Defender sensor (ContainerSensor, a DaemonSet for runtime threat detection) would change the
# cluster outside Terraform; it belongs in the AKS resource's microsoft_defender block if wanted.
resource "azurerm_security_center_subscription_pricing" "containers" {
  count         = var.defender_for_containers_enabled ? 1 : 0
  tier          = "Standard"
  resource_type = "Containers"

  extension {
    name = "ContainerRegistriesVulnerabilityAssessments"
  }

  extension {
    name = "AgentlessDiscoveryForKubernetes"
  }
}
