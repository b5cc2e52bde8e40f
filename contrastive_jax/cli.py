"""What every command does with bad input: one `error: ...` line on stderr, exit status 1.

The commands (main, linear_eval, export, plot, show_views, aot, the benches and tools) parse
their flags with absl (`parse_absl_flags`, `absl_flags_parser`) or argparse (`ArgumentParser`),
and run their work under `errors_as_one_line`; all three end through `fail` (a training run,
whose Orbax threads may still print, through `fail_now`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import os
import sys
from typing import Callable, Iterator, NoReturn, Sequence

from absl import flags

# The errors that mean bad input or a failing file or disk, not a bug: DataError,
# CheckpointError and the config checks are ValueErrors; a non-finite loss is a
# FloatingPointError.
BAD_INPUT = (ValueError, OSError, FloatingPointError, flags.Error)


def _last_line(error: BaseException | str) -> str:
    """Of a message of several lines (a traceback inside a config file's error) the last, which
    says what went wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def fail(error: BaseException | str) -> NoReturn:
    """Ends the command with one `error: ...` line on stderr and exit status 1."""
    print(f"error: {_last_line(error)}", file=sys.stderr, flush=True)
    sys.exit(1)


def fail_now(error: BaseException | str) -> NoReturn:
    """`fail` for a run whose library threads may still be printing: the line is the last
    output.

    The tasks of a failed Orbax save log their errors when they are collected, and its
    background threads may still be printing, so collect them first, point stderr at /dev/null
    before the line goes out (on a copy of the stream, so no thread can write into or after
    it), and leave without the interpreter's shutdown (the saves have been waited for).
    """
    gc.collect()
    sys.stdout.flush()
    sys.stderr.flush()
    stderr = os.dup(sys.stderr.fileno())
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
    os.write(stderr, f"error: {_last_line(error)}\n".encode())
    os._exit(1)


@contextlib.contextmanager
def errors_as_one_line() -> Iterator[None]:
    """Runs a command's work; bad input (BAD_INPUT) ends it through `fail`."""
    try:
        yield
    except BAD_INPUT as error:
        fail(" ".join(str(error).split()) or type(error).__name__)


def with_one_line_errors(main: Callable[..., None]) -> Callable[..., None]:
    """`main` (a command's `main(argv)`) with its bad input ended through `fail`."""
    @functools.wraps(main)
    def run(argv=None) -> None:
        with errors_as_one_line():
            main(argv)
    return run


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its usage errors (exit status 2, the usage text) as one `error:` line and
    exit status 1."""

    def error(self, message: str) -> NoReturn:
        fail(message)


def parse_absl_flags(argv: Sequence[str], values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """absl's parsing of `argv` into `values`, with a `--config` (ml_collections) read once,
    so that a config file that does not load or an unknown `--config.key` is reported here.
    Raises flags.Error with a one-line message; returns [program name].

    ml_collections raises AttributeError for an unknown `--config.key`, and keeps the error of a
    config file that does not load until the config is first read.
    """
    # The last --config= given is the one absl keeps.
    config_file = ([arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
                   or [""])[-1]
    try:
        rest = values(list(argv))
        if "config" in values and values["config"].value is not None:
            values.config.get("method")
    except (AttributeError, KeyError) as error:
        if "has no attribute 'get_config'" in str(error):
            raise flags.Error(f"cannot load --config={config_file}: the file defines no "
                              "get_config()") from error
        raise flags.Error(f"unknown config key {_unknown_key(error)}") from error
    except OSError as error:
        raise flags.Error(f"cannot load --config={config_file}: "
                          f"{str(error).strip().splitlines()[-1].strip()}") from error
    except flags.Error:
        raise
    except Exception as error:  # A config file that raises; a bad value type.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise flags.Error(lines[-1] if lines else type(error).__name__) from error
    if len(rest) > 1:
        raise flags.Error(f"unexpected arguments: {' '.join(rest[1:])} (flags take the form "
                          "--name=value)")
    return rest


def absl_flags_parser(argv: Sequence[str]) -> list[str]:
    """`parse_absl_flags` of the global flags for `app.run(..., flags_parser=...)`, failing
    with one line."""
    try:
        return parse_absl_flags(argv)
    except flags.Error as error:
        fail(error)


def _unknown_key(error: BaseException) -> str:
    """`'nosuchkey'` and ml_collections' suggestion, from its KeyError (maybe inside an
    AttributeError), whose message is a quoted key and a "Did you mean" line."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    lines = str(error.args[0] if error.args else error).splitlines()
    return "; ".join(line.strip() for line in lines if line.strip())
