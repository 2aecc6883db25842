"""The site side of the loop: producer (submit), watcher (apply statuses), monitor (lost / dead-lettered
tasks, pools), the database (SQLAlchemy 2 + Alembic). Never imports ``worker.agent``: the two meet only
through ``worker.protocol``, as they do in production through the queues."""
