"""Keep heavy optional modules out of processes that never use them.

declearn's package `__init__` imports `declearn.dataset.examples`, which imports torch and
pandas whenever torch is installed. The researcher only aggregates numpy arrays, so that
import alone would cost it hundreds of MB of resident memory. `defer_declearn_examples`
puts a placeholder for that sub-package in `sys.modules`: the first attribute asked of it
imports the real sub-package, so code using declearn's examples still gets them whole.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

__all__ = ["defer_declearn_examples"]

_EXAMPLES = "declearn.dataset.examples"
#: declearn 2.9's torch-free example loaders and the modules defining them.
_LIGHT = {"load_heart_uci": "_heart_uci", "load_mnist": "_mnist"}


class _Deferred(types.ModuleType):
    """Stands for a module until an attribute is asked of it, then imports it for real."""

    def __init__(self, name: str, init: Path) -> None:
        super().__init__(name)
        self.__file__ = str(init)
        self.__path__ = [str(init.parent)]

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # the import system probing: not a use of the module
            raise AttributeError(attr)
        if attr in _LIGHT:
            module = importlib.import_module(f"{self.__name__}.{_LIGHT[attr]}")
            return getattr(module, attr)
        real = _import_for_real(self.__name__, Path(self.__file__ or ""))
        return getattr(real, attr)


def _import_for_real(name: str, init: Path) -> types.ModuleType:
    current = sys.modules.get(name)
    if current is not None and not isinstance(current, _Deferred):
        return current
    spec = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[str(init.parent)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    parent_name, _, child = name.rpartition(".")
    parent = sys.modules.get(parent_name)
    if parent is not None:
        setattr(parent, child, module)
    return module


def defer_declearn_examples() -> None:
    """Make `declearn.dataset.examples` load on first use (a no-op once declearn is imported)."""
    if "declearn" in sys.modules or _EXAMPLES in sys.modules:
        return
    top = importlib.util.find_spec("declearn")  # finds the package without running it
    if top is None or top.submodule_search_locations is None:
        return
    for location in top.submodule_search_locations:
        init = Path(location) / "dataset" / "examples" / "__init__.py"
        if init.is_file():
            sys.modules[_EXAMPLES] = _Deferred(_EXAMPLES, init)
            return
