"""Python imports this at start-up when tests/hooks/site is on PYTHONPATH: a `millrace` subprocess of a test gets the
test hooks (tests/hooks/faults.py) without the product knowing of them."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tests.hooks.faults import install  # noqa: E402

install()
