"""Work that one site replica must do at a time (the monitor: resending unsent tasks, requeueing lost
ones, draining dead letters) is gated by a lease row in the database: the holder renews it every
tick; when it stops renewing (crash, stop), another replica takes it over after ``ttl_s``.

Replicas need nothing else: the watcher's receivers compete for statuses and their version-checked
updates apply each status once; a submit sends its task once (message id = task:attempt, duplicate
detection drops a resend that overlaps)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from worker.site.db import transaction
from worker.site.models import SiteLease, utcnow


def hold(sessions: sessionmaker[Session], name: str, holder: str, ttl_s: float = 10.0) -> bool:
    """Take or renew the lease; True while ``holder`` has it. Renewed (a write) only in the second half
    of its term: most ticks cost one read."""
    with sessions() as session:
        lease = session.get(SiteLease, name)
        if lease is not None:
            left = (lease.expires_at - utcnow()).total_seconds()
            if lease.holder == holder and left > ttl_s / 2:
                return True
            if lease.holder != holder and left > 0:
                return False
    try:
        with transaction(sessions) as session:
            now = utcnow()
            lease = session.get(SiteLease, name, with_for_update=True)
            if lease is None:
                session.add(SiteLease(name=name, holder=holder, expires_at=now + timedelta(seconds=ttl_s)))
                return True
            if lease.holder == holder or lease.expires_at < now:
                lease.holder = holder
                lease.expires_at = now + timedelta(seconds=ttl_s)
                return True
            return False
    except (IntegrityError, OperationalError):  # another replica inserted it first / lock timeout
        return False


def release(sessions: sessionmaker[Session], name: str, holder: str) -> None:
    """On a clean stop: let another replica take over at once."""
    with transaction(sessions) as session:
        lease = session.get(SiteLease, name, with_for_update=True)
        if lease is not None and lease.holder == holder:
            session.delete(lease)


def holder_of(sessions: sessionmaker[Session], name: str) -> str | None:
    with sessions() as session:
        lease = session.get(SiteLease, name)
        return lease.holder if lease is not None and lease.expires_at >= utcnow() else None
