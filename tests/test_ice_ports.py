"""UdpPortPool: single ports for ICE, even/odd pairs for RTP/RTCP, one shared pool."""

from __future__ import annotations

from twisted.trial import unittest

from epcscf.ice.ports import PortsExhausted, UdpPortPool


class UdpPortPoolTests(unittest.TestCase):
    def test_allocate_hands_out_each_port_once_then_raises_ports_exhausted(self) -> None:
        pool = UdpPortPool(20000, 20003)
        ports = {pool.allocate() for _ in range(4)}
        self.assertEqual(ports, {20000, 20001, 20002, 20003})
        self.assertEqual(pool.free_count, 0)
        error = self.assertRaises(PortsExhausted, pool.allocate)
        self.assertIn("20000-20003", str(error))

    def test_released_port_is_reused_last(self) -> None:
        pool = UdpPortPool(20000, 20002)
        first = pool.allocate()
        pool.release(first)
        self.assertEqual([pool.allocate(), pool.allocate(), pool.allocate()], [20001, 20002, first])

    def test_allocate_pair_is_even_then_odd(self) -> None:
        pool = UdpPortPool(20001, 20006)
        rtp, rtcp = pool.allocate_pair()
        self.assertEqual((rtp % 2, rtcp), (0, rtp + 1))
        self.assertTrue(pool.is_used(rtp) and pool.is_used(rtcp))

    def test_ice_ports_and_rtp_pairs_share_one_pool(self) -> None:
        pool = UdpPortPool(20000, 20003)
        single = pool.allocate()  # 20000: breaks the pair 20000/20001
        self.assertEqual(pool.allocate_pair(), (20002, 20003))
        self.assertRaises(PortsExhausted, pool.allocate_pair)
        self.assertEqual(pool.allocate(), 20001)
        pool.release(single, 20001, 20002, 20003)
        self.assertEqual((pool.free_count, pool.used_count), (4, 0))

    def test_release_is_idempotent_and_ignores_foreign_ports(self) -> None:
        pool = UdpPortPool(20000, 20001)
        port = pool.allocate()
        pool.release(port)
        pool.release(port, 9999)
        self.assertEqual(pool.free_count, 2)

    def test_bad_range_is_rejected(self) -> None:
        self.assertRaises(ValueError, UdpPortPool, 3000, 2000)
        self.assertRaises(ValueError, UdpPortPool, 0, 10)
