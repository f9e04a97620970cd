"""The operator's path through a real ``twistd epcscf`` daemon: scrape, SIGHUP, SIGTERM."""

from __future__ import annotations

import os
import re
import signal

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import Agent, readBody

from tests.support.processes import process_alive, run, wait_for
from tests.test_twistd import TWISTD, config_text


class DaemonOperationsTests(unittest.TestCase):
    async def test_scrape_reload_and_drain_of_a_daemon(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        base = os.path.join(directory, "epcscf.ini")
        override = os.path.join(directory, "local.ini")
        with open(base, "w") as handle:
            handle.write(config_text() + "[metrics]\nenabled = true\nport = 0\n[service]\ndrain_timeout = 5\n")
        with open(override, "w") as handle:
            handle.write("[ws]\nping_interval = 25\n")
        pidfile = os.path.join(directory, "epcscf.pid")
        logfile = os.path.join(directory, "epcscf.log")
        argv = [TWISTD, "--pidfile", pidfile, "--logfile", logfile, "epcscf", "--config", base, "--config", override]
        out, err, code = await run(argv)
        self.assertEqual((code, err), (0, b""), out)
        pid = int(open(pidfile).read())
        self.addCleanup(lambda: process_alive(pid) and os.kill(pid, signal.SIGKILL))

        def log_text() -> str:
            return open(logfile).read() if os.path.exists(logfile) else ""

        await wait_for(lambda: "Prometheus metrics on http://127.0.0.1:" in log_text())
        port = int(re.search(r"Prometheus metrics on http://127.0.0.1:(\d+)/metrics", log_text()).group(1))
        response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}/metrics".encode())
        body = (await readBody(response)).decode()
        self.assertEqual(response.code, 200)
        self.assertIn("\nepcscf_draining 0.0\n", body)
        self.assertIn("\nepcscf_ws_connections 0.0\n", body)

        # SIGHUP with a good file: the change is applied and logged.
        with open(override, "w") as handle:
            handle.write("[ws]\nping_interval = 20\n")
        os.kill(pid, signal.SIGHUP)
        await wait_for(lambda: "reload: [ws] ping_interval 25.0 → 20.0 (applied)" in log_text())
        # SIGHUP with a bad file: one line, and the daemon keeps running.
        with open(override, "w") as handle:
            handle.write("[ws]\nping_interval = often\n")
        os.kill(pid, signal.SIGHUP)
        await wait_for(lambda: "reload refused, running configuration kept:" in log_text())
        self.assertIn(
            f"reload refused, running configuration kept: {override}: [ws] ping_interval: "
            "expected a number of seconds, got 'often'",
            log_text(),
        )
        self.assertTrue(process_alive(pid))

        # SIGTERM: an idle daemon drains at once and stops cleanly.
        os.kill(pid, signal.SIGTERM)
        await wait_for(lambda: not process_alive(pid))
        text = log_text()
        self.assertIn("drained after 0.0 s (0 calls released)", text)
        self.assertIn("Server Shut Down.", text)
        self.assertNotIn("Traceback", text)
        self.assertFalse(os.path.exists(pidfile))
