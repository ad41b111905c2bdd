"""What every command shares: click settings, one-line errors, the progress bar, image input."""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable
from typing import Any

import click
import numpy as np

from pipeline.files import InputError, is_no_space

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

_SUBJECT = re.compile(r"^(?P<subject>[a-z_]+(?:(?:/|, | and )[a-z_]+)*): ")


def _flags_for(message: str, command: click.Command | None) -> str:
    """Name the command's flags where a library message names its fields (``window: …`` -> ``--window: …``).

    The library names fields and parameters, as a Python user passes them; this is the one place
    where they become the options a command-line user typed. A subject that is not one of the
    command's parameters (a file name, say) is left as it is.
    """
    match = _SUBJECT.match(message)
    if command is None or match is None:
        return message
    options = {p.name: p.opts[0] for p in command.params if isinstance(p, click.Option) and p.name}
    fields = re.split(r"/|, | and ", match["subject"])
    if not all(f in options for f in fields):
        return message
    subject = re.sub(r"[a-z_]+", lambda m: options[m.group(0)], match["subject"])
    return subject + message[match.end("subject") :]


#: the arguments that name a store (or a source that may be one) in the commands that take one
STORE_ARGUMENTS = ("store", "source")


def _refuse_memory_stores(kwargs: dict[str, Any]) -> None:
    """A ``memory://`` store vanishes with the process: every command refuses it, whatever it does next."""
    for name in STORE_ARGUMENTS:
        value = kwargs.get(name)
        if isinstance(value, str) and value.startswith("memory://"):
            from pipeline.store import persistent_store

            persistent_store(value)  # raises InputError


def _no_space(exc: OSError, kwargs: dict[str, Any]) -> str:
    """A full disk's one line: the file the system names, else the command's output or store."""
    where = exc.filename or kwargs.get("out") or next((kwargs[n] for n in STORE_ARGUMENTS if kwargs.get(n)), None)
    return f"{where or 'output'}: no space left on device ({exc.strerror or exc}); free some space and rerun"


def user_errors(func: Callable) -> Callable:
    """Turn :class:`~pipeline.files.InputError` into a one-line click error naming the option or file.

    Also what every command shares: a ``memory://`` STORE is refused, and a full disk (ENOSPC, EDQUOT)
    that no layer below named is one line too.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            _refuse_memory_stores(kwargs)
            return func(*args, **kwargs)
        except InputError as exc:
            ctx = click.get_current_context(silent=True)
            raise click.ClickException(_flags_for(str(exc), ctx.command if ctx else None)) from None
        except OSError as exc:
            if not is_no_space(exc):
                raise
            raise click.ClickException(_no_space(exc, kwargs)) from None

    return wrapper


class OneLineErrors(click.Group):
    """A click group whose usage errors (bad option values, unknown options) end in one line, like ours."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} -h')" if exc.ctx is not None else ""
            click.echo(f"Error: {exc.format_message()}{where}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


class Progress:
    """A tqdm bar on stderr, or nothing with --quiet.

    Made with ``total=0``, the bar opens at the first :meth:`set_total`, once the
    command has checked its input: bad input then prints its error line only.
    """

    def __init__(self, total: int, unit: str, quiet: bool, desc: str) -> None:
        self.bar = None
        self._options = None if quiet else {"unit": unit, "desc": desc}
        if total:
            self._open(total)

    def _open(self, total: int) -> None:
        if self._options is not None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, dynamic_ncols=True, file=sys.stderr, **self._options)

    def set_total(self, total: int) -> None:
        if self.bar is not None:
            self.bar.reset(total=total)
        else:
            self._open(total)

    def __call__(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def load_input(image: str) -> tuple[np.ndarray, np.ndarray | None]:
    """An image path or ``builtin:NAME``; returns ``(pixels, true kernel or None)``."""
    from pipeline.files import read_image
    from pipeline.samples import is_builtin, load_builtin

    if is_builtin(image):
        sample = load_builtin(image)
        return sample.blurred, sample.kernel
    return read_image(image), None
