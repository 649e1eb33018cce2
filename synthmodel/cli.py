"""What every command line of the project shares."""

from __future__ import annotations

import argparse
from typing import NoReturn

__all__ = ["ArgumentParser", "DefaultsHelpFormatter"]


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that ends with ``(default: X)`` for every option with a default, unless its text already says it
    (a switch that is off by default, or an empty list, says nothing)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "default" in text or default is None or default is argparse.SUPPRESS
                or default == [] or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's bad-input contract: one line ``error: ...`` on stderr and exit status 2
    (plain argparse prints the whole usage block first), and every default shown in ``--help``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
