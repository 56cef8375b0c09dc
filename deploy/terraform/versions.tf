# Terraform and provider versions, and the azurerm provider's settings for this root module.
terraform {
  required_version = ">= 1.6.0"

  required_providers {
    azurerm = {
      source = "hashicorp/azurerm"
      # The arguments used here (rbac_authorization_enabled, user_assigned_identity_id on federated
      # credentials, web_app_routing.default_nginx_controller, storage_account_id on containers,
      # the storage data_plane_available feature) were checked against the 4.81 documentation.
      version = "~> 4.81"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.7"
    }
    time = {
      source  = "hashicorp/time"
      version = "~> 0.13"
    }
    # Only modules/atlas uses it (atlas_enabled); init downloads it either way. The 2.x schema
    # (replication_specs as a list of objects, use_effective_fields) was checked against the
    # 2.16 documentation.
    mongodbatlas = {
      source  = "mongodb/mongodbatlas"
      version = "~> 2.16"
    }
  }
}

# Credentials from the environment, never from variables: MONGODB_ATLAS_CLIENT_ID and
# MONGODB_ATLAS_CLIENT_SECRET (an Atlas service account). Unused while atlas_enabled is false.
provider "mongodbatlas" {}

provider "azurerm" {
  # null: taken from ARM_SUBSCRIPTION_ID (or `az account show` with Azure CLI authentication).
  subscription_id = var.subscription_id

  # The storage account allows no shared keys, so every storage call must use Entra ID.
  storage_use_azuread = true

  features {
    key_vault {
      # Purge protection is on: a destroyed vault stays recoverable for its retention period,
      # and a new apply with the same name recovers it instead of failing.
      purge_soft_delete_on_destroy    = false
      recover_soft_deleted_key_vaults = true
    }

    storage {
      # The account is reachable only through its private endpoint. Without this the provider
      # polls the blob/queue data plane after creating it, which fails from outside the VNet;
      # everything configured here (containers, lifecycle, properties) goes through ARM instead.
      data_plane_available = false
    }

    resource_group {
      # Refuse to delete the resource group while it still holds resources this state does not
      # know about (something added by hand): destroy must not take them along silently.
      prevent_deletion_if_contains_resources = true
    }
  }
}
