"""User errors: a bad config, name or input file. The CLI prints them as one line and exits 2, no traceback.

Only the validation stage of a command (everything decided before any weight is loaded) turns exceptions into
user errors, with `validating()`. An exception later, during the work itself, is a bug or a runtime failure and
keeps its traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import re
import sys

from omegaconf.errors import OmegaConfBaseException, ValidationError


class UserError(Exception):
    """A mistake in what the user asked for; the message names the field, the value and what is accepted."""


def message(exc: BaseException) -> str:
    """The exception's text on one line (KeyError quotes its argument; Hydra's messages span lines and keep the
    useful part, such as which key a schema lacks, in their cause)."""
    text = str(exc.args[0] if isinstance(exc, KeyError) and type(exc).__str__ is KeyError.__str__ and exc.args
               else exc)
    missing = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if missing:  # Hydra lists every option, schemas included, then its search path: say it shorter
        group, name = missing.groups()
        options = re.findall(r"^\t(\S+)$", text, flags=re.MULTILINE)
        options = [o for o in options if not o.endswith("_schema")]
        close = difflib.get_close_matches(name, options, n=1)
        return (f"{group}={name} does not exist." + (f" Did you mean {group}={close[0]}?" if close else "")
                + f" Available {group} options: {', '.join(options)}")
    cause = exc.__cause__
    schema = getattr(cause, "object_type", None)
    key = getattr(cause, "key", None)
    if isinstance(cause, ValidationError) and dataclasses.is_dataclass(schema) and key is not None:
        return wrong_type(cause, schema, str(key))
    if "Could not override" in text and dataclasses.is_dataclass(schema) and key is not None:
        fields = [f.name for f in dataclasses.fields(schema)]  # a misspelt key: what the schema has
        close = difflib.get_close_matches(str(key), fields, n=1)
        full = getattr(cause, "full_key", key)
        return (f"{full} is not a field of {schema.__name__}." + (f" Did you mean {close[0]}?" if close else "")
                + f" Accepted fields: {', '.join(fields)}")
    if cause is not None and isinstance(cause, OmegaConfBaseException):
        text += ": " + str(cause).split("\n")[0]
    return " ".join(text.split())


def wrong_type(error: ValidationError, schema: type, key: str) -> str:
    """`train.lr=abc: Value 'abc' of type 'str' could not be converted to Float; train.lr takes a float, e.g.
    train.lr=0.001`: an override OmegaConf could not convert to its schema field's type, said as the field, the
    value, why and what the field takes (the example is the schema's default; a YAML may set another)."""
    full = getattr(error, "full_key", None) or key
    field = next((f for f in dataclasses.fields(schema) if f.name == key), None)
    reason = " ".join(str(getattr(error, "msg", error)).split("\n")[0].split()).rstrip(".")
    text = f"{full}={getattr(error, 'value', '?')}: {reason}"
    if field is None:
        return text
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    example = field.default if isinstance(field.default, (bool, int, float, str)) else None
    if isinstance(example, bool):
        example = str(example).lower()  # as the command line writes it
    return text + f"; {full} takes {_a(kind)}" + (f", e.g. {full}={example}" if example is not None else "")


def _a(kind: str) -> str:
    if kind.endswith(" | None"):  # an optional field: null (None) leaves the choice to the run
        return _a(kind.removesuffix(" | None")) + " or null"
    if kind.startswith("list"):
        return "a list, e.g. [a, b]"
    if kind.startswith("dict"):
        return "a mapping, e.g. {a: 1}"
    return {"float": "a float", "int": "an integer", "bool": "a boolean (true or false)", "str": "a string"}.get(
        kind, f"a value of type {kind}")


@contextlib.contextmanager
def validating(what: str = ""):
    """Turn what a validation stage raises (bad values, unknown names, missing files) into a UserError."""
    from hydra.errors import HydraException
    from yaml import YAMLError

    try:
        yield
    except UserError:
        raise
    except (ValueError, KeyError, TypeError, FileNotFoundError, OmegaConfBaseException, HydraException,
            YAMLError) as exc:  # YAMLError: a malformed YAML file (a grid), with its path and line
        raise UserError((f"{what}: " if what else "") + message(exc)) from exc


def exits_on_user_error(main):
    """Decorate a command's entry point: a UserError prints `error: <message>` on stderr and exits with 2."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapped
