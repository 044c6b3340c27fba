"""What every ``cloud-hub`` command module shares: the console and the hub home from the context."""

from __future__ import annotations

import os
import sys

import click
from rich.console import Console

from cloud_hub.home import HubHome, HubHomeError


def _width() -> int | None:
    """Piped output (a file, grep, a test) is not cut at rich's default 80 columns: ids must survive."""
    return None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200


console = Console(width=_width())


def home_of(ctx: click.Context) -> HubHome:
    """The initialised hub home named by ``--home``, or a clear error."""
    home: HubHome = ctx.find_object(HubHome) or ctx.obj
    try:
        home.require()
    except HubHomeError as exc:
        raise click.ClickException(str(exc)) from None
    return home
