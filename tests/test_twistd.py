"""`twistd epcscf` as a user runs it: plugin discovery, reactor choice, errors, daemon life."""

from __future__ import annotations

import os
import signal

from twisted.trial import unittest

from tests.support.daemon import TWISTED_NOISE, Daemon, register_alice, write_daemon_config
from tests.support.processes import TOP, VENV_BIN, catches_signal, child_env, process_alive, run, wait_for

TWISTD = os.path.join(VENV_BIN, "twistd")


def config_text(manhole_port: int = 0) -> str:
    users = os.path.join(TOP, "etc", "manhole.users")
    return f"""\
[sip]
listen = udp:127.0.0.1:0
[ws]
listen = ws:127.0.0.1:0
[core]
mode = external
next_hop = sip:127.0.0.1:5999
[manhole]
enabled = true
port = {manhole_port}
users = {users}
"""


class TwistdTests(unittest.TestCase):
    def write_config(self, text: str) -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "epcscf.ini")
        with open(path, "w") as handle:
            handle.write(text)
        return path

    async def test_plugin_is_listed(self) -> None:
        out, err, code = await run([TWISTD, "--help"])
        self.assertEqual(code, 0)
        self.assertRegex(out.decode(), r"\n\s+epcscf\s+eP-CSCF")

    async def test_wrong_reactor_is_a_one_line_usage_error(self) -> None:
        out, err, code = await run([TWISTD, "-r", "poll", "-n", "epcscf", "--config", self.write_config(config_text())])
        self.assertEqual(code, 2)
        self.assertEqual(
            err.decode(), "twistd epcscf: usage error: epcscf needs the asyncio reactor (-r asyncio); got PollReactor\n"
        )

    async def test_bad_config_is_one_line_and_nonzero(self) -> None:
        path = self.write_config(config_text() + "[log]\nlevel = loud\n")
        out, err, code = await run([TWISTD, "-n", "epcscf", "--config", path])
        self.assertEqual(code, 2)
        self.assertEqual(
            err.decode(),
            f"twistd epcscf: configuration error: {path}: [log] level: must be one of debug, info, warn, error, critical, got 'loud'\n",
        )
        self.assertNotIn(b"Traceback", out + err)

    async def test_config_reference(self) -> None:
        out, err, code = await run([TWISTD, "epcscf", "--config-reference"])
        self.assertEqual(code, 0)
        self.assertIn("[media]\n  bind_address = 127.0.0.1", out.decode())

    async def test_daemon_starts_on_asyncio_and_stops_cleanly_on_sigterm(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        pidfile = os.path.join(directory, "epcscf.pid")
        logfile = os.path.join(directory, "epcscf.log")
        config = self.write_config(config_text())
        out, err, code = await run([TWISTD, "--pidfile", pidfile, "--logfile", logfile, "epcscf", "--config", config])
        self.assertEqual((code, err), (0, b""), out)
        pid = int(open(pidfile).read())
        self.addCleanup(lambda: process_alive(pid) and os.kill(pid, signal.SIGKILL))

        def log_text() -> str:
            return open(logfile).read() if os.path.exists(logfile) else ""

        await wait_for(lambda: "manhole SSH console on 127.0.0.1:" in log_text())
        self.assertIn("reactor class: epcscf.event_loop.EdgeReactor", log_text())
        await wait_for(lambda: catches_signal(pid, signal.SIGTERM))
        os.kill(pid, signal.SIGTERM)
        await wait_for(lambda: not process_alive(pid))
        self.assertFalse(os.path.exists(pidfile))
        self.assertIn("Server Shut Down.", log_text())
        self.assertNotIn("Traceback", log_text())

    async def test_json_log_format(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        logfile = os.path.join(directory, "epcscf.log")
        pidfile = os.path.join(directory, "epcscf.pid")
        config = self.write_config(config_text() + "[log]\nformat = json\nlevel = warn\n")
        out, err, code = await run([TWISTD, "--pidfile", pidfile, "--logfile", logfile, "epcscf", "--config", config])
        self.assertEqual(code, 0, err)
        pid = int(open(pidfile).read())
        self.addCleanup(lambda: process_alive(pid) and os.kill(pid, signal.SIGKILL))
        await wait_for(lambda: catches_signal(pid, signal.SIGTERM))
        os.kill(pid, signal.SIGTERM)
        await wait_for(lambda: not process_alive(pid))
        import json

        lines = [line for line in open(logfile).read().splitlines() if line.strip()]
        events = [json.loads(line) for line in lines]
        # level = warn: the info lines of a normal start and stop are filtered out
        self.assertFalse([e for e in events if e.get("log_level", {}).get("name") == "info"], lines)

    async def test_info_log_has_no_twisted_line_per_listener_socket_or_connection(self) -> None:
        # Every kind of listener, an inbound WebSocket and an outbound TCP connection to the core.
        directory = os.path.abspath(self.mktemp())
        config = write_daemon_config(directory, os.path.join(TOP, "etc", "manhole.users"))
        daemon = Daemon.start(TWISTD, config, directory, child_env())
        self.addCleanup(daemon.kill)
        self.assertEqual(await register_alice(await daemon.ws_url()), 200)
        self.assertEqual(await daemon.stop(), (None, signal.SIGTERM), daemon.output)
        self.assertIn("Server Shut Down.", daemon.output)
        self.assertIn("drained after", daemon.output)
        self.assertEqual([m.group(0) for m in TWISTED_NOISE.finditer(daemon.output)], [], daemon.output)
