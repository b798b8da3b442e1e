"""Every error cofunc raises, in one place.

Each message names the layer, what was expected and what came. Errors are raised before any
state is computed, so a failed call never leaves an adapter's stored state half-updated.
"""

from __future__ import annotations


class CofuncError(Exception):
    """Base class of every cofunc error."""


# co checks configurations and inputs with ``assert``: these also derive from AssertionError so
# that co users' ``except AssertionError`` clauses keep working after the switch.
class ConfigurationError(CofuncError, ValueError, AssertionError):
    """A layer was constructed with options it cannot honour (raised at construction)."""


class InputShapeError(CofuncError, ValueError, AssertionError):
    """A step or clip input has the wrong rank, channel count or spatial size."""


class StateError(CofuncError, ValueError):
    """A state does not belong to this layer, or was made for another batch of streams."""


class DTypeDeviceError(CofuncError, TypeError):
    """An input's dtype or device differs from the layer's params or state."""


class StreamsOutOfStepError(CofuncError, ValueError):
    """An operation that needs one shared clock got streams at different positions."""


class CheckpointError(CofuncError, ValueError):
    """A published checkpoint has keys or shapes the target model or converter does not expect."""


class StreamIdError(CofuncError, LookupError):
    """A stream runner was asked to open an id that is open, or to use one that is not."""


class UnsupportedModuleError(CofuncError, TypeError):
    """`continual(module)` met a torch.nn module type it has no converter for."""


def layer_label(layer) -> str:
    """The short name used in error messages, such as ``conv3d(3->8, k=(3, 3, 3))``."""
    return getattr(layer, "label", None) or type(layer).__name__


class VideoError(CofuncError, ValueError):
    """A video file cannot be decoded (not a video, corrupt, or without a video stream)."""


class ParamsError(CofuncError, ValueError):
    """Params lack a tensor the layer reads, or hold one of another shape (another layer's params)."""
