"""The project's error types: the ones the CLI turns into one line and exit code 2.

An error a user can fix (a bad value, file, dataset or weights file) is a ``ZooError``; anything else is
a bug and keeps its traceback. Each class also derives from the built-in type that callers of the
library already catch (``ValueError`` for bad values, ``OSError`` for files), so catching those keeps
working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["ConfigError", "ZooError", "close_names"]


class ZooError(Exception):
    """An error whose message says what was wrong and how to fix it."""


class ConfigError(ZooError, ValueError):
    """A bad setting: an unknown key, a value of the wrong type or out of its range."""


def close_names(unknown: Iterable[str], known: Iterable[str]) -> str:
    """Hints for misspelt names, e.g. ``'epocs' (did you mean 'epochs'?)``, one per name of ``unknown``
    that resembles one of ``known`` (the others get none), joined by spaces; "" when none does."""
    choices = list(known)
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, choices, n=1)
        if close:
            hints.append(f"{name!r} (did you mean {close[0]!r}?)")
    return " ".join(hints)
