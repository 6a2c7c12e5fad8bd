"""Errors with a place: bad input names the file, the field path and what was expected."""

from __future__ import annotations

import difflib
import reprlib

EXIT_PASS, EXIT_FAIL, EXIT_INPUT, EXIT_INFRA, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
"""The `chaos` exit codes: pass, a check failed, bad input (InputError), infrastructure error (also a run
stopped by Ctrl-C, whose partial report is written), abandoned by a second Ctrl-C (128 + SIGINT)."""


class InputError(Exception):
    """Bad user input (scenario, golden, workload config). The CLI prints it and exits 2, no traceback."""

    def __init__(self, source: str, field: str, message: str) -> None:
        self.source = source
        self.field = field
        self.message = message
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {message}")


class InfrastructureError(Exception):
    """The tester itself could not do its job (no port, cannot launch, cannot write). Exit 3."""


def did_you_mean(value: object, choices: list[str] | tuple[str, ...]) -> str:
    """' (did you mean SIGKILL?)' when a close choice exists, else ''."""
    if not isinstance(value, str) or len(value) > 200:
        return ""  # a misspelling is a short string; str() of an arbitrary structure could be huge
    close = difflib.get_close_matches(value, [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean {close[0]}?)" if close else ""


class _ShortRepr(reprlib.Repr):
    """repr for error messages: bounded in depth, items and length however big the value (a YAML alias bomb
    is a few hundred bytes that expand to millions of items), and safe for integers Python cannot print."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxtuple, self.maxdict, self.maxset = 3, 6, 6, 6, 6
        self.maxstring, self.maxother, self.maxlong = 80, 80, 40

    def repr_int(self, value: int, level: int) -> str:
        if value.bit_length() > 128:
            return f"<an integer of {value.bit_length()} bits>"
        return super().repr_int(value, level)


_SHORT = _ShortRepr()


def show(value: object) -> str:
    """A value as an error message quotes it: its repr, cut short when long (see _ShortRepr)."""
    return _SHORT.repr(value)
