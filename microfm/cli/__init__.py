"""Console scripts: thin ``@hydra.main`` entry points."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def user_errors(
    prog: str,
    errors: tuple[type[BaseException], ...] | None = None,
    logged: bool = True,
    multirun: bool = False,
) -> Iterator[None]:
    """Turn a user error (``MicrofmError`` by default, or ``errors``) into one line
    ``PROG: error: ...`` on stderr and exit status 2, without a traceback.

    Args:
        prog: the command's name.
        errors: the exception types that count as user errors.
        logged: also log the error (to the run's log file).
        multirun: inside a Hydra multirun, re-raise instead, so the sweep records this job's
            failure and goes on with the others.
    """
    if errors is None:
        from microfm.errors import MicrofmError

        errors = (MicrofmError,)
    try:
        yield
    except errors as exc:
        if logged:
            logging.getLogger("microfm").error("%s", exc)
        if multirun:
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode

            if HydraConfig.get().mode == RunMode.MULTIRUN:
                raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
