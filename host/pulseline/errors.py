"""The one error type of pulseline's library: an operation that cannot be
done, with a one-line reason for the person who asked. The CLI catches it
once and prints `pulseline: error: <reason>` (exit status 2); each part of
the library subclasses it (SessionError, FlashError, PresetError, ...)."""

from __future__ import annotations


class PulselineError(Exception):
    """A one-line reason an operation failed, said to whoever asked."""
