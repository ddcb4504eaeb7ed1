"""Prefect tasks: thin wrappers over millrace's plain stage functions."""
