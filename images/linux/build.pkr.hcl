# Provision with the image playbook, test the result, generalize.

build {
  sources = ["source.azure-arm.worker"]

  # Marketplace images have python3; make sure apt's Python bindings are there for Ansible.
  provisioner "shell" {
    execute_command = "chmod +x {{ .Path }}; {{ .Vars }} sudo -E sh '{{ .Path }}'"
    inline = [
      "cloud-init status --wait || true",
      "apt-get update -qq",
      "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-apt",
    ]
  }

  provisioner "ansible" {
    playbook_file    = "${path.root}/../../playbooks/image-linux.yml"
    user             = "packer"
    ansible_env_vars = ["ANSIBLE_CONFIG=${path.root}/../../playbooks/ansible.cfg", "ANSIBLE_HOST_KEY_CHECKING=False"]
    extra_arguments = [
      "--extra-vars", "worker_agent_wheel=${var.agent_wheel}",
      "--extra-vars", "ml_base_profile=${var.ml_profile}",
      "--extra-vars", "{\"ml_base_features\": ${jsonencode(var.ml_features)}}",
    ]
  }

  # The image tests (the same ones the booted-rootfs test runs) over SSH from the build host.
  provisioner "shell-local" {
    environment_vars = ["SSH_PRIVATE_KEY=${build.SSHPrivateKey}", "RUN_TESTS=${var.run_image_tests}"]
    inline = [
      "[ \"$RUN_TESTS\" = true ] || exit 0",
      "key=$(mktemp) && printf '%s\\n' \"$SSH_PRIVATE_KEY\" > \"$key\" && chmod 600 \"$key\"",
      "python3 -m pytest -q -p no:cacheprovider -o addopts= '${path.root}/tests' --hosts='ssh://${build.User}@${build.Host}:${build.Port}' --sudo --ssh-identity-file=\"$key\" --ssh-extra-args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'; rc=$?",
      "rm -f \"$key\"; exit $rc",
    ]
  }

  # Generalize: remove the packer user, host keys and machine id (Azure Linux agent).
  provisioner "shell" {
    execute_command = "chmod +x {{ .Path }}; {{ .Vars }} sudo -E sh '{{ .Path }}'"
    inline_shebang  = "/bin/sh -x"
    inline = [
      "apt-get clean",
      "rm -f /etc/pool-agent/agent.yaml",
      "/usr/sbin/waagent -force -deprovision+user && export HISTSIZE=0 && sync",
    ]
  }
}
