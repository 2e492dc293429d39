"""`python -m harness <command> [hydra overrides]`: pop the command, hand the rest to its module."""

import importlib
import sys

COMMANDS = {
    "list": "harness.cli.list",
    "errors": "harness.cli.errors",
    "eval": "harness.cli.eval",
    "train": "harness.cli.train",
    "memory": "harness.cli.memory",
    "sweep": "harness.cli.sweep",
    "collect": "harness.cli.collect",
    "plot": "harness.cli.plot",
    "table": "harness.cli.table",
    "export-peft": "harness.cli.export_peft",
    "compare": "harness.cli.compare",
    "sensitivity": "harness.cli.sensitivity",
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print("usage: python -m harness <command> [hydra overrides]\ncommands: " + ", ".join(COMMANDS))
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    command = sys.argv.pop(1)
    if command not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(f"error: unknown command {command!r}.{hint} Commands: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)  # a user error, as every command's
    importlib.import_module(COMMANDS[command]).main()


if __name__ == "__main__":
    main()
