"""The site's watcher and monitor in a process of their own (so the chaos suite can SIGKILL it):
``python -m tests.chaos.site_process DATA_DIR`` runs them against the local stack in DATA_DIR until
killed."""

from __future__ import annotations

import signal
import sys
import threading

from worker.local.profile import load_profile
from worker.site.service import Site


def main(data_dir: str) -> None:
    profile = load_profile(data_dir, require_running=False)
    # As `pool site serve` does: a restart that lands while PostgreSQL is in crash recovery waits for it.
    site = Site(profile.site_settings().model_copy(update={"database_wait_s": 60.0}))
    site.start_background()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("site ready", flush=True)
    stop.wait()
    site.close()


if __name__ == "__main__":
    main(sys.argv[1])
