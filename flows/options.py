"""A flow run's `options` parameter: the settings it runs with, as the Prefect API may store and show them."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from millrace.config import Settings


def flow_options(settings: Settings, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The settings a flow run gets as its `options` parameter: what differs from the defaults, without secrets.

    Flow parameters are stored by the Prefect API and shown in its UI, so secret fields (and a ledger URL carrying a
    password) stay out; the flow, in this process, reads them again from the environment or the blocks."""
    options = settings.model_dump(mode="json", exclude_defaults=True)
    for name, field in Settings.model_fields.items():
        if field.annotation is SecretStr or name in drop:
            options.pop(name, None)
    if "ledger_url" in options and urlsplit(options["ledger_url"]).password:
        options.pop("ledger_url")
    return options
