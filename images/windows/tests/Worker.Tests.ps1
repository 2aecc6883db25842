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

    # What the jobobject driver's availability check requires (kept in step by tests/playbooks/test_windows_role.py).
    It 'has pywin32 in the agent venv (<_>)' -ForEach @('win32api', 'win32con', 'win32event', 'win32file', 'win32job', 'win32process', 'win32security') {
        & "$AgentDir/venv/Scripts/python.exe" -c "import $_"
        $LASTEXITCODE | Should -Be 0
    }

    It 'created the pool-sandbox account' {
        Get-LocalUser -Name 'pool-sandbox' | Should -Not -BeNullOrEmpty
        (Get-LocalGroupMember -Group Administrators | Where-Object { $_.Name -match 'pool-sandbox$' }) | Should -BeNullOrEmpty
    }

    It 'keeps the sandbox password readable by the service account only' {
        $file = 'C:/ProgramData/pool-agent/sandbox-password.txt'
        (Get-Item $file).Length | Should -BeGreaterThan 20
        $acl = Get-Acl $file
        $acl.AreAccessRulesProtected | Should -BeTrue
        $who = $acl.Access | ForEach-Object { $_.IdentityReference.Value -replace '^.*\\', '' }
        $who | Should -Not -Contain 'Users'
        $who | Should -Not -Contain 'Everyone'
        $who | Should -Contain 'pool-agent'
        # The service's launcher sets POOL_SANDBOX_PASSWORD from it.
        Get-Content -Raw "$AgentDir/start_agent.py" | Should -Match 'POOL_SANDBOX_PASSWORD'
    }

    It 'schedules the termination watcher at boot' {
        $task = Get-ScheduledTask -TaskName 'pool-termination-watch'
        $task.State | Should -Not -Be 'Disabled'
        $task.Principal.UserId | Should -Match 'SYSTEM'
        Test-Path "$AgentDir/termination_watch.py" | Should -BeTrue
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
