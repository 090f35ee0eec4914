"""Serving a baked image (and stopping it)."""
