"""Exception types for the whole toolkit.

Every error the toolkit raises on purpose derives from ``ToolkitError``; the specific ones also
subclass the builtin a user would try to catch (pynacl's pattern), so ``except ValueError`` works.
This module must import nothing from the rest of the package.
"""


class ToolkitError(Exception):
    """Base class of every error raised by cengine-toolkit."""


class EngineError(ToolkitError, RuntimeError):
    """The C engine reported a failure that has no more specific type."""


class BuildError(ToolkitError, ImportError):
    """The compiled engine is missing, stale or does not match this Python package."""


class ShapeError(ToolkitError, ValueError):
    """Tensor shapes do not fit the operation."""


class DTypeError(ToolkitError, TypeError):
    """A tensor has a dtype the operation does not accept."""


class IndexOutOfRangeError(ToolkitError, IndexError):
    """A token id or position lies outside its valid range."""


class OutOfMemoryError(ToolkitError, MemoryError):
    """The engine could not allocate memory."""


class FormatError(ToolkitError, ValueError):
    """A weight, tokenizer or config file is corrupt, truncated or of an unsupported kind."""


class UnsupportedError(ToolkitError, NotImplementedError):
    """The input is valid but uses a feature this toolkit does not implement (names it)."""


class ModelNotFoundError(ToolkitError, FileNotFoundError):
    """A model name or path could not be resolved to weights on disk."""


class TokenizerError(ToolkitError, ValueError):
    """Text or token ids could not be encoded or decoded."""


class ContextLengthError(ToolkitError, ValueError):
    """A request would run past the model's context length."""


class InvalidArgumentError(ToolkitError, ValueError):
    """An argument has a valid type but a value the operation cannot use."""


class ArgumentTypeError(ToolkitError, TypeError):
    """An argument has the wrong Python type (e.g. a list where a Tensor is needed)."""


class ClosedError(ToolkitError, ValueError):
    """A file, mapping or model was used after close()."""
