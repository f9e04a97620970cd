"""The WebRTC Web Server Function (TS 24.371): serves the demo WIC page to browsers.

Knows nothing of SIP: ``epcscf.service`` tells it the bound WebSocket listeners and the
demo users of the embedded core.
"""

from epcscf.wwsf.service import WwsfService
from epcscf.wwsf.site import DemoUser, WebSocketEndpoint, WwsfSettings, WwsfSite, build_resource, websocket_url

__all__ = [
    "DemoUser",
    "WebSocketEndpoint",
    "WwsfService",
    "WwsfSettings",
    "WwsfSite",
    "build_resource",
    "websocket_url",
]
