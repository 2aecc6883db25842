# UNTESTED: the Windows build VM (WinRM over HTTPS) and its gallery destination.

locals {
  build_time = formatdate("YYYYMMDDhhmmss", timestamp())
}

source "azure-arm" "worker" {
  subscription_id = var.subscription_id
  tenant_id       = var.tenant_id
  client_id       = var.client_id
  client_secret   = var.client_secret

  os_type         = "Windows"
  image_publisher = var.source_image.publisher
  image_offer     = var.source_image.offer
  image_sku       = var.source_image.sku
  location        = var.location
  vm_size         = var.vm_size

  communicator   = "winrm"
  winrm_use_ssl  = true
  winrm_insecure = true
  winrm_timeout  = "15m"
  winrm_username = "packer"

  managed_image_name                = "${var.image_definition}-${local.build_time}"
  managed_image_resource_group_name = var.build_resource_group

  shared_image_gallery_destination {
    subscription        = var.subscription_id
    resource_group      = var.gallery_resource_group
    gallery_name        = var.gallery_name
    image_name          = var.image_definition
    image_version       = var.image_version
    replication_regions = var.replication_regions
  }

  azure_tags = {
    project     = "compute-pools"
    role        = "worker"
    ml_profile  = var.ml_profile
    ml_features = join(",", var.ml_features)
  }
}
