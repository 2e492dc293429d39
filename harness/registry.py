"""One generic, typed registry for everything the harness can name: quantizers, adapters, metrics...

Entries register themselves from their own module (``@QUANTIZERS.register("nf4", ...)``), so adding
a quantizer is one folder plus one YAML. A registry knows which package holds its entries and
imports it on first lookup, so ``python -m harness list`` sees every entry without a central list.

This module imports nothing heavy: quantizers import it, and it must not import them back.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """A lookup of a name that is not registered. The message lists what exists."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str


class Registry(Generic[T]):
    """Maps names to objects of one kind.

    kind: what the entries are, used in error messages ("quantizer").
    discover: the package whose import registers every entry (imported lazily, once).
    """

    def __init__(self, kind: str, discover: str | None = None, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or kind + "s"
        self._discover = discover
        self._discovered = discover is None
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str) -> Callable[[T], T]:
        """Decorator: ``@REG.register("nf4", "NormalFloat4 ...")`` on a class or function."""

        def decorate(obj: T) -> T:
            self.add(name, obj, description)
            return obj

        return decorate

    def add(self, name: str, obj: T, description: str) -> None:
        if name in self._entries and self._entries[name].obj is not obj:
            raise ValueError(f"{self.kind} {name!r} is registered twice ({self._entries[name].obj!r} and {obj!r})")
        if not description:
            raise ValueError(f"{self.kind} {name!r} needs a one-line description for `harness list`")
        self._entries[name] = Entry(name, obj, description)

    def _ensure_discovered(self) -> None:
        if not self._discovered:
            self._discovered = True  # set first: the package's import calls back into this registry
            importlib.import_module(self._discover)

    def entry(self, name: str) -> Entry[T]:
        self._ensure_discovered()
        try:
            return self._entries[name]
        except KeyError:
            known = sorted(self._entries)
            lowered = {n.lower(): n for n in known}  # "NF4" should find nf4
            close = difflib.get_close_matches(str(name).lower(), list(lowered), n=1, cutoff=0.5)
            hint = f" Did you mean {lowered[close[0]]!r}?" if close else ""
            raise RegistryError(
                f"unknown {self.kind} {name!r}.{hint} Registered {self.plural}: {', '.join(known) or '(none)'}"
            ) from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def names(self) -> list[str]:
        self._ensure_discovered()
        return sorted(self._entries)

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[n] for n in self.names())

    def __contains__(self, name: object) -> bool:
        self._ensure_discovered()
        return name in self._entries

    def __len__(self) -> int:
        return len(self.names())


# The harness' registries. Each is filled by the package named as its `discover` argument.
QUANTIZERS: Registry = Registry("quantizer", discover="quantizers")
ADAPTERS: Registry = Registry("adapter", discover="adapters")
METRICS: Registry = Registry("metric", discover="harness.metrics")
CORPORA: Registry = Registry("corpus", discover="harness.data", plural="corpora")
# lm-eval tasks whose data the harness builds at first use (their YAML names a file that is not shipped)
BUILT_TASKS: Registry = Registry("built task", discover="harness.evaluation.cloze")
# a sweep's figures (harness.report.sweep_data.Figure) and the tables paper sweeps write (paper.kind)
FIGURES: Registry = Registry("figure", discover="harness.report.figures")
PAPER_TABLES: Registry = Registry("paper table", discover="harness.sweep.paper_kinds")
