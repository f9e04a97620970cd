"""SIP digest credentials, both sides (RFC 3261 §22.4, RFC 7616 as RFC 8760 applies it to SIP).

Pure functions shared by the embedded core's authenticator (``epcscf.core.digest``) and
the user agents the eP-CSCF runs on behalf of non-SIP WICs, which answer challenges
(``epcscf.pcscf.nonsip_register``): parsing a ``Digest`` challenge or credentials and
computing the ``response`` value.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any, Callable

__all__ = ["ALGORITHMS", "DigestParseError", "compute_response", "digest_hash", "parse_digest", "response_from_hashes"]

# RFC 7616 §3.2 / IANA "HTTP Digest Hash Algorithms" → hashlib names
ALGORITHMS: dict[str, str] = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}
_MAX_HEADER = 4096
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# quoted-string (RFC 7230 §3.2.6) in runs of plain characters, possessive: half the time of
# one alternation per character on the long nonce and response values.
_PARAM_RE = re.compile(rf'[ \t]*({_TOKEN})[ \t]*=[ \t]*(?:"((?:[^"\\]++|\\.)*+)"|([^\s,"]+))[ \t]*(,|\Z)')
# One pass over the whole list: a parameter as above (its quoted-string unrolled, the same
# language) or, in the last group, any character no parameter starts at.  When no such
# character turns up and the last parameter ends the text, the parameters found are
# exactly those of the one-at-a-time loop; otherwise the loop runs and names the problem.
_SCAN_RE = re.compile(
    rf'[ \t]*({_TOKEN})[ \t]*=[ \t]*(?:"([^"\\]*+(?:\\.[^"\\]*+)*+)"|([^\s,"]+))[ \t]*(,|\Z)|([\s\S])'
)
_QUOTED_PAIR_RE = re.compile(r"\\(.)")


class DigestParseError(ValueError):
    pass


def parse_digest(value: str) -> dict[str, str]:
    """Parameters of a ``Digest`` challenge or credentials (names lower-cased, values unquoted)."""
    if len(value) > _MAX_HEADER:
        raise DigestParseError(f"longer than {_MAX_HEADER} characters")
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise DigestParseError(f"scheme is {scheme[:20]!r}, not Digest")
    rest = rest.strip()
    params: dict[str, str]
    found = _SCAN_RE.findall(rest)
    if found and not found[-1][3]:
        params = {}
        for name, quoted, token, _, junk in found:
            if junk:
                break
            if token:
                params[name.lower()] = token
            else:  # RFC 7230 §3.2.6 quoted-pair; rare, so only then through the regex
                params[name.lower()] = _QUOTED_PAIR_RE.sub(r"\1", quoted) if "\\" in quoted else quoted
        else:
            if len(params) == len(found):
                return params
        # something else, or a parameter given twice: the loop below names the problem
    params = {}
    position = 0
    while position < len(rest):
        match = _PARAM_RE.match(rest, position)
        if match is None:
            raise DigestParseError(f"cannot parse parameters at {rest[position:position + 30]!r}")
        name = match.group(1).lower()
        if name in params:
            raise DigestParseError(f"parameter {name} given twice")
        quoted, token = match.group(2), match.group(3)
        if quoted is None:
            params[name] = token
        else:  # RFC 7230 §3.2.6 quoted-pair; rare, so only then through the regex
            params[name] = _QUOTED_PAIR_RE.sub(r"\1", quoted) if "\\" in quoted else quoted
        position = match.end()
        if match.group(4) == "," and position >= len(rest):
            raise DigestParseError("trailing comma")
    return params


# The hashlib constructors themselves: ``hashlib.new(name)`` looks the name up on every call.
# (sha512_256 has no named constructor: it keeps hashlib.new.)
_HASH_CONSTRUCTORS: dict[str, Callable[[bytes], Any]] = {
    name: getattr(hashlib, hash_name, None) or functools.partial(hashlib.new, hash_name)
    for name, hash_name in ALGORITHMS.items()
}


def digest_hash(algorithm: str, text: str) -> str:
    # RFC 8760 §2.2: lower-case hex of the digest
    return _HASH_CONSTRUCTORS[algorithm](text.encode("utf-8")).hexdigest()


def compute_response(
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    nc: str | None = None,
    cnonce: str | None = None,
    qop: str | None = "auth",
) -> str:
    """The ``response`` value (RFC 7616 §3.4.1; RFC 2069 form when ``qop`` is None)."""
    ha1 = digest_hash(algorithm, f"{username}:{realm}:{password}")  # RFC 7616 §3.4.2
    ha2 = digest_hash(algorithm, f"{method}:{uri}")  # RFC 7616 §3.4.3, qop=auth
    return response_from_hashes(algorithm, ha1, ha2, nonce, nc, cnonce, qop)


def response_from_hashes(algorithm: str, ha1: str, ha2: str, nonce: str, nc: str | None, cnonce: str | None, qop: str | None) -> str:
    """RFC 7616 §3.4.1 (RFC 2069 form when ``qop`` is None) from H(A1) and H(A2)."""
    if qop is None:
        return digest_hash(algorithm, f"{ha1}:{nonce}:{ha2}")
    return digest_hash(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
