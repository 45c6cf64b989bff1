"""The rules every ``embeddings-flower`` starts under, checked on Flower's final options.

Flower (2.2) reads its options in one order: ``FLOWER_*`` variables, then the flags, then its
settings file (``--conf``), then the flags again. Tornado runs its parse callbacks at the end
of each pass over the flags, so after :func:`install` :func:`enforce` sees the options twice
before a socket is opened: the last time exactly as Flower will use them, whichever source
set them. The first pass comes before the settings file is read, so the login must come from
the environment (``FLOWER_BASIC_AUTH``) or a flag, never from a settings file alone.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, cast

from worker.errors import EmbeddingConfigError

__all__ = [
    "CONFIG_PATH",
    "DEFAULT_ADDRESS",
    "FlowerOptions",
    "check_login",
    "enforce",
    "guard_celery_flower",
    "install",
]

# Flower's settings for this project, by absolute path: never a file of the working directory.
CONFIG_PATH = Path(__file__).resolve().with_name("flowerconfig.py")
# Loopback unless told otherwise (FLOWER_ADDRESS or --address): Flower's own default, "",
# listens on every interface, IPv4 and IPv6.
DEFAULT_ADDRESS = "127.0.0.1"

_HOW = (
    "set FLOWER_BASIC_AUTH=user:password (comma-separated for several users), or FLOWER_AUTH "
    "with FLOWER_AUTH_PROVIDER for OAuth"
)


class FlowerOptions(Protocol):
    """The Flower options the rules read and write (tornado's ``options`` has them all)."""

    basic_auth: Sequence[str] | None
    auth: str | None
    auth_provider: str | None
    address: str | None


def check_login(
    basic_auth: Sequence[str] | None, auth: str | None, auth_provider: str | None
) -> None:
    """Raise ``EmbeddingConfigError`` unless Flower will ask every visitor to log in.

    A basic-auth entry must be ``user:password`` with neither part empty: Flower takes an
    empty ``FLOWER_BASIC_AUTH`` (compose passes one from a blank ``.env`` line) as the list
    ``[""]``, which turns no one away at start and lets no one in after. The message never
    repeats an entry, since it holds a password.
    """
    if auth and auth_provider:
        return  # OAuth: Flower checks the provider's answer against the FLOWER_AUTH pattern.
    entries = [entry for entry in basic_auth or () if entry is not None]
    if not entries or entries == [""]:
        raise EmbeddingConfigError(
            f"FLOWER_BASIC_AUTH is not set, and Flower must ask for a login: {_HOW}. "
            "Without one Flower shows every task to anyone who reaches its port."
        )
    for number, entry in enumerate(entries, start=1):
        user, colon, password = entry.partition(":")
        if not (user.strip() and colon and password):
            raise EmbeddingConfigError(
                f"FLOWER_BASIC_AUTH entry {number} of {len(entries)} is not user:password "
                "with both parts non-empty"
            )


def enforce(options: FlowerOptions) -> None:
    """Refuse to go on without a login; give Flower ``DEFAULT_ADDRESS`` when none was set."""
    check_login(options.basic_auth, options.auth, options.auth_provider)
    if not options.address:
        options.address = DEFAULT_ADDRESS


_installed = False


def install(*, exit_on_refusal: bool = False) -> None:
    """Have tornado run :func:`enforce` on Flower's options after each parse (once per process).

    ``exit_on_refusal``: a refusal ends the process with its message and status 2, for a
    command (``celery flower``) that would otherwise print the error as a traceback.
    """
    global _installed
    if _installed:
        return
    from tornado.options import options

    def enforce_flower_options() -> None:
        try:
            enforce(cast(FlowerOptions, options))
        except EmbeddingConfigError as exc:
            if not exit_on_refusal:
                raise
            print(f"flower: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    options.add_parse_callback(enforce_flower_options)
    _installed = True


def _celery_subcommand() -> str | None:
    """The subcommand of the ``celery`` command line being run, if one is being parsed."""
    click: Any = sys.modules.get("click")
    if click is None:  # not under Celery's command line at all
        return None
    ctx = click.get_current_context(silent=True)
    while ctx is not None and ctx.parent is not None:
        ctx = ctx.parent
    if ctx is None:
        return None
    if ctx.invoked_subcommand:
        return str(ctx.invoked_subcommand)
    # The app is loaded while the group parses its own options, before click names the
    # subcommand: the arguments left over start with it.
    # Read from the instance: click 8.2 keeps them as _protected_args behind a deprecated
    # property, older versions as protected_args.
    fields = vars(ctx)
    protected = fields.get("_protected_args", fields.get("protected_args")) or []
    rest = [*protected, *ctx.args]
    return str(rest[0]) if rest else None


def guard_celery_flower() -> None:
    """Under ``celery -A worker flower``, from any directory, apply the rules above too.

    Called when the project's Celery app is built (``worker.celery_app``): Celery builds it
    before it runs the subcommand, so the rules are in place before Flower reads its options,
    whichever directory it starts in and whether or not that holds a ``flowerconfig.py``.
    Any other command, and any process not started by ``celery``, is left alone.
    """
    if _celery_subcommand() == "flower":
        install(exit_on_refusal=True)
