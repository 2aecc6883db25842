"""The Pulumi program that creates a competition's pool in Azure (see docs/infra.md).

Components: :class:`infra.queues.CompetitionQueues`, :class:`infra.storage.CompetitionStorage`,
:class:`infra.workers.WorkerPool`; the stack config model is :mod:`worker.stackconfig`.
"""
