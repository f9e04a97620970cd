"""Regular expressions for the common shapes of From/To/Contact and Via (RFC 3261 §25.1).

The fast readers in ``epcscf.sip.headers`` (and ``epcscf.core.addresses``) check a header
value against these first; each pattern only accepts a subset of what the full parsers in
``epcscf.sip.uri`` / ``headers`` accept, so a match is a valid value and anything else goes
through the full parser, which gives the precise error.
"""

from __future__ import annotations

import re

# The grammar fragments are public for other fast readers (epcscf.core.addresses).
TOKEN_PATTERN = r"[A-Za-z0-9\-.!%*_+`'~]+"
# A port the full parsers accept: at most five digits and at most 65535 (RFC 3261 §25.1);
# five-digit ports are the common case for ephemeral and test ports.
PORT_PATTERN = r"(?:[0-9]{1,4}|[0-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
# epcscf.sip.uri.HOSTNAME_RE (an IPv4 address is one too)
HOSTNAME_PATTERN = r"[A-Za-z0-9](?:[A-Za-z0-9\-_]*[A-Za-z0-9_])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-_]*[A-Za-z0-9_])?)*\.?"
# epcscf.sip.uri.PARAMCHAR_RE without '%'
PARAMCHARS_PATTERN = r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$]+"
_TOKEN = TOKEN_PATTERN
_PORT = PORT_PATTERN
_HOST = rf"(?:{HOSTNAME_PATTERN}|\[[0-9A-Fa-f:.]+\])(?::{_PORT})?"
_PARAMCHARS = PARAMCHARS_PATTERN
# Header parameter values: a token/host, or a quoted-string without escapes (RFC 3261 §25.1
# gen-value), e.g. RFC 5626 ``+sip.instance="<urn:uuid:...>"`` on every outbound Contact.
_PLAIN_VALUE = r"[A-Za-z0-9\-.!%*_+`'~:\[\]]+"
HEADER_PARAMS_PATTERN = rf"(?:[ \t]*;[ \t]*{_TOKEN}(?:[ \t]*=[ \t]*(?:{_PLAIN_VALUE}|\"[^\"\\\x00-\x1f]*\"))?)*[ \t]*"
# After an addr-spec no '<' may appear at all, not even quoted (the full parser reads the
# first '<' as the start of a name-addr).
_ADDR_SPEC_PARAMS = rf"(?:[ \t]*;[ \t]*{_TOKEN}(?:[ \t]*=[ \t]*(?:{_PLAIN_VALUE}|\"[^\"\\\x00-\x1f<>]*\"))?)*[ \t]*"
_SIP_URI = rf"sips?:(?:[A-Za-z0-9\-_.!~*'()&=+$,]+@)?{_HOST}(?:;{_PARAMCHARS}(?:={_PARAMCHARS})?)*"
# RFC 3261 §20.10: an addr-spec's parameters are the header's, and it has no ',' or '?'.
_BARE_SIP_URI = rf"sips?:(?:[A-Za-z0-9\-_.!~*'()&=+$]+@)?{_HOST}"
# The ``params`` group is the header parameters (``tag``, ``expires``, ``+sip.instance``).
FAST_ADDRESS_RE = re.compile(
    rf"[ \t]*(?:(?:(?:\"[^\"\\\x00-\x1f]*\"[ \t]*|[A-Za-z0-9\-.!%*_+`'~ \t]*)<{_SIP_URI}>)(?P<params>{HEADER_PARAMS_PATTERN})"
    rf"|{_BARE_SIP_URI}(?P<spec_params>{_ADDR_SPEC_PARAMS}))\Z"
)
FAST_VIA_RE = re.compile(rf"[ \t]*SIP/2\.0/{_TOKEN}[ \t]+{_HOST}{HEADER_PARAMS_PATTERN}\Z")
