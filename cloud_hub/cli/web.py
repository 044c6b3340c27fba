"""``cloud-hub web-user`` (operator accounts) and ``cloud-hub dashboard`` (the web pages on their own)."""

from __future__ import annotations

import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

import click

from cloud_hub.cli.common import console, home_of
from cloud_hub.home import HubHome

if TYPE_CHECKING:
    from cloud_hub.ingest.service import HubServer
    from cloud_hub.web.server import WebServer

HTTP_OPTION = click.option("--http", "listen", metavar="HOST:PORT",
                           help="Serve the dashboard and /metrics here (e.g. 127.0.0.1:8080, :8080 for all "
                                "interfaces); default hub.toml [web] listen.")
NO_AUTH_OPTION = click.option("--no-auth", is_flag=True,
                              help="No login (local demo only: refused unless HOST is a loopback address).")


@click.group("web-user")
def web_user() -> None:
    """Operator accounts for the dashboard (hashed in <home>/web_users.json)."""


@web_user.command("set")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin instead of prompting.")
@click.pass_context
def web_user_set(ctx: click.Context, name: str, password_stdin: bool) -> None:
    """Create NAME or change its password."""
    from cloud_hub.web.auth import UserError, Users

    home = home_of(ctx)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        Users(home.path).set(name, password)
    except UserError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"operator [bold]{name}[/] can log in to the dashboard")


@web_user.command("list")
@click.pass_context
def web_user_list(ctx: click.Context) -> None:
    """Operator names."""
    from cloud_hub.web.auth import Users

    for name in Users(home_of(ctx).path).names():
        click.echo(name)


@web_user.command("remove")
@click.argument("name")
@click.pass_context
def web_user_remove(ctx: click.Context, name: str) -> None:
    """Delete NAME (its open sessions end at their next request)."""
    from cloud_hub.web.auth import Users

    if not Users(home_of(ctx).path).remove(name):
        raise click.ClickException(f"no operator {name!r}")
    console.print(f"removed {name}")


def start_web(home: HubHome, listen: str | None, no_auth: bool, metrics: Any = None,
              alerts: Any = None) -> WebServer | None:
    """Start the dashboard thread (None when neither --http nor [web] listen gives an address)."""
    from cloud_hub.web.server import BindError, WebServer

    listen = listen or home.config().web.listen
    if not listen:
        if no_auth:
            raise click.UsageError("--no-auth needs --http HOST:PORT")
        return None
    try:
        web = WebServer(home, listen, require_login=not no_auth, metrics=metrics, alerts=alerts)
        web.start()
    except BindError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"dashboard: [bold]{web.url}[/]" + ("" if no_auth else " (log in; `cloud-hub web-user set NAME`)"))
    return web


def check_web_args(home: HubHome, listen: str | None, no_auth: bool) -> None:
    """Refuse a bad --http/--no-auth before anything starts."""
    from cloud_hub.web.server import BindError, check_bind, parse_listen

    listen = listen or home.config().web.listen
    if not listen:
        if no_auth:
            raise click.UsageError("--no-auth needs --http HOST:PORT")
        return
    try:
        check_bind(parse_listen(listen)[0], require_login=not no_auth)
    except BindError as exc:
        raise click.ClickException(str(exc)) from None


class OperatorView:
    """What ``serve`` adds for operators: alert webhooks, /metrics on the live ingest, the dashboard."""

    def __init__(self, home: HubHome, server: HubServer, listen: str | None, no_auth: bool, web: bool = True) -> None:
        from cloud_hub.web.alerts import AlertDispatcher
        from cloud_hub.web.metrics import HubMetrics

        cfg = home.config()
        self.alerts = AlertDispatcher(cfg.alerts) if cfg.alerts else None
        if self.alerts is not None:
            server.on_stored.append(self.alerts.observe_batch)
            self.alerts.start()
        self.web = None
        if web and (listen or cfg.web.listen):  # web=False: another `serve --workers` worker has it
            metrics = HubMetrics(home, server, self.alerts)
            self.web = start_web(home, listen, no_auth, metrics=metrics, alerts=self.alerts)
        elif no_auth:
            raise click.UsageError("--no-auth needs --http HOST:PORT")

    def stop(self) -> None:
        if self.web is not None:
            self.web.stop()
        if self.alerts is not None:
            self.alerts.stop()


@click.command()
@HTTP_OPTION
@NO_AUTH_OPTION
@click.pass_context
def dashboard(ctx: click.Context, listen: str | None, no_auth: bool) -> None:
    """Serve the dashboard and /metrics from the hub database without ingesting (read-only web process)."""
    home = home_of(ctx)
    check_web_args(home, listen or home.config().web.listen or "127.0.0.1:8080", no_auth)
    web = start_web(home, listen or home.config().web.listen or "127.0.0.1:8080", no_auth)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    if web is not None:
        web.stop()
