"""Fake provider servers that speak the real HTTP protocols, on loopback, for tests and demos."""
