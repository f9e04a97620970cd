"""H.264 payload format parameters (RFC 6184 §8.1, §8.2.2) for relaying without transcoding.

* packetization-mode (absent = 0, single NAL unit) must be the same in offer and answer for a
  payload type: the two sides packetize differently otherwise (RFC 6184 §8.2.2).
* profile-level-id: the answer must keep the offered profile (profile_idc and the
  constraint flags of profile-iop); the level may differ (RFC 6184 §8.2.2 and
  level-asymmetry-allowed, RFC 6184 §8.1).  Absent = 42000A (Baseline, level 1.0).
* Of an offer's H.264 payload types, those in packetization-mode 0 are dropped when the same
  m= line offers the same profile in mode 1 (browsers offer both; mode 1 carries FU-A/STAP-A
  fragments every browser sends, so a relay that cannot repacketize keeps only that one).
"""

from __future__ import annotations

DEFAULT_PROFILE_LEVEL_ID = "42000a"


def fmtp_parameters(fmtp: str | None) -> dict[str, str]:
    """``a=fmtp`` parameters (``k=v;k=v``) with lower-case names."""
    parameters: dict[str, str] = {}
    for item in (fmtp or "").split(";"):
        name, _, value = item.strip().partition("=")
        if name:
            parameters[name.strip().lower()] = value.strip()
    return parameters


def packetization_mode(fmtp: str | None) -> str:
    return fmtp_parameters(fmtp).get("packetization-mode", "0")


def profile(fmtp: str | None) -> str:
    """profile_idc and profile-iop of profile-level-id (its first four hex digits), lower case."""
    value = fmtp_parameters(fmtp).get("profile-level-id", DEFAULT_PROFILE_LEVEL_ID).lower()
    return value[:4] if len(value) == 6 else DEFAULT_PROFILE_LEVEL_ID[:4]


def compatible(offered_fmtp: str | None, answered_fmtp: str | None) -> bool:
    """An answer's H.264 parameters for a payload type fit the offer's (RFC 6184 §8.2.2)."""
    return packetization_mode(offered_fmtp) == packetization_mode(answered_fmtp) \
        and profile(offered_fmtp) == profile(answered_fmtp)


def redundant_mode_0(fmtps: dict[str, str], payload_types: list[str]) -> set[str]:
    """H.264 payload types in mode 0 whose profile the same line also offers in mode 1."""
    in_mode_1 = {profile(fmtps.get(pt)) for pt in payload_types if packetization_mode(fmtps.get(pt)) == "1"}
    return {pt for pt in payload_types
            if packetization_mode(fmtps.get(pt)) == "0" and profile(fmtps.get(pt)) in in_mode_1}
