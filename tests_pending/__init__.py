"""Tests that wait for code other helpers are finishing; not part of bin/test until they pass."""
