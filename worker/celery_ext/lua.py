"""The Lua scripts of the adaptations, read from the ``.lua`` files beside this module.

The files keep their documentation as ``--`` comment lines; those are dropped when a script
is loaded, because Redis receives a script's whole text with every ``EVAL``.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["load_script"]


def load_script(filename: str) -> str:
    """The script in ``filename`` (package data of ``worker.celery_ext``), without comments."""
    text = resources.files(__package__).joinpath(filename).read_text(encoding="utf-8")
    kept = [line for line in text.splitlines() if line.strip() and not _is_comment(line)]
    return "\n".join(kept) + "\n"


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("--")
