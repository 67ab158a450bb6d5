"""Tidings: a self-hosted customer engagement platform."""
