"""The eP-CSCF's ICIDs (RFC 7315 §4.6): globally unique without a random draw per request."""

from __future__ import annotations

import re
import subprocess
import sys

from twisted.trial import unittest

from epcscf.pcscf.edge import new_icid

ICID = re.compile(r"[0-9a-f]{32}\Z")


class IcidTests(unittest.TestCase):
    def test_each_icid_is_new_and_32_hex_digits(self) -> None:
        icids = [new_icid() for _ in range(1000)]
        self.assertEqual(len(set(icids)), len(icids))
        for icid in icids:
            self.assertRegex(icid, ICID)

    def test_another_process_makes_different_icids(self) -> None:
        # The counter restarts in every process: the random per-process prefix keeps them apart.
        script = "from epcscf.pcscf.edge import new_icid; print(new_icid())"
        other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()
        self.assertRegex(other, ICID)
        mine = new_icid()
        self.assertNotEqual(other[:16], mine[:16])
