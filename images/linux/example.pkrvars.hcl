# Example variable file: copy, fill in, and pass with scripts/build-image linux --var-file FILE.
# The service principal secret is better given as PKR_VAR_client_secret in the environment.
subscription_id        = "00000000-0000-0000-0000-000000000000"
tenant_id              = "00000000-0000-0000-0000-000000000000"
client_id              = "00000000-0000-0000-0000-000000000000"
client_secret          = "from-the-environment-preferably"
build_resource_group   = "compute-pools-images"
gallery_resource_group = "compute-pools-images"
gallery_name           = "computepools"
image_version          = "1.0.0"
replication_regions    = ["westeurope"]
agent_wheel            = "dist/compute_pools-0.1.0-py3-none-any.whl" # relative to where build-image runs
ml_profile             = "full"
ml_features            = ["torch"]
