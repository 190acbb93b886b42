"""Usage and configuration errors: what the command line shows as one line, without a traceback.

Anything else that goes wrong is a bug (ours, or in a user's producer, network or solver) and
keeps its traceback. Library code raises ``ValueError``/``TypeError``/``KeyError`` naming its
own arguments in backticks; ``checked_settings`` turns those raised while a command reads its
settings and builds its objects into ``UsageError``, and ``flag_message`` names the flags.
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator

# Library argument names whose command-line flag is not simply the name with dashes.
_FLAGS = {"root": "--data-root", "download": "--download", "verify=False": "--no-verify-data",
          "num_classes": "the dataset's classes", "in_shape": "the dataset's input shape"}


class UsageError(Exception):
    """A bad command line, settings file, checkpoint path or data folder: shown as one line."""


class UsageExit(SystemExit):
    """How the command line ends on a usage error: exit status 2, as argparse's own errors, after
    printing the message; ``str()`` is the message."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def flag_name(argument: str) -> str:
    """The flag that sets a library argument: ``batch_size`` → ``--batch-size``; the torchdeq-style
    solver settings keep their underscores (``b_max_iter`` → ``--b_max_iter``)."""
    if argument in _FLAGS:
        return _FLAGS[argument]
    if argument.startswith(("b_", "f_")):
        return "--" + argument
    return "--" + argument.replace("_", "-")


def flag_message(message: str, settings: frozenset[str] | set[str]) -> str:
    """``message`` with each backticked library argument that is a run setting replaced by its flag."""
    def replace(match: re.Match) -> str:
        name = match.group(1)
        return flag_name(name) if name in settings or name in _FLAGS else match.group(0)

    return re.sub(r"`([a-z_][a-z0-9_]*(?:=False)?)`", replace, message)


def _message(error: BaseException) -> str:
    # str(KeyError) adds quotes around its message.
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


@contextlib.contextmanager
def checked_settings() -> Iterator[None]:
    """Within the block, the library's argument errors (and missing files or optional packages)
    are usage errors: the settings were wrong, not the code."""
    try:
        yield
    except UsageError:
        raise
    except (ValueError, TypeError, KeyError, FileNotFoundError, ModuleNotFoundError) as error:
        raise UsageError(_message(error)) from error
