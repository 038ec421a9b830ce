"""The one exception type the converters raise for bad input."""


class ConversionError(ValueError):
    """A checkpoint, config or command line that cannot be converted faithfully; the message says what and why."""
