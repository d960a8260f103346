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


def _defined_in(module: ModuleType) -> tuple[list[type[Consumer]], list[str]]:
    """The consumer classes defined in ``module``, and what is wrong with each that cannot
    consume. A class without ``queue`` that another class of the module derives from, or
    with no ``handle`` of its own, is a base class, not a mistake."""
    classes = [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, Consumer) and obj is not Consumer and obj.__module__ == module.__name__
    ]
    bases = {base for cls in classes for base in cls.__mro__[1:]}
    found: list[type[Consumer]] = []
    problems: list[str] = []
    for cls in classes:
        if not cls.queue and (cls in bases or "handle" not in cls.__dict__):
            continue
        try:
            cls.event_classes()
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        found.append(cls)
    return found, problems


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
            classes, problems = _defined_in(module)
            if not classes and not problems and hasattr(module, "__path__"):
                for info in pkgutil.iter_modules(module.__path__, module.__name__ + "."):
                    more, wrong = _defined_in(_import(info.name))
                    classes, problems = classes + more, problems + wrong
            if problems:
                raise ConfigError(f"{module_name!r}: {'; '.join(problems)}")
            if not classes:
                raise ConfigError(f"no consumer classes in {module_name!r}")
        found += [cls for cls in classes if cls not in found]
    return found
