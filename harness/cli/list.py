"""`python -m harness list`: every registered quantizer, adapter and metric with its one-line description."""

from harness.registry import ADAPTERS, CORPORA, METRICS, QUANTIZERS


def main() -> None:
    for registry in (QUANTIZERS, ADAPTERS, METRICS, CORPORA):
        entries = list(registry)
        print(f"{registry.plural} ({len(entries)}):")
        for entry in entries:
            print(f"  {entry.name:<14} {entry.description}")
        if not entries:
            print("  (none yet)")
