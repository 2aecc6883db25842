"""The worker VM's scheduled-events watcher, against a real HTTP server playing the metadata service."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from infra import termination_watch

EVENTS = {"DocumentIncarnation": 3, "Events": [
    {"EventId": "e-mine", "EventType": "Terminate", "ResourceType": "VirtualMachine",
     "Resources": ["vmss_3"], "EventStatus": "Scheduled", "NotBefore": "Mon, 30 Nov 2026 10:00:00 GMT"},
    {"EventId": "e-other", "EventType": "Terminate", "ResourceType": "VirtualMachine",
     "Resources": ["vmss_7"], "EventStatus": "Scheduled", "NotBefore": ""},
    {"EventId": "e-freeze", "EventType": "Freeze", "ResourceType": "VirtualMachine",
     "Resources": ["vmss_3"], "EventStatus": "Scheduled", "NotBefore": ""},
]}


@pytest.fixture
def imds():
    state = {"events": EVENTS, "approved": [], "headers": []}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _reply(self, body: bytes, ctype: str = "application/json"):
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            state["headers"].append(self.headers.get("Metadata"))
            if self.path.startswith("/metadata/instance/compute/name"):
                self._reply(b"vmss_3", "text/plain")
            elif self.path.startswith("/metadata/scheduledevents"):
                self._reply(json.dumps(state["events"]).encode())
            else:
                self.send_error(404)

        def do_POST(self):
            length = int(self.headers["Content-Length"])
            state["approved"].append(json.loads(self.rfile.read(length)))
            self._reply(b"")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}/metadata"
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_stops_the_agent_then_approves_only_its_own_event(imds, tmp_path):
    marker = tmp_path / "stopped"
    stop = f"{sys.executable} -c \"open('{marker}', 'w').write('x')\""
    assert termination_watch.main(["--imds", imds["url"], "--stop-command", stop, "--once"]) == 0
    assert marker.exists()
    assert imds["approved"] == [{"StartRequests": [{"EventId": "e-mine"}]}]
    assert set(imds["headers"]) == {"true"}  # IMDS refuses requests without Metadata: true


def test_nothing_for_us_means_nothing_done(imds, tmp_path):
    imds["events"] = {"DocumentIncarnation": 4, "Events": [EVENTS["Events"][1], EVENTS["Events"][2]]}
    marker = tmp_path / "stopped"
    assert termination_watch.check_once(imds["url"], "vmss_3", f"touch {marker}") == []
    assert not marker.exists() and imds["approved"] == []


def test_unreachable_metadata_service_is_survived(capsys):
    assert termination_watch.main(["--imds", "http://127.0.0.1:9/metadata", "--once"]) == 0
    assert "scheduled events unavailable" in capsys.readouterr().err
