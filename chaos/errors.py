"""Errors with a place: bad input names the file, the field path and what was expected."""

from __future__ import annotations

import difflib

EXIT_PASS, EXIT_FAIL, EXIT_INPUT, EXIT_INFRA = 0, 1, 2, 3
"""The `chaos` exit codes: pass, a check failed, bad input (InputError), infrastructure error."""


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
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean {close[0]}?)" if close else ""
