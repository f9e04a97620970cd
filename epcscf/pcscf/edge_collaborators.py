"""What the edge policy (``epcscf.pcscf.edge.PcscfPolicy``) consults besides flows and registrations.

``EdgeCollaborators`` is one frozen object, given to the policy at construction: every
collaborator has an explicit do-nothing default (admit everything, observe nothing, no
suspended dialogs, no reg-event subscriptions of ours), so the policy never asks whether a
hook was wired, and the whole graph is read in one place (``epcscf.pcscf.node_wiring``).
A bare policy (unit tests, benchmarks) takes the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from epcscf.pcscf.guard import TrustedSources
from epcscf.pcscf.registration import RegistrationBinding
from epcscf.sip.connection import Connection
from epcscf.sip.message import Request, Response, new_tag
from epcscf.sip.proxy import ProxiedRequest, Reject
from epcscf.sip.proxy_rules import make_local_response


class FlowReconnections(Protocol):
    """Dialogs of a lost flow that a new flow of the same UA instance adopted
    (``epcscf.pcscf.call_suspension``)."""

    def route_for(self, flow_id: str, request: Request) -> Connection | Response | None: ...

    def adopted(self, flow_id: str, request: Request, connection: Connection) -> bool: ...


class WicSubscriptionWatch(Protocol):
    """The WICs' own reg-event subscriptions, watched as they pass
    (``epcscf.pcscf.wic_reg_subscriptions.WicRegSubscriptions``, TS 24.229 §5.2.5.1)."""

    def subscribe_answered(self, subscribe: Request, response: Response, flow_id: str) -> None: ...

    def notify_passing(self, notify: Request, flow_id: str) -> None: ...


class NoReconnections:
    """``[calls] reconnect_grace`` off: no dialog outlives its flow."""

    def route_for(self, flow_id: str, request: Request) -> Connection | Response | None:
        return None

    def adopted(self, flow_id: str, request: Request, connection: Connection) -> bool:
        return False


class NoWicSubscriptionWatch:
    """``[reg_event] subscribe`` off: the WICs' subscriptions pass unwatched."""

    def subscribe_answered(self, subscribe: Request, response: Response, flow_id: str) -> None:
        return None

    def notify_passing(self, notify: Request, flow_id: str) -> None:
        return None


def admit_everything(context: ProxiedRequest) -> Reject | None:
    """No admission control: nothing refused before routing."""
    return None


def no_own_subscriptions(notify: Request) -> Response:
    """No reg-event subscriptions of ours: a NOTIFY to our URI without a flow token is what
    any request without one is (404, as ``PcscfPolicy._from_core`` answers)."""
    return make_local_response(notify, 404, "Not Found (no flow token)", to_tag=new_tag())


def _ignore(*_: object) -> None:
    return None


@dataclass(frozen=True)
class EdgeCollaborators:
    """Every optional collaborator of ``PcscfPolicy`` (see the module docstring)."""

    #: refuses new work before routing (``epcscf.pcscf.admission.AdmissionChain``: overload,
    #: per-source limits, and the drain on shutdown answering new INVITEs 503)
    admission: Callable[[ProxiedRequest], Reject | None] = admit_everything
    #: web-credential access (``epcscf.pcscf.web_auth.TokenAccess.register``): may refuse a
    #: WIC's REGISTER or replace its credentials by the trusted node's assertion
    register_access: Callable[[ProxiedRequest], Reject | None] = admit_everything
    #: core-side sources whose requests need no flow token.  None is a policy, not a missing
    #: hook: no border at all, every source served (a bare policy in unit tests), as
    #: ``guard.next_hop_is_core`` reads it
    trusted_sources: TrustedSources | None = None
    #: dialogs of lost flows, suspended or adopted (``[calls] reconnect_grace``)
    reconnections: FlowReconnections = NoReconnections()
    #: answers a NOTIFY addressed to our own URI by a trusted core source (our reg-event
    #: subscriptions, ``epcscf.pcscf.reg_event``, TS 24.229 §5.2.3)
    own_notify: Callable[[Request], Response] = no_own_subscriptions
    #: the WICs' own reg-event subscriptions as they pass
    wic_subscriptions: WicSubscriptionWatch = NoWicSubscriptionWatch()
    #: the configured core entry point as the operator wrote it (``[core] next_hop``, external
    #: mode): named in the log when a registrar gives no Service-Route; "" in embedded mode
    core_entry: str = ""
    #: REGISTER final responses relayed to the WIC, by status (metrics)
    on_register_response: Callable[[int], None] = _ignore
    #: the same with the REGISTER's context (admission: failed authentications per AOR,
    #: registrations in progress; reconnections: the same instance adopts its calls)
    on_register_final: Callable[[ProxiedRequest, Response], None] = _ignore
    #: bindings just recorded from a 2xx to a REGISTER (the reg-event subscriber)
    on_registered: Callable[[list[RegistrationBinding]], None] = _ignore
    #: refused requests, ``(side, reason)`` with side "wic" or "core" (metrics)
    on_refused: Callable[[str, str], None] = _ignore
