"""The transaction machines' action dispatch (``TransactionMachine.action_functions``): each
action of a machine's tables runs the method ``ACTION_METHODS`` names, as the dispatch by
name did, and the member constants read on every message are the members themselves."""

from __future__ import annotations

from twisted.trial import unittest

from epcscf.sip import proxy, transaction_client, transaction_machine, transaction_server
from epcscf.sip.proxy_policy import BranchState, ProxyState
from epcscf.sip.transaction_client import ClientTransaction
from epcscf.sip.transaction_machine import (
    ACTION_METHODS,
    INVITE_CLIENT,
    INVITE_SERVER,
    NON_INVITE_CLIENT,
    NON_INVITE_SERVER,
    Event,
    State,
)
from epcscf.sip.transaction_server import ServerTransaction
from epcscf.pcscf import limits


class ActionDispatchTests(unittest.TestCase):
    def test_every_action_of_a_machines_tables_runs_the_method_named_for_it(self) -> None:
        for machine, tables in ((ClientTransaction, (INVITE_CLIENT, NON_INVITE_CLIENT)),
                                (ServerTransaction, (INVITE_SERVER, NON_INVITE_SERVER))):
            actions = {action for table in tables for row in table.values() for t in row.values() for action in t.actions}
            self.assertTrue(actions)
            for action in actions:
                self.assertIs(machine.action_functions[action], getattr(machine, ACTION_METHODS[action]), action)

    def test_a_subclass_dispatches_to_its_own_overrides(self) -> None:
        class Recording(ClientTransaction):
            def _pass_response_to_tu(self, response: object) -> None:
                pass

        action = transaction_machine.Action.PASS_RESPONSE_TO_TU
        self.assertIs(Recording.action_functions[action], Recording._pass_response_to_tu)
        self.assertIsNot(Recording.action_functions[action], ClientTransaction.action_functions[action])

    def test_member_constants_are_the_members(self) -> None:
        self.assertIs(transaction_machine.TERMINATED, State.TERMINATED)
        for module, enum_class, prefix in ((transaction_client, State, "_"), (transaction_client, Event, "_"),
                                           (transaction_server, State, "_"), (transaction_server, Event, "_"),
                                           (proxy, ProxyState, "_PROXY_"), (proxy, BranchState, "_BRANCH_")):
            for member in enum_class:
                constant = getattr(module, prefix + member.name, None)
                if constant is not None:
                    self.assertIs(constant, member, (module.__name__, member))
        self.assertIs(limits.ADMIT, limits.FlowVerdict.ADMIT)
