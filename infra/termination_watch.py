#!/usr/bin/env python3
"""Runs on every Linux worker VM (installed by the Pulumi program's cloud-init; stdlib only).

Azure announces a scale-in deletion, a Spot eviction, a reboot or a redeploy of this VM as a
*scheduled event* in the instance metadata service, then waits (the scale set's termination notice,
5-15 minutes; at least 30 s for Spot) before acting. This watcher polls those events; when one
targets this VM it stops the agent service — the agent, on SIGTERM, stops taking tasks and finishes
or abandons the current one, which Service Bus then hands to another worker — and acknowledges the
event so Azure proceeds at once instead of waiting out the notice.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request

IMDS = "http://169.254.169.254/metadata"
EVENTS_API = "2020-07-01"
DISRUPTIVE = {"Terminate", "Preempt", "Reboot", "Redeploy"}


def _request(url: str, body: dict | None = None, timeout: float = 5.0) -> bytes:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Metadata": "true"},
                                 method="POST" if data is not None else "GET")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def instance_name(imds: str) -> str:
    return _request(f"{imds}/instance/compute/name?api-version=2021-02-01&format=text").decode().strip()


def events_for(document: dict, name: str) -> list[dict]:
    """The scheduled, disruptive events that target this VM."""
    return [e for e in document.get("Events", [])
            if e.get("EventType") in DISRUPTIVE and e.get("EventStatus", "Scheduled") == "Scheduled"
            and name in e.get("Resources", [])]


def check_once(imds: str, name: str, stop_command: str) -> list[str]:
    """One poll: stop the agent and approve every event aimed at us; returns the approved ids."""
    url = f"{imds}/scheduledevents?api-version={EVENTS_API}"
    mine = events_for(json.loads(_request(url)), name)
    if not mine:
        return []
    kinds = ", ".join(sorted({e["EventType"] for e in mine}))
    print(f"scheduled event ({kinds}) for {name}: stopping the agent", flush=True)
    # Blocks until the agent has finished or handed back its task (systemd's stop timeout bounds it).
    subprocess.run(stop_command, shell=True, check=False)
    ids = [e["EventId"] for e in mine]
    _request(url, {"StartRequests": [{"EventId": i} for i in ids]})
    print(f"approved {', '.join(ids)}", flush=True)
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imds", default=IMDS)
    parser.add_argument("--stop-command", default="systemctl stop pool-agent")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--once", action="store_true", help="poll once and exit (tests)")
    args = parser.parse_args(argv)
    name = None
    while True:
        try:
            name = name or instance_name(args.imds)
            check_once(args.imds, name, args.stop_command)
        except (OSError, ValueError) as exc:  # IMDS briefly unreachable: try again next round
            print(f"scheduled events unavailable: {exc}", file=sys.stderr, flush=True)
        if args.once:
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
