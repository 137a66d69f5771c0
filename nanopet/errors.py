"""Errors that nanopet-tune reports to users as one line (exit code 2), not as a traceback."""


class NanoPETError(Exception):
    """Base class of every error nanopet-tune raises on purpose."""

    exit_code = 1


class InputError(NanoPETError, ValueError):
    """Bad user input: a file, a frame, a key or a value. The message names it and says what to do."""

    exit_code = 2


class NonFiniteLossError(NanoPETError, FloatingPointError):
    """Training produced a NaN or infinite loss; the run is stopped (a trial fails, not the study)."""

    def __init__(self, message: str, epoch: int | None = None):
        super().__init__(message)
        self.epoch = epoch


def did_you_mean(word: str, options) -> str:
    """' (did you mean 'x'?)' when a close option exists, else ''."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
