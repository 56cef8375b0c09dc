# Remote state: an Azure Storage blob, in an account created once by hand before the first
# `terraform init` (README.md, "Bootstrap the state storage"). The location comes from
# `-backend-config` (see backend.hcl.example) so that one module serves every environment.
terraform {
  backend "azurerm" {
    # Entra ID (the caller's `az login` or OIDC identity) instead of a storage account key: the
    # caller needs "Storage Blob Data Contributor" on the state container.
    use_azuread_auth = true
  }
}
