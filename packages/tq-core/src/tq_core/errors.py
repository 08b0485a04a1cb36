"""The one error hierarchy of tq. Every message names the bad value and what is allowed."""


class TQError(Exception):
    """Base class of every error tq raises on purpose."""


class TQConfigError(TQError, ValueError):
    """A configuration value (keyword argument or TQ_* environment variable) is not supported."""


class TQUnsupportedModelError(TQError, ValueError):
    """The model has a shape or architecture tq does not handle (head_dim, MLA, ...)."""


class TQInputError(TQError, ValueError):
    """A tensor handed to a tq op has the wrong dtype, shape, device or range."""


class TQMissingDependencyError(TQError, RuntimeError):
    """An optional package a command needs (the demo's transformers, a model package) is absent."""
