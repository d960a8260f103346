"""Find consumer classes from command-line targets: ``package.module`` or ``module:Class``."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import sys
from types import ModuleType
from typing import Any

from framework.consumer import Consumer
from framework.errors import ConfigError


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise ConfigError(f"cannot import {name!r}: no module named {exc.name!r}") from None
        raise


def _defined_in(module: ModuleType) -> list[type[Consumer]]:
    return [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, Consumer) and obj.__module__ == module.__name__ and obj.queue
    ]


def load_attribute(target: str) -> Any:
    """The object ``module:name`` names (the module imported from the working directory)."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{target!r}: expected module:name")
    _on_path()
    module = _import(module_name)
    if not hasattr(module, attr):
        raise ConfigError(f"{target!r}: module {module_name!r} has no {attr!r}")
    return getattr(module, attr)


def _on_path() -> None:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def load_consumers(targets: list[str]) -> list[type[Consumer]]:
    """Consumer classes named by ``targets``, in order, each once.

    ``pkg.module`` takes every consumer class defined in that module (for a package with
    none of its own: in its submodules); ``pkg.module:Class`` takes one class.
    """
    _on_path()
    found: list[type[Consumer]] = []
    for target in targets:
        module_name, _, attr = target.partition(":")
        module = _import(module_name)
        if attr:
            obj = getattr(module, attr, None)
            if not (inspect.isclass(obj) and issubclass(obj, Consumer)):
                raise ConfigError(f"{target!r} is not a Consumer class")
            classes = [obj]
        else:
            classes = _defined_in(module)
            if not classes and hasattr(module, "__path__"):
                for info in pkgutil.iter_modules(module.__path__, module.__name__ + "."):
                    classes += _defined_in(_import(info.name))
            if not classes:
                raise ConfigError(f"no consumer classes in {module_name!r}")
        found += [cls for cls in classes if cls not in found]
    return found
