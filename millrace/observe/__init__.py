"""Traces, logs and metrics."""
