"""Seams the tests install into the product's processes: fault injection and crash points (faults.py)."""
