"""The local Azure Service Bus endpoint: an AMQP 1.0 broker the unchanged azure-servicebus SDK talks to.

Modules: ``config`` (YAML), ``auth`` (SAS), ``codec`` (message sections), ``store`` (SQLite WAL),
``broker`` (queue semantics), ``server`` (AMQP via proton's engine), ``management`` ($management
operations), ``http`` (health, metrics, runtime queues), ``app`` (serve), ``launcher`` (child process).
"""
