"""Exception hierarchy: every error names the bad value and what would be valid."""

from __future__ import annotations


class WhisperLoraError(Exception):
    """Base class of every error raised by whisper-lora."""


class ConfigError(WhisperLoraError, ValueError):
    """A configuration value is invalid; the message lists every problem found."""


class ModelNotFoundError(WhisperLoraError, FileNotFoundError):
    """A base model name or path could not be resolved."""


class ConversionError(WhisperLoraError):
    """A CTranslate2 checkpoint could not be read or converted."""


class DataError(WhisperLoraError):
    """A corpus is missing, malformed, or has too many bad rows."""


class AdapterError(WhisperLoraError):
    """An adapter directory is missing, malformed or incompatible."""


class BrokenAdapterError(AdapterError):
    """An adapter exists in the registry but cannot be used; the message says why."""


class CheckpointError(ConfigError):
    """A training checkpoint cannot be resumed from; the message names the file and what to do."""


class LockedError(WhisperLoraError):
    """Another process holds a lock (a training run's output directory); the message names it and its pid."""


class DiskFullError(WhisperLoraError, OSError):
    """A write ran out of disk space or quota; the message names the directory and how much was needed."""


def format_choices(choices) -> str:
    """Format a collection of valid values for an error message."""
    items = sorted(str(c) for c in choices)
    if len(items) > 30:
        return ", ".join(items[:30]) + f", ... ({len(items)} in all)"
    return ", ".join(items)
