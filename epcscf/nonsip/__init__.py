"""The non-SIP WIC front end (TS 24.371 §7.2.1): the Janus JSON API over WebSocket, sans-IO."""
