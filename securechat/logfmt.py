"""The server's own log on stderr: one line per event, for a terminal, a file or journald.

Under systemd, stderr is a stream into the journal (JOURNAL_STREAM names it). journald adds
its own timestamp and reads a leading `<N>` as the syslog priority (sd-daemon(3)), so there
each line is `<4>securechat: ...`; elsewhere it is `time LEVEL logger: ...`, coloured only on
a terminal. A multi-line message would become several journal entries, so newlines are
escaped and an exception is summarised on its line (the full traceback only with --verbose).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Mapping, TextIO

PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
COLOURS = {logging.WARNING: "\033[33m", logging.ERROR: "\033[31m", logging.CRITICAL: "\033[1;31m"}
RESET = "\033[0m"


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (custom levels round down to the next severity)."""
    for level in sorted(PRIORITIES, reverse=True):
        if levelno >= level:
            return PRIORITIES[level]
    return 7


def is_journal(env: Mapping[str, str], stream: TextIO) -> bool:
    """True when stream is the journal stream systemd gave us, not just inherited the variable.

    A child whose stderr was redirected elsewhere still inherits JOURNAL_STREAM; comparing the
    device and inode (as sd-daemon(3) advises) keeps `<N>` prefixes out of a file or a pipe.
    """
    value = env.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        stat = os.fstat(stream.fileno())
        return (int(device), int(inode)) == (stat.st_dev, stat.st_ino)
    except (ValueError, OSError, AttributeError):
        return False


class LineFormatter(logging.Formatter):
    def __init__(self, *, journal: bool = False, colour: bool = False, verbose: bool = False):
        super().__init__(datefmt="%Y-%m-%d %H:%M:%S")
        self.journal = journal
        self.colour = colour and not journal
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[0] is not None:
            kind, error = record.exc_info[0], record.exc_info[1]
            text += f" ({kind.__name__}: {error})" if str(error) else f" ({kind.__name__})"
            if self.verbose:
                text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        text = text.replace("\r", "\\r").replace("\n", "\\n")
        if self.journal:
            return f"<{priority(record.levelno)}>{text}"
        level = record.levelname
        if self.colour and record.levelno in COLOURS:
            level = f"{COLOURS[record.levelno]}{level}{RESET}"
        return f"{self.formatTime(record, self.datefmt)} {level} {text}"


def configure(verbose: bool, stream: TextIO | None = None, env: Mapping[str, str] | None = None) -> None:
    """Send every logger's records to stream (stderr) as single lines."""
    stream = stream or sys.stderr
    env = os.environ if env is None else env
    journal = is_journal(env, stream)
    colour = not journal and stream.isatty() and "NO_COLOR" not in env
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LineFormatter(journal=journal, colour=colour, verbose=verbose))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
