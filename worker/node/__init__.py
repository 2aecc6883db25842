"""``pool node``: operate worker machines over SSH with paramiko (docs/operations.md).

``inventory`` (targets from an Ansible inventory / --host), ``ssh`` (strict paramiko sessions, jump
host, one-line errors), ``remote`` (the commands per OS: shell + systemd, or PowerShell), ``ops`` (one
operation on one host), ``runner`` (many hosts at once, progress, result table), ``commands`` (CLI).
"""
