"""The few header-field readings the embedded core needs (RFC 3261 §20, §25.1).

Contact lists, name-addr → URI, URI parameters, option tags and the canonical
address-of-record of a SIP URI.  Quoted strings and ``<…>`` are honoured when
splitting on ``,`` and ``;`` (an ``+sip.instance`` value carries ``<urn:…>``
inside quotes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from epcscf.sip.message import Request


class FieldError(ValueError):
    """A header field the core cannot read; the text names the field."""


def _split_outside(value: str, separator: str) -> list[str]:
    """Split on ``separator`` outside quoted strings and angle brackets."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    angle = 0
    escaped = False
    for char in value:
        if escaped:
            current.append(char)
            escaped = False
            continue
        if quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted and char == "<":
            angle += 1
        elif not quoted and char == ">":
            angle = max(0, angle - 1)
        elif char == separator and not quoted and angle == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    if quoted:
        raise FieldError(f"unterminated quoted string in {value!r}")
    parts.append("".join(current))
    return parts


def split_list(value: str) -> list[str]:
    """RFC 3261 §7.3.1: the comma-separated values of one header line."""
    return [part.strip() for part in _split_outside(value, ",") if part.strip()]


@dataclass(frozen=True)
class ContactValue:
    """One Contact value (RFC 3261 §20.10): ``*`` or a URI with header parameters."""

    uri: str
    params: dict[str, str | None] = field(default_factory=dict)
    wildcard: bool = False

    def params_text(self, exclude: tuple[str, ...] = ()) -> str:
        """The header parameters as ``;name=value`` text, minus ``exclude``."""
        out = []
        for name, value in self.params.items():
            if name in exclude:
                continue
            out.append(f";{name}" if value is None else f";{name}={value}")
        return "".join(out)


def parse_contact_list(value: str) -> list[ContactValue]:
    result: list[ContactValue] = []
    for item in split_list(value):
        if item == "*":
            result.append(ContactValue("*", wildcard=True))
            continue
        uri = uri_of(item)
        if ":" not in uri:
            raise FieldError(f"Contact {item!r} has no URI")
        rest = item[item.index(">") + 1 :] if "<" in item else (item.split(";", 1)[1] if ";" in item else "")
        result.append(ContactValue(uri, _params(rest)))
    return result


def _params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for part in _split_outside(text, ";"):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        params[name.strip().lower()] = value.strip() if sep else None
    return params


def uri_of(value: str) -> str:
    """The URI of a name-addr (``"Bob" <sip:bob@x>;tag=1``) or addr-spec (``sip:bob@x;tag=1``).

    For an addr-spec the header parameters cannot be told from URI parameters
    (RFC 3261 §20: they belong to the header), so everything after ``;`` is dropped.
    """
    text = value.strip()
    if "<" in text:
        start = text.index("<")
        end = text.find(">", start)
        if end < 0:
            raise FieldError(f"unterminated <…> in {value!r}")
        return text[start + 1 : end].strip()
    return text.split(";", 1)[0].strip()


def uri_params(uri: str) -> dict[str, str | None]:
    """The parameters of a SIP URI (``;lr;ob;transport=tcp``), names lower-cased."""
    _, _, rest = uri.partition(";")
    return _params(rest.split("?", 1)[0])


def first_param(values: dict[str, str | None], name: str) -> str | None:
    return values.get(name.lower())


def aor_of(uri: str) -> str:
    """The canonical address-of-record of a SIP/SIPS/tel URI (RFC 3261 §10.3 step 5).

    ``sip:Alice@Example.COM:5060;transport=tcp`` → ``sip:Alice@example.com``: scheme
    and host lower-cased, port and parameters dropped, user kept as written.
    """
    scheme, sep, rest = uri.strip().partition(":")
    if not sep:
        raise FieldError(f"{uri!r} is not a URI")
    scheme = scheme.lower()
    rest = rest.split(";", 1)[0].split("?", 1)[0]
    if scheme == "tel":
        return f"tel:{rest}"
    user, at, hostport = rest.rpartition("@")
    if hostport.startswith("["):
        host = hostport[: hostport.find("]") + 1]
    else:
        host = hostport.split(":", 1)[0]
    if not host:
        raise FieldError(f"{uri!r} has no host")
    return f"{scheme}:{user}{at}{host.lower()}"


def option_tags(request: Request, header: str) -> set[str]:
    """The option tags of every ``Require``/``Supported``/``Proxy-Require`` line, lower-cased."""
    tags: set[str] = set()
    for value in request.headers.get_all(header):
        tags.update(tag.strip().lower() for tag in value.split(",") if tag.strip())
    return tags
