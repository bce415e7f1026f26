"""Exceptions raised for bad user input. Each message names the key or the file at fault."""


class MicrofmError(Exception):
    """Base class for errors caused by user input rather than by a bug."""


class ConfigError(MicrofmError, ValueError):
    """A configuration key is unknown, missing or holds an impossible value."""


class DataError(MicrofmError, ValueError):
    """An input file is missing, unreadable or inconsistent with its partner files."""


class WeightsError(MicrofmError, ValueError):
    """A weights file is missing, unsafe to load or does not fit the model."""
