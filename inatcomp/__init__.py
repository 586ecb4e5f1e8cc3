"""inatcomp: build, train, predict and score iNaturalist-style species-classification competitions."""

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

__version__ = "0.1.0"

# albumentations 2.0.8 asks the package index for its latest version at every import unless told not to: a
# network call of up to 2 s (and a trace of every run) before any training starts, or a warning offline. The kit
# opts out for itself before any of its modules can load albumentations; a user's own setting wins.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The PEP 562 ``__getattr__`` and ``__dir__`` of a subpackage that re-exports names without importing them.

    Args:
        package: The subpackage's ``__name__``.
        exports: Name → the module of ``package`` defining it (``"engine"``), imported on the name's first use so
            that importing the subpackage costs nothing (the torch-using ones stay out of the file commands).
    """
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:  # noqa: N807 (the module hook's own name)
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        namespace[name] = value  # later lookups skip the hook
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted(set(namespace) | set(namespace.get("__all__", ())))

    return __getattr__, __dir__
