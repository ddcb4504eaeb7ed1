"""One Prefect API for a run and every process it spawns, with Prefect's state under MILLRACE_HOME.

Without PREFECT_API_URL a command uses `make server`'s API when the platform of its home runs, else it starts
Prefect's ephemeral API. Prefect gives that one 20 s (server.ephemeral.startup_timeout_seconds), and on a fresh
PREFECT_HOME the server spends them creating and migrating its SQLite database: on 2 cores the first run timed out.
So the database is migrated here first, with no deadline (it progresses, it does not hang), and the server, which then
only registers block types and starts, gets STARTUP_TIMEOUT_S."""

from __future__ import annotations

import asyncio
import atexit
import fcntl
import os
import sys
from pathlib import Path

STARTUP_TIMEOUT_S = 120  # at least; a larger PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS wins
STARTING = "millrace: starting a local Prefect API"


def use_prefect_home(home: Path | str) -> None:
    """Default PREFECT_HOME to <home>/prefect (the folder `make server`'s Prefect uses too).

    Prefect reads its settings, and creates PREFECT_HOME, once: when it is first imported. So this must run before
    any Prefect import; after one it changes nothing, rather than leave os.environ saying what Prefect does not use."""
    if "PREFECT_HOME" in os.environ or "prefect" in sys.modules:
        return
    os.environ["PREFECT_HOME"] = str(Path(home).expanduser().resolve() / "prefect")
    # PREFECT_PROFILES_PATH follows PREFECT_HOME; the user's own profiles (`prefect config set`, `prefect cloud
    # login`) stay in force. Prefect only reads that file at run time.
    profiles = Path.home() / ".prefect" / "profiles.toml"
    if "PREFECT_PROFILES_PATH" not in os.environ and profiles.is_file():
        os.environ["PREFECT_PROFILES_PATH"] = str(profiles)


def ensure_prefect_api(home: Path | str | None = None) -> str | None:
    """Make sure a Prefect API answers, and export its URL so spawned Dask workers share it.

    Without it each worker would start (and, when killed, orphan) an API server of its own. Returns the URL this
    chose, or None when one was configured already."""
    from millrace.config import load_settings
    from millrace.platform.services import running

    home = Path(home or load_settings().home).expanduser().resolve()
    use_prefect_home(home)
    # Offline here and in many sites: the server's heartbeat would print an ERROR into the user's output.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import PREFECT_API_URL

    if os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value():
        return None
    platform = running(home)
    if platform is not None:
        os.environ["PREFECT_API_URL"] = platform[0].api_url
        print(f"millrace: using the Prefect API of `make server` ({platform[0].api_url})", file=sys.stderr)
        return platform[0].api_url
    if "PREFECT_LOGGING_LEVEL" not in os.environ:
        # A run's INFO lines, and its "View at" link to a UI that ends with the command, stay in its logs in the
        # API; the terminal gets warnings, errors and millrace's own summary, as under `make`. Read by Prefect's
        # logging setup here and in the Dask workers, which inherit it.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    created = _new_database()
    print(f"{STARTING} (first start creates its database in {created.parent}) …" if created else f"{STARTING} …",
          file=sys.stderr, flush=True)
    migrate()
    return _start()


def _new_database() -> Path | None:
    """The SQLite file the API's first start will create, or None when it exists (or the database is no file)."""
    from prefect.server.database import provide_database_interface
    from sqlalchemy.engine import make_url

    url = make_url(provide_database_interface().database_config.connection_url)
    if not url.drivername.startswith("sqlite") or not url.database or url.database == ":memory:":
        return None
    path = Path(url.database).expanduser()
    return None if path.exists() else path


def migrate() -> None:
    """Create or upgrade the configured Prefect database (a no-op in ~0.2 s when current), one process at a time."""
    from prefect.server.database import provide_database_interface
    from prefect.settings import PREFECT_API_DATABASE_MIGRATE_ON_START, PREFECT_HOME

    if not PREFECT_API_DATABASE_MIGRATE_ON_START.value():
        return  # the user manages the schema
    db = provide_database_interface()
    home = Path(PREFECT_HOME.value())
    home.mkdir(parents=True, exist_ok=True)
    # Two first runs side by side would otherwise both migrate one SQLite file.
    with open(home / "millrace-migrate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            asyncio.run(db.create_db())
        except Exception as exc:
            from sqlalchemy.engine import make_url

            url = make_url(db.database_config.connection_url).render_as_string(hide_password=True)
            raise RuntimeError(f"cannot create or upgrade Prefect's database ({url}): {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


def _start() -> str:
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    timeout = max(STARTUP_TIMEOUT_S, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    server = SubprocessASGIServer()
    try:
        server.start(timeout=timeout)
    except RuntimeError as exc:
        server.stop()
        raise RuntimeError(f"the local Prefect API did not answer within {timeout} s ({str(exc)[:200]}); point "
                           "PREFECT_API_URL at a running Prefect server (`make server` prints one), or raise "
                           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS") from None
    os.environ["PREFECT_API_URL"] = server.api_url
    atexit.register(server.stop)
    return server.api_url
