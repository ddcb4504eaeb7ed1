"""millrace.cli's own behaviour as a command in a shell: run as a user runs it, in a fresh process."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_a_reader_that_leaves_early_ends_the_command_quietly(tmp_path):
    """`millrace status --json | head -c 1`: the reader is gone before the command writes; no traceback, no error
    line, the exit status a shell gives a command killed by SIGPIPE."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "millrace.cli", "status", "--json", "--home", str(tmp_path)],
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""
