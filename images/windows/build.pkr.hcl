# UNTESTED: provision with image-windows.yml over WinRM, restart, run the Pester tests, sysprep.

build {
  sources = ["source.azure-arm.worker"]

  provisioner "ansible" {
    playbook_file    = "${path.root}/../../playbooks/image-windows.yml"
    user             = "packer"
    use_proxy        = false
    ansible_env_vars = ["ANSIBLE_CONFIG=${path.root}/../../playbooks/ansible.cfg"]
    extra_arguments = [
      "--extra-vars", "ansible_connection=winrm ansible_winrm_transport=ntlm ansible_winrm_server_cert_validation=ignore",
      "--extra-vars", "ansible_password=${build.Password}",
      "--extra-vars", "worker_agent_wheel=${var.agent_wheel}",
      "--extra-vars", "worker_agent_win_password=${var.agent_password}",
      "--extra-vars", "ml_base_profile=${var.ml_profile}",
      "--extra-vars", "{\"ml_base_features\": ${jsonencode(var.ml_features)}}",
    ]
  }

  provisioner "windows-restart" {
    restart_timeout = "30m"
  }

  provisioner "file" {
    sources     = ["${path.root}/tests/", "${path.root}/../../playbooks/toolset/toolset-windows.json"]
    destination = "C:/image-tests/"
  }

  provisioner "powershell" {
    environment_vars = ["RUN_TESTS=${var.run_image_tests}"]
    inline = [
      "if ($env:RUN_TESTS -ne 'true') { exit 0 }",
      "Install-PackageProvider -Name NuGet -MinimumVersion 2.8.5.201 -Force | Out-Null",
      "Install-Module -Name Pester -MinimumVersion 5.5 -Force -SkipPublisherCheck",
      "$result = Invoke-Pester -Path C:/image-tests -Output Detailed -PassThru",
      "Remove-Item -Recurse -Force C:/image-tests",
      "if ($result.FailedCount -gt 0) { exit 1 }",
    ]
  }

  # Generalize and wait until sysprep reports the image is ready (Azure's documented loop).
  provisioner "powershell" {
    inline = [
      "Remove-Item -Force -ErrorAction SilentlyContinue C:/ProgramData/pool-agent/agent.yaml",
      "while ((Get-Service RdAgent).Status -ne 'Running') { Start-Sleep -s 5 }",
      "while ((Get-Service WindowsAzureGuestAgent).Status -ne 'Running') { Start-Sleep -s 5 }",
      "& $env:SystemRoot\\System32\\Sysprep\\Sysprep.exe /oobe /generalize /quiet /quit /mode:vm",
      "while ($true) { $imageState = Get-ItemProperty HKLM:\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Setup\\State | Select-Object ImageState; if ($imageState.ImageState -ne 'IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE') { Write-Output $imageState.ImageState; Start-Sleep -s 10 } else { break } }",
    ]
  }
}
