"""What a run prints and where its log goes: a readable console and WORKDIR/log.txt.

The console shows this package's INFO lines (one per stage, one per log window, notes),
every library's warnings and errors, and the progress bar (on a terminal only); each line
once, written through tqdm so the bar stays whole. Third-party INFO records (absl, orbax,
jax) are kept off the console unless `--verbosity` is given; `WORKDIR/log.txt` receives
everything at INFO and above on process 0, third-party records included.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import sys
import threading
from collections.abc import Iterator

PACKAGE = "stackdistill"
_FILE_FORMAT = "%(asctime)s %(levelname).1s %(name)s] %(message)s"


class _ConsoleHandler(logging.Handler):
    """stderr through tqdm.write (the bar is redrawn below each line)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class _ConsoleFormatter(logging.Formatter):
    """The package's INFO as bare lines; warnings and errors named by level (and library)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            message += "\n" + self.formatException(record.exc_info)
        if record.levelno < logging.WARNING and record.name.startswith(PACKAGE):
            return message
        origin = "" if record.name.startswith(PACKAGE) else f" ({record.name})"
        return f"{record.levelname.lower()}{origin}: {message}"


class _ConsoleFilter(logging.Filter):
    """Others' records from `third_party_level`; the package's from INFO (WARNING elsewhere)."""

    def __init__(self, third_party_level: int):
        super().__init__()
        self.third_party_level = third_party_level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == PACKAGE or record.name.startswith(PACKAGE + "."):
            return record.levelno >= logging.INFO
        if self.third_party_level >= logging.WARNING and _reported_elsewhere(record):
            return False  # raised again in the main thread, where the run reports it once
        return record.levelno >= self.third_party_level


def _reported_elsewhere(record: logging.LogRecord) -> bool:
    """An error orbax logs in a background thread (it raises it again in the main one), or
    asyncio's note on the other reads of a failed restore, whose error the run reports."""
    if record.levelno < logging.ERROR:
        return False
    if record.name == "asyncio":
        return "exception was never retrieved" in str(record.msg)
    return "/orbax/" in record.pathname.replace("\\", "/")


def _quiet_closed_loops() -> None:
    """Keeps the leftovers of a failed orbax read or write off the console (log.txt only):
    "Event loop is closed" from TensorStore's callbacks into a loop orbax closed, and the
    errors of the other reads of a restore that failed, raised when their coroutines are
    collected. The failure itself is reported once, where the run meets it."""

    def closed_loop(value: BaseException | None) -> bool:
        return isinstance(value, RuntimeError) and str(value) == "Event loop is closed"

    def excepthook(kind, value, tb, previous=sys.excepthook):
        if closed_loop(value):
            logging.getLogger(PACKAGE).debug("ignored: %s", value)
            return
        previous(kind, value, tb)

    def orbax_leftover(unraisable) -> bool:  # the other reads of a restore that failed
        code = getattr(unraisable.object, "cr_code", None)
        return code is not None and "/orbax/" in code.co_filename.replace("\\", "/")

    def unraisablehook(unraisable, previous=sys.unraisablehook):
        if closed_loop(unraisable.exc_value) or orbax_leftover(unraisable):
            logging.getLogger(PACKAGE).debug("ignored: %s", unraisable.exc_value)
            return
        previous(unraisable)

    def thread_excepthook(args, previous=threading.excepthook):
        if not closed_loop(args.exc_value):
            previous(args)

    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
    threading.excepthook = thread_excepthook


def setup(third_party_level: int = logging.WARNING, primary: bool = True) -> None:
    """Replaces the root handlers (absl's included) by the console handler.

    `primary` is process 0: other processes print warnings and errors only.
    """
    _quiet_closed_loops()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if not isinstance(handler, _FileHandler):
            root.removeHandler(handler)
    root.setLevel(min(logging.INFO, third_party_level))
    logging.getLogger("absl").setLevel(logging.NOTSET)  # follows the root, not --verbosity
    logging.getLogger(PACKAGE).setLevel(logging.INFO)
    handler = _console_handler(third_party_level if primary else logging.WARNING)
    if not primary:
        handler.setLevel(logging.WARNING)
    root.addHandler(handler)


class _FileHandler(logging.FileHandler):
    """The run's log.txt (a type of its own, so `setup` keeps it).

    A write that fails (a full disk) stops the file quietly: the console still shows the
    run's lines and the error that ends it, instead of a traceback per record.
    """

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self.failed = True


def _console_handler(third_party_level: int) -> _ConsoleHandler:
    handler = _ConsoleHandler()
    handler.setFormatter(_ConsoleFormatter())
    handler.addFilter(_ConsoleFilter(third_party_level))
    return handler


@contextlib.contextmanager
def run_output(workdir: str | pathlib.Path, primary: bool = True) -> Iterator[None]:
    """While the block runs: every record at INFO and above appended to WORKDIR/log.txt.

    Local workdirs only (a gs:// run's log stays on the console); nested uses of the same
    file share one handler. Called without `setup` (a notebook, a test), the package's own
    lines also go to the console for the block.
    """
    path = (pathlib.Path(str(workdir)) / "log.txt").absolute()
    root, package = logging.getLogger(), logging.getLogger(PACKAGE)
    added: list[tuple[logging.Logger, logging.Handler]] = []
    has_file = any(
        isinstance(h, _FileHandler) and pathlib.Path(h.baseFilename) == path for h in root.handlers
    )
    if primary and "://" not in str(workdir) and not has_file:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = _FileHandler(path, encoding="utf-8")
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter(_FILE_FORMAT, "%Y-%m-%d %H:%M:%S"))
        added.append((root, handler))
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
    shown = any(isinstance(h, _ConsoleHandler) for h in root.handlers + package.handlers)
    if primary and not shown:
        added.append((package, _console_handler(logging.INFO)))
    package.setLevel(logging.INFO)
    for logger, handler in added:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger, handler in added:
            logger.removeHandler(handler)
            handler.close()
