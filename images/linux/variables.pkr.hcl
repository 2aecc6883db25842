# Inputs of the Linux worker image. Pass them with -var-file (see example.pkrvars.hcl); secrets
# (client_secret) preferably through PKR_VAR_client_secret in the environment.

packer {
  required_version = ">= 1.6.6"
}

# --- Azure ----------------------------------------------------------------------------------------
variable "subscription_id" {
  type        = string
  description = "Azure subscription that holds the gallery."
}

variable "tenant_id" {
  type        = string
  description = "Azure AD tenant of the service principal."
}

variable "client_id" {
  type        = string
  description = "Service principal (app) id used by Packer."
}

variable "client_secret" {
  type        = string
  description = "Service principal secret (PKR_VAR_client_secret)."
  sensitive   = true
}

variable "location" {
  type        = string
  default     = "westeurope"
  description = "Region the build VM runs in."
}

variable "vm_size" {
  type        = string
  default     = "Standard_D4s_v5"
  description = "Size of the temporary build VM."
}

variable "build_resource_group" {
  type        = string
  description = "Resource group for the managed image Packer creates on the way to the gallery."
}

# --- Gallery destination --------------------------------------------------------------------------
variable "gallery_resource_group" {
  type        = string
  description = "Resource group of the Azure Compute Gallery."
}

variable "gallery_name" {
  type        = string
  description = "Azure Compute Gallery (Shared Image Gallery) name."
}

variable "image_definition" {
  type        = string
  default     = "compute-pools-worker-linux"
  description = "Image definition in the gallery (create it once: Linux, Generalized, Gen2)."
}

variable "image_version" {
  type        = string
  description = "Gallery image version to create, e.g. 1.0.0 (major.minor.patch)."
}

variable "replication_regions" {
  type        = list(string)
  default     = ["westeurope"]
  description = "Regions the image version is replicated to (where pools are created)."
}

# --- Base image -----------------------------------------------------------------------------------
variable "source_image" {
  type = object({
    publisher = string
    offer     = string
    sku       = string
  })
  default = {
    publisher = "Debian"
    offer     = "debian-12"
    sku       = "12-gen2"
  }
  description = "Marketplace image the worker is built from (Debian 12 or Ubuntu 22.04/24.04)."
}

# --- What goes into the image ---------------------------------------------------------------------
variable "agent_wheel" {
  type        = string
  description = "Path of the compute_pools wheel to install (pip wheel --no-deps -w dist/ .)."
}

variable "ml_profile" {
  type        = string
  default     = "full"
  description = "Toolset profile (playbooks/toolset/toolset-linux.json): full or minimal."
}

variable "ml_features" {
  type        = list(string)
  default     = ["torch"]
  description = "Optional toolset entries: torch (CPU PyTorch), cuda (NVIDIA driver + CUDA PyTorch, untested)."
}

variable "run_image_tests" {
  type        = bool
  default     = true
  description = "Run images/linux/tests (pytest-testinfra) against the build VM before generalizing it."
}
