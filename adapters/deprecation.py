"""Old names of the adapter API: one place that makes every deprecated name warn the same way.

Every adapter follows diffusers' loader scheme (``load_<name>`` / ``set_<name>_scale`` / ``fuse_<name>`` /
``unfuse_<name>`` / ``unload_<name>``, ``from_pretrained(base, <name>=...)``). Names from before that scheme still work
and emit a ``FutureWarning`` worded as diffusers' :func:`diffusers.utils.deprecate` words its own. ``deprecate`` itself
is not used: it compares the removal version with *diffusers'* version and raises once diffusers reaches it, which
would break these aliases on a diffusers upgrade rather than on a release of this package.
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["REMOVAL_VERSION", "deprecated_kwarg", "deprecated_name"]

#: Release of this package in which the deprecated names go.
REMOVAL_VERSION = "1.0.0"


def _warn(old: str, message: str, stacklevel: int) -> None:
    """``FutureWarning`` for ``old``; ``stacklevel`` counted as diffusers' ``deprecate`` counts it (one frame above
    this function's caller)."""
    text = f"`{old}` is deprecated and will be removed in version {REMOVAL_VERSION}. {message}"
    warnings.warn(text, FutureWarning, stacklevel=stacklevel)


def deprecated_name(old: str, new: str, *, stacklevel: int = 4) -> None:
    """Warn (``FutureWarning``) that ``old`` is deprecated in favour of ``new``.

    ``stacklevel`` 4 points the warning at the caller of a method that calls this helper directly.
    """
    _warn(old, f"Use `{new}` instead.", stacklevel)


def deprecated_kwarg(
    kwargs: dict[str, Any], old: str, new: str, value: Any, *, default: Any = None, stacklevel: int = 4
) -> Any:
    """Pop the deprecated keyword ``old`` from ``kwargs`` (warning once) and return the value to use for ``new``.

    Args:
        kwargs: the call's remaining keyword arguments (``old`` is removed from it).
        old: the deprecated keyword.
        new: its replacement.
        value: what the call passed as ``new``.
        default: ``new``'s default; passing ``old`` together with a non-default ``new`` is refused.
        stacklevel: as :func:`warnings.warn`'s, counted from diffusers' ``deprecate`` (4: the caller of the function
            that calls this helper).

    Raises:
        ValueError: both ``old`` and ``new`` given.
    """
    if old not in kwargs:
        return value
    if value is not default:
        raise ValueError(f"Pass `{new}` only (`{old}` is its deprecated name), not both.")
    _warn(old, f"Use `{new}=` instead.", stacklevel)
    return kwargs.pop(old)
