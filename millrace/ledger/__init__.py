"""What the index should hold and why: the ledger, the lease, staging, run planning, the status reports."""
