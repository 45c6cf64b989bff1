"""``embeddings-flower [--name=value]...``: ``celery -A worker flower`` under the project's rules.

Flower runs in this process, not in one started from here, so the rules of
``embeddings_flower.guard`` are checked on the options Flower itself ends up with, and no flag,
variable or settings file passed along can step around them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from embeddings_flower.guard import CONFIG_PATH, install
from worker.errors import EmbeddingConfigError

__all__ = ["PROG", "USAGE", "celery_args", "check_args", "main"]

PROG = "embeddings-flower"

USAGE = f"""\
usage: {PROG} [--port=PORT] [--address=ADDRESS] [--OPTION=VALUE]...

Flower for the project's workers (celery -A worker flower), from any directory, with:
  - a login required: FLOWER_BASIC_AUTH=user:password (comma-separated for several
    users), or FLOWER_AUTH with FLOWER_AUTH_PROVIDER for OAuth; without one it exits 2
  - 127.0.0.1 unless FLOWER_ADDRESS or --address says otherwise (0.0.0.0: every interface)
  - the settings of {CONFIG_PATH.name} in the embeddings_flower package, never a
    flowerconfig.py of the working directory (--conf=FILE reads another file instead;
    the two rules above still hold)

Any Flower option is a flag, --name=value (--port=5555, --persistent=True, --db=FILE), or a
FLOWER_<NAME> variable; the flag wins. The login is never a flag: a command line is visible
to every user of the host.

exit status:
  0    stopped (Ctrl-C or SIGTERM)
  2    no login, a malformed one, or an unknown or refused option
"""


def celery_args(args: Sequence[str]) -> list[str]:
    """Celery's command line for ``args``: the project's app and settings file come first.

    ``args`` follow the ``--conf`` given here, so a ``--conf`` of theirs replaces it.
    """
    return ["-A", "worker", "flower", f"--conf={CONFIG_PATH}", *args]


def check_args(args: Sequence[str]) -> None:
    """Raise ``EmbeddingConfigError`` for an argument Flower would drop or must not get.

    Flower ignores what it does not know without a word, so a misspelt ``--adress`` would
    leave the operator thinking they had set the address.
    """
    # Defines Flower's options on tornado's global ``options``.
    import flower.options  # noqa: F401
    from tornado.options import options

    for arg in args:
        name = arg.lstrip("-").partition("=")[0]
        if not arg.startswith("--") or not name:
            raise EmbeddingConfigError(
                f"unexpected argument {arg!r}: Flower options take the form --name=value"
            )
        if name.replace("-", "_") == "basic_auth":
            raise EmbeddingConfigError(
                "pass the login in FLOWER_BASIC_AUTH, not as --basic_auth: a command line is "
                "visible to every user of the host"
            )
        if name not in options:
            raise EmbeddingConfigError(f"unknown Flower option --{name} (see {PROG} --help)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run Flower until interrupted; 2 (with a message on stderr) if the rules refuse it."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(USAGE, end="")
        return 0
    try:
        check_args(args)
        # The installed package, imported before Celery looks "worker" up with the working
        # directory first on sys.path: a worker/ directory there cannot stand in for it.
        import worker  # noqa: F401

        install()
        from celery.bin.celery import celery

        # Exits the process itself (SystemExit) once Flower stops.
        celery.main(args=celery_args(args), prog_name=PROG, auto_envvar_prefix="CELERY")
    except EmbeddingConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    return 0
