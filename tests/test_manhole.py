"""The SSH console, logged into with the real OpenSSH client."""

from __future__ import annotations

import os
import shutil

from twisted.trial import unittest

from epcscf.ops.manhole import ManholeService, UsersFileError, hash_password, read_users
from tests.support.ssh_console import run_console


class ManholeTests(unittest.TestCase):
    def setUp(self) -> None:
        if shutil.which("ssh") is None:
            self.fail("the OpenSSH client (Debian openssh-client) is needed: bin/test installs it")
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.users = os.path.join(self.directory, "manhole.users")
        with open(self.users, "w") as handle:
            handle.write(f"# operators\nops:{hash_password('s3cret')}\n")
        self.host_key = os.path.join(self.directory, "state", "host_key")
        self.calls_seen = {"answer": 42}
        self.service = ManholeService(0, self.users, self.host_key, lambda: dict(self.calls_seen))
        self.service.startService()
        self.addCleanup(self.service.stopService)

    async def test_login_and_evaluate_an_expression(self) -> None:
        code, screen = await run_console(self.service.port, "ops", "s3cret", ["answer * 2", "'ok-' + str(len('abc'))"])
        self.assertIn(b"84", screen)
        self.assertIn(b"'ok-3'", screen)

    async def test_wrong_password_is_refused(self) -> None:
        code, screen = await run_console(self.service.port, "ops", "wrong", ["answer"])
        self.assertEqual(code, 255)
        self.assertIn(b"Permission denied", screen)
        self.assertNotIn(b">>> ", screen)

    def test_bound_to_loopback_only(self) -> None:
        self.assertEqual(self.service._listener.getHost().host, "127.0.0.1")

    def test_host_key_generated_once_and_private(self) -> None:
        self.assertTrue(os.path.exists(self.host_key))
        self.assertEqual(os.stat(self.host_key).st_mode & 0o777, 0o600)
        before = open(self.host_key, "rb").read()
        again = ManholeService(0, self.users, self.host_key, dict)
        again.startService()
        self.addCleanup(again.stopService)
        self.assertEqual(open(self.host_key, "rb").read(), before)

    def test_malformed_users_file_names_the_line(self) -> None:
        path = os.path.join(self.directory, "bad.users")
        with open(path, "w") as handle:
            handle.write("# header\nops:plaintext\n")
        error = self.assertRaises(UsersFileError, read_users, path)
        self.assertEqual(str(error), f"{path}:2: expected user:bcrypt-hash (make one with bin/manhole-passwd)")
