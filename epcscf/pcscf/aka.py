"""IMS-AKA challenges toward a WIC and sec-agree headers from it (TS 24.229 §5.2.2.1, TS 24.371 §6).

An S-CSCF challenging a REGISTER with IMS-AKA (RFC 3310 ``AKAv1-MD5``, RFC 4169
``AKAv2-MD5``) puts the integrity and cipher keys ``ik`` and ``ck`` in the 401's
WWW-Authenticate for the P-CSCF (TS 33.203 §7.1, TS 24.229 §5.2.2.1): they key the IPsec
security associations toward the UE.  They must never reach the UE, so they are removed
from the challenge before it is relayed; every other character of the header stays as
the core wrote it (the WIC computes its AKA response over the nonce, realm and the rest).

On W2 there is no IPsec: TS 24.371 §6 protects the WebSocket with TLS instead of
RFC 3329 security agreement.  So the sec-agree headers a Gm-style WIC may still send
(``Security-Client``, ``Security-Verify``) name mechanisms this hop does not set up;
they end here (RFC 3329 §2.3: they are meant for the first hop) and are never passed
to the core, which would otherwise believe an IPsec association protects the WIC.
"""

from __future__ import annotations

from epcscf.sip.message import Message, Response

#: the IMS-AKA digest algorithms (RFC 3310 §3.1, RFC 4169 §5)
AKA_ALGORITHMS = frozenset({"akav1-md5", "akav2-md5"})
#: the keys TS 24.229 §5.2.2.1 has the P-CSCF remove before the 401 reaches the UE
KEY_PARAMETERS = frozenset({"ck", "ik"})
#: RFC 3329 headers that end at the first hop
SEC_AGREE_HEADERS = ("Security-Client", "Security-Verify")


def strip_aka_keys(response: Response) -> int:
    """Remove ``ck`` and ``ik`` from every IMS-AKA challenge of a 401 (or 407); the number
    of challenges changed.  A challenge of another algorithm is left as it is."""
    changed = 0
    for name in ("WWW-Authenticate", "Proxy-Authenticate"):
        values = response.headers.get_all(name)
        if not values:
            continue
        rewritten = [without_keys(value) for value in values]
        if rewritten != values:
            changed += sum(1 for old, new in zip(values, rewritten) if old != new)
            response.headers.replace_all(name, rewritten)
    return changed


def without_keys(challenge: str) -> str:
    """One challenge (``Digest p1=v1, p2="v2"…``) without ``ck``/``ik`` when its algorithm is
    IMS-AKA; the other auth-params keep their text, order and separators (RFC 7235 §2.1)."""
    scheme, space, rest = challenge.lstrip().partition(" ")
    if scheme.lower() != "digest" or not space:
        return challenge
    parts = _split_params(rest)
    names = [_param_name(part) for part in parts]
    algorithm = next((_param_value(part) for part, name in zip(parts, names) if name == "algorithm"), "")
    if algorithm.lower() not in AKA_ALGORITHMS or not KEY_PARAMETERS.intersection(names):
        return challenge
    kept = [part for part, name in zip(parts, names) if name not in KEY_PARAMETERS]
    if kept:
        kept[0] = kept[0].lstrip()  # a removed first parameter leaves no blank behind the scheme
    prefix = challenge[: len(challenge) - len(challenge.lstrip())]
    return f"{prefix}{scheme}{space}{','.join(kept)}"


def _split_params(text: str) -> list[str]:
    """``text`` cut at the commas outside quoted-strings (RFC 3261 §25.1), pieces as written."""
    parts: list[str] = []
    start, quoted, escaped = 0, False, False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _param_name(part: str) -> str:
    return part.split("=", 1)[0].strip().lower()


def _param_value(part: str) -> str:
    value = part.split("=", 1)[1].strip() if "=" in part else ""
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def strip_sec_agree(message: Message) -> list[str]:
    """Remove the RFC 3329 headers a WIC sent (see module docstring); the names removed."""
    headers = message.headers
    return [name for name in SEC_AGREE_HEADERS if name in headers and headers.remove(name)]
