"""`python -m harness list`: every registered quantizer, adapter and metric with its one-line description."""

import sys

from harness.registry import ADAPTERS, CORPORA, METRICS, QUANTIZERS
from harness.user_error import UserError, exits_on_user_error


@exits_on_user_error
def main() -> None:
    if len(sys.argv) > 1:
        raise UserError(f"list takes no arguments, got {' '.join(sys.argv[1:])}; usage: python -m harness list")
    for registry in (QUANTIZERS, ADAPTERS, METRICS, CORPORA):
        entries = list(registry)
        print(f"{registry.plural} ({len(entries)}):")
        for entry in entries:
            print(f"  {entry.name:<14} {entry.description}")
        if not entries:
            print("  (none yet)")
