"""The WWSF demo page in headless Chromium: real JsSIP, real WebSocket, through epcscf to the
embedded core (TS 24.371 WIC registration)."""

from __future__ import annotations

import json
import os
import shutil

from twisted.internet import defer
from twisted.trial import unittest

from epcscf.config import Listener
from epcscf.wwsf import WwsfService, WwsfSettings
from tests.support.browser import (
    DRIVER,
    open_registered_page,
    page_bundle_dir,
    png_summary,
    require_browser,
    start_browser,
    start_wwsf_deployment,
)
from tests.support.deployment import DOMAIN, USERS
from tests.support.processes import run, wait_for
from tests.support.wic import as_deferred

REGISTERED = '#registration-state[data-state="registered"]'
UNREGISTERED = '#registration-state[data-state="unregistered"]'


class WwsfRegistrationTests(unittest.TestCase):
    def setUp(self) -> None:
        require_browser(self)
        self.service, self.page_url = start_wwsf_deployment(self)

    def test_alice_and_bob_register_from_two_pages_and_unregister(self):
        return as_deferred(self._register())

    async def _register(self) -> None:
        browser = await start_browser(self)
        for user in ("alice", "bob"):
            opened = await browser.open(user, f"{self.page_url}?user={user}")
            self.assertEqual(opened["status"], 200)
            await browser.wait(user, "body[data-ready]")
            # Prefilled from /config.json: the embedded core's demo users and the [ws] listener.
            fields = await browser.evaluate(
                user,
                "() => ['identity', 'password', 'websocket-url', 'target'].map((id) => document.getElementById(id).value)",
            )
            other = "bob" if user == "alice" else "alice"
            self.assertEqual(fields, [f"sip:{user}@{DOMAIN}", USERS[user], self._ws_url(), other])
        for user in ("alice", "bob"):
            await browser.click(user, "#register")
        for user in ("alice", "bob"):
            await browser.wait(user, REGISTERED)
            self.assertEqual(await browser.text(user, "#registration-state"), f"registered as sip:{user}@{DOMAIN}")
            self.assertFalse(await browser.evaluate(user, "document.getElementById('call').disabled"))
        bindings = self.service.pcscf.registrations.all()
        self.assertEqual(sorted(binding.aor for binding in bindings), [f"sip:alice@{DOMAIN}", f"sip:bob@{DOMAIN}"])
        # Every flow came from the WWSF's page: the browser sent its Origin (RFC 6455 §10.2).
        self.assertEqual({flow.origin for flow in self.service.pcscf.flows}, {self.page_url.rstrip("/")})

        shots = []
        for user in ("alice", "bob"):
            path = os.path.abspath(f"wwsf-registered-{user}.png")
            await browser.screenshot(user, path)
            shots.append(png_summary(path))
        for shot in shots:
            self.assertGreaterEqual(shot.width, 800)
            self.assertGreater(shot.colours, 20)  # text, buttons, panels: not a blank page
            self.assertGreater(shot.luma_variance, 100.0)

        await browser.click("alice", "#unregister")
        await browser.wait("alice", UNREGISTERED)
        await wait_for(lambda: [b.aor for b in self.service.pcscf.registrations.all()] == [f"sip:bob@{DOMAIN}"])
        self.assertTrue(await browser.evaluate("alice", "document.getElementById('call').disabled"))
        self.assertEqual([line for line in browser.console(last=1000) if "error" in line.split(":")[0]], [])

    def _ws_url(self) -> str:
        listener = self.service.pcscf.listener("WS")
        assert listener is not None
        return f"ws://127.0.0.1:{listener.address.port}"

    def test_wrong_password_shows_the_failure(self):
        return as_deferred(self._wrong_password())

    async def _wrong_password(self) -> None:
        browser = await start_browser(self)
        await browser.open("alice", f"{self.page_url}?user=alice")
        await browser.wait("alice", "body[data-ready]")
        await browser.fill("alice", "#password", "not-the-password")
        await browser.click("alice", "#register")
        await browser.wait("alice", '#registration-state[data-state="failed"]')
        self.assertIn("failed", await browser.text("alice", "#registration-state"))
        self.assertEqual(self.service.pcscf.registrations.all(), [])
        # The form is usable again: the right password registers.
        await browser.fill("alice", "#password", USERS["alice"])
        await browser.click("alice", "#register")
        await browser.wait("alice", REGISTERED)

    def test_bad_websocket_url_and_bad_target_are_shown_on_the_page(self):
        return as_deferred(self._bad_input())

    async def _bad_input(self) -> None:
        browser = await start_browser(self)
        await browser.open("alice", f"{self.page_url}?user=alice")
        await browser.wait("alice", "body[data-ready]")
        good_url = await browser.evaluate("alice", "document.getElementById('websocket-url').value")
        # Not a URL at all: the form's own validation keeps it (the browser says why).
        await browser.fill("alice", "#websocket-url", "not a url")
        await browser.click("alice", "#register")
        self.assertFalse(await browser.evaluate("alice", "document.getElementById('websocket-url').validity.valid"))
        self.assertEqual(await browser.attribute("alice", "#registration-state", "data-state"), "unregistered")
        # A URL, but not a WebSocket one: JsSIP refuses it and the page says so.
        await browser.fill("alice", "#websocket-url", good_url.replace("ws://", "http://"))
        await browser.click("alice", "#register")
        await browser.wait("alice", '#registration-state[data-state="failed"]')
        self.assertIn("Invalid argument: http://", await browser.text("alice", "#registration-state"))
        self.assertFalse(await browser.evaluate("alice", "document.getElementById('register').disabled"))
        await browser.fill("alice", "#websocket-url", good_url)
        await browser.click("alice", "#register")
        await browser.wait("alice", REGISTERED)
        await browser.fill("alice", "#target", "bob@not a host")
        await browser.click("alice", "#call")
        await browser.wait_function("alice", "document.getElementById('peer').textContent.includes('cannot call')")
        self.assertEqual(await browser.attribute("alice", "#call-state", "data-state"), "idle")
        self.assertFalse(await browser.evaluate("alice", "document.getElementById('call').disabled"))

    def test_page_registers_again_on_a_new_flow_after_the_websocket_drops(self):
        return as_deferred(self._reconnect())

    async def _reconnect(self) -> None:
        browser = await start_browser(self)
        await open_registered_page(browser, self.page_url, "alice")
        [before] = self.service.pcscf.registrations.all()
        self.service.pcscf.flows.get(before.flow_id).connection.close(1001, "going away")
        await browser.wait("alice", '#registration-state[data-state="registering"]')
        self.assertEqual(await browser.text("alice", "#registration-state"), "connection lost: reconnecting…")
        # JsSIP reconnects after its back-off (2 s at first) and registers again (RFC 5626 §4.4.1).
        await browser.wait("alice", REGISTERED, timeout=20000)
        await wait_for(lambda: [b.flow_id for b in self.service.pcscf.registrations.all()] not in ([], [before.flow_id]))
        [after] = self.service.pcscf.registrations.all()
        self.assertEqual(after.aor, before.aor)
        self.assertNotEqual(after.flow_id, before.flow_id)

    def test_page_is_labelled_for_assistive_technology(self):
        return as_deferred(self._labels())

    async def _labels(self) -> None:
        browser = await start_browser(self)
        await browser.open("alice", f"{self.page_url}?user=alice")
        await browser.wait("alice", "body[data-ready]")
        report = await browser.evaluate(
            "alice",
            """() => ({
              unlabelled: [...document.querySelectorAll('input, select, meter')]
                .filter((control) => control.labels.length === 0).map((control) => control.id),
              unnamedButtons: [...document.querySelectorAll('button')]
                .filter((button) => !button.textContent.trim()).map((button) => button.id),
              live: ['page-status', 'registration-state', 'call-state', 'log']
                .map((id) => document.getElementById(id).getAttribute('aria-live')),
              toggles: ['mute', 'hold'].map((id) => document.getElementById(id).getAttribute('aria-pressed')),
              lang: document.documentElement.lang,
            })""",
        )
        self.assertEqual(
            report,
            {"unlabelled": [], "unnamedButtons": [], "live": ["polite"] * 4, "toggles": ["false", "false"], "lang": "en"},
        )


class WwsfPageErrorTests(unittest.TestCase):
    def setUp(self) -> None:
        require_browser(self)

    def test_no_usable_websocket_listener_is_said_on_the_page(self):
        return as_deferred(self._no_listener())

    async def _no_listener(self) -> None:
        # An https page may only use wss: with only ws listeners the WWSF offers no URL.
        settings = WwsfSettings(DOMAIN, lambda: [], page_bundle_dir())
        wwsf = WwsfService(settings, (Listener("http", "127.0.0.1", 0),))
        wwsf.startService()
        self.addCleanup(wwsf.stopService)
        browser = await start_browser(self)
        await browser.open("page", wwsf.origins[0] + "/")
        await browser.wait("page", "#page-status[data-error]")
        self.assertEqual(
            await browser.text("page", "#page-status"),
            "Cannot load the WWSF configuration: no eP-CSCF WebSocket listener is usable from http:// pages",
        )
        self.assertIsNone(await browser.attribute("page", "body", "data-ready"))


class BrowserDriverTests(unittest.TestCase):
    """The driver's steps-file mode (for scripts and other tests): runs in order, stops at the
    first failure with exit status 1, and answers every command with one JSON line."""

    def setUp(self) -> None:
        require_browser(self)

    def test_steps_file_runs_in_order_and_stops_at_the_first_failure(self):
        return defer.ensureDeferred(self._steps())

    async def _steps(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        steps = [
            {"id": 1, "op": "open", "page": "p", "url": "data:text/html,<h1 id=t>hello</h1>"},
            {"id": 2, "op": "text", "page": "p", "selector": "#t"},
            {"id": 3, "op": "evaluate", "page": "p", "expression": "(n) => n * 2", "arg": 21},
            {"id": 4, "op": "screenshot", "page": "p", "path": os.path.join(directory, "p.png")},
            {"id": 5, "op": "fly", "page": "p"},
            {"id": 6, "op": "text", "page": "p", "selector": "#t"},
        ]
        path = os.path.join(directory, "steps.json")
        with open(path, "w") as handle:
            json.dump(steps, handle)
        out, err, code = await run([shutil.which("node") or "node", DRIVER, os.path.join(directory, "profile"), path])
        events = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
        answers = [(e["id"], e["event"], e.get("result")) for e in events if e["event"] in ("done", "failed")]
        self.assertEqual(code, 1, err)
        self.assertEqual([a[:2] for a in answers], [(1, "done"), (2, "done"), (3, "done"), (4, "done"), (5, "failed")])
        self.assertEqual(answers[1][2], "hello")
        self.assertEqual(answers[2][2], 42)
        self.assertIn("unknown op", next(e["error"] for e in events if e.get("id") == 5))
        self.assertEqual(events[0]["event"], "ready")
        self.assertEqual(events[-1]["event"], "exit")
        self.assertGreater(png_summary(os.path.join(directory, "p.png")).colours, 1)
