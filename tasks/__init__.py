"""Prefect tasks: thin wrappers over millrace's plain stage functions.

May import: the core (millrace) only."""
