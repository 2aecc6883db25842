# UNTESTED: Pester 5 image tests for a Windows worker, driven by the same toolset file as ml_base.
# Packer uploads this folder and toolset-windows.json to C:/image-tests and runs Invoke-Pester.

BeforeDiscovery {
    $toolsetPath = Join-Path $PSScriptRoot 'toolset-windows.json'
    if (-not (Test-Path $toolsetPath)) { $toolsetPath = Join-Path $PSScriptRoot '../../../playbooks/toolset/toolset-windows.json' }
    $script:Toolset = Get-Content -Raw $toolsetPath | ConvertFrom-Json
    $script:Manifest = Get-Content -Raw 'C:/ProgramData/compute-pools/toolset.json' | ConvertFrom-Json
    $script:PythonPackages = @($Manifest.python_packages | ForEach-Object { @{ Name = $_.name; Import = $_.import } })
}

BeforeAll {
    $script:MlPython = 'C:/ml/venv/Scripts/python.exe'
    $script:AgentDir = 'C:/pool-agent'
    $script:ConfigPath = 'C:/ProgramData/pool-agent/agent.yaml'
}

Describe 'ml_base' {
    It 'recorded the toolset selection' {
        Test-Path 'C:/ProgramData/compute-pools/toolset.json' | Should -BeTrue
    }

    It 'has the shared ML environment' {
        Test-Path $MlPython | Should -BeTrue
    }

    It 'imports <Name>' -ForEach $PythonPackages {
        & $MlPython -c "import $Import"
        $LASTEXITCODE | Should -Be 0
    }
}

Describe 'worker_agent' {
    It 'installed the agent' {
        & "$AgentDir/venv/Scripts/pool.exe" agent --help | Out-Null
        $LASTEXITCODE | Should -Be 0
    }

    It 'registered the service to start automatically' {
        $service = Get-CimInstance Win32_Service -Filter "Name='pool-agent'"
        $service | Should -Not -BeNullOrEmpty
        $service.StartMode | Should -Be 'Auto'
        $service.StartName | Should -Match 'pool-agent'
    }

    It 'keeps the config directory private' {
        $acl = Get-Acl (Split-Path $ConfigPath)
        $acl.AreAccessRulesProtected | Should -BeTrue
        ($acl.Access | Where-Object { $_.IdentityReference -match 'Users$|Everyone' }) | Should -BeNullOrEmpty
    }
}

Describe 'os_updates' {
    It 'sets the Windows Update policy' {
        $au = Get-ItemProperty 'HKLM:/SOFTWARE/Policies/Microsoft/Windows/WindowsUpdate/AU'
        $au.NoAutoUpdate | Should -Be 0
        $au.NoAutoRebootWithLoggedOnUsers | Should -Be 1
    }
}
