"""Console output: every message goes through the ``nsde_ray`` logger, and Ray's own is kept down.

:func:`configure` gives the logger its handlers in each process that logs (the driver, and the
Ray processes that run a trial, where Ray's logging setup would otherwise drop INFO lines):
progress (INFO) to stdout as ``[nsde-ray] ...``, warnings and errors to stderr as ``[nsde-ray]
warning: ...``, and a command's results (:data:`RESULT`, :func:`result`) to stdout at every level, as
``[nsde-ray] ...`` lines or, for a table, as the block itself. The commands' ``--quiet`` shows warnings
and results only, ``--verbose`` adds debug lines and Ray's own per-worker lines (:func:`ray_log_level`),
which are otherwise limited to errors.
"""

from __future__ import annotations

import logging
import sys

LOGGER = "nsde_ray"
LEVELS = {"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.DEBUG}
RESULT = logging.ERROR + 5  # a command's results: above every console level, shown on stdout
logging.addLevelName(RESULT, "RESULT")


class _Below(logging.Filter):
    """Passes records below ``level``, and results (so stdout and stderr never both print one)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level or record.levelno == RESULT


class _NotResult(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno != RESULT


class _ProgressFormatter(logging.Formatter):
    """``[nsde-ray] ...``; a block (``extra={"block": True}``: a table) as it is."""

    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage() if getattr(record, "block", False) else f"[nsde-ray] {record.getMessage()}"


def result(text: str, block: bool = False) -> None:
    """Log ``text`` as a command's result (:data:`RESULT`), a ``[nsde-ray]`` line or, with ``block``, as it is."""
    logging.getLogger(LOGGER).log(RESULT, text, extra={"block": block})


class _Console(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` or ``sys.stderr`` is when a record comes (redirections and captures apply)."""

    def __init__(self, stream_name: str) -> None:
        self.stream_name = stream_name
        super().__init__()

    @property
    def stream(self):
        return getattr(sys, self.stream_name)

    @stream.setter
    def stream(self, value) -> None:
        pass  # always the current sys stream


class _ProblemFormatter(logging.Formatter):
    """``[nsde-ray] warning: ...`` or ``[nsde-ray] error: ...``."""

    def format(self, record: logging.LogRecord) -> str:
        return f"[nsde-ray] {record.levelname.lower()}: {record.getMessage()}"


def configure(level: int = logging.INFO) -> logging.Logger:
    """The ``nsde_ray`` logger at ``level`` with its two console handlers; idempotent."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level)
    if not any(getattr(handler, "_nsde_ray", False) for handler in logger.handlers):
        progress = _Console("stdout")
        progress.addFilter(_Below(logging.WARNING))
        progress.setFormatter(_ProgressFormatter())
        problems = _Console("stderr")
        problems.setLevel(logging.WARNING)
        problems.addFilter(_NotResult())
        problems.setFormatter(_ProblemFormatter())
        for handler in (progress, problems):
            handler._nsde_ray = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
        logger.propagate = False
    return logger


def ray_log_level(level: int) -> str:
    """The level of Ray's own loggers in every Ray process: errors only, unless ``level`` is verbose."""
    return "INFO" if level <= logging.DEBUG else "ERROR"


def tune_verbosity(level: int) -> int:
    """Ray Tune's ``RunConfig(verbose=...)``: no status table when quiet, trial results too when verbose."""
    return 0 if level >= logging.WARNING else 2 if level <= logging.DEBUG else 1
