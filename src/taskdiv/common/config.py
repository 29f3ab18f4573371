"""Stage configs: one dataclass per command, exposed as CLI flags and YAML keys.

Each field becomes `--field-name` (metadata: `help`, `choices`, `positional`).
Precedence: command-line flags > `--config FILE.yaml` > the dataclass defaults.
The resolved config is what run directories record (`to_dict`).
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path

from .errors import TaskdivError
from .redact import display_uri, remember_in, shown, split_userinfo

# Every option that holds a seed, in every stage: one rule for all of them (numpy takes any
# non-negative integer, torch and transformers.set_seed only those below 2**32).
SEED_FIELDS = ("seed", "seeds", "full_seeds")
MAX_SEED = 2**32 - 1


def _base_type(tp):
    """(scalar type, is_list) of an annotation such as `int | None` or `list[str]`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    if origin is list:
        return typing.get_args(tp)[0], True
    return tp, False


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """Add one argument per dataclass field; defaults are resolved later (`build`)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        tp, is_list = _base_type(hints[f.name])
        kw = {"help": _help(f), "default": argparse.SUPPRESS}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = tp
            if is_list:
                kw["nargs"] = "+"
        if f.metadata.get("positional"):
            kw.pop("default")
            parser.add_argument(f.name, nargs="?", default=argparse.SUPPRESS, metavar=f.name.upper(),
                                **{k: v for k, v in kw.items() if k != "nargs"})
        else:
            flags = ["--" + f.name.replace("_", "-")] + list(f.metadata.get("aliases", ()))
            parser.add_argument(*flags, dest=f.name, **kw)
    # SUPPRESS: absent after the command, a --config given before it (`taskdiv --config F score`) stands.
    parser.add_argument("--config", metavar="FILE.yaml", default=argparse.SUPPRESS,
                        help="YAML file with these options as keys; command-line flags override it.")


def _help(f) -> str:
    text = f.metadata.get("help", "")
    if f.default is not dataclasses.MISSING and f.default is not None and not f.metadata.get("positional"):
        text += f" (default: {f.default})"
    return text.replace("%", "%%")


def build(cls, namespace: argparse.Namespace | dict | None = None, config_file: str | Path | None = None, *,
          prefix: str = "", loaded: dict | None = None):
    """An instance of `cls` from defaults, then the YAML file, then the given values.
    Values are checked against their field's type and `choices`; `prefix` names the keys
    in errors (an experiment's `train.`). `loaded`: the file's keys, already read by
    `load_yaml` (the file is then named in errors, not read again)."""
    values: dict = {}
    if loaded is not None:
        values.update(loaded)
    elif config_file:
        values.update(load_yaml(config_file, cls))
    given = vars(namespace) if isinstance(namespace, argparse.Namespace) else dict(namespace or {})
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in given.items() if k in names})
    remember_in(values)  # a password in an option (--shards s3://KEY:SECRET@...) is masked wherever it shows
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in values:
            values[f.name] = _coerce(values[f.name], hints[f.name], prefix + f.name, config_file)
            choices = f.metadata.get("choices")
            if choices and values[f.name] is not None and values[f.name] not in choices:
                where = f"{config_file}: " if config_file else ""
                raise TaskdivError(f"{where}key {prefix + f.name!r}: {values[f.name]!r} is not one of "
                                   f"{', '.join(map(str, choices))}")
        elif f.metadata.get("required") or (f.default is dataclasses.MISSING
                                              and f.default_factory is dataclasses.MISSING):
            flag = f.name.upper() if f.metadata.get("positional") else "--" + f.name.replace("_", "-")
            raise TaskdivError(f"missing required {flag}")
        if f.name in SEED_FIELDS and values.get(f.name) is not None:
            check_seed(values[f.name], f.name, config_file)
    return cls(**values)


def check_seed(value, name: str = "seed", source=None) -> None:
    """A seed is a whole number from 0 to 2**32 - 1 (a list of them for `seeds`)."""
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_SEED:
            where = f"{source}: " if source else ""
            raise TaskdivError(f"{where}--{name.replace('_', '-')} {v}: a seed must be a whole number "
                               f"from 0 to {MAX_SEED}")


def load_yaml(path, cls) -> dict:
    from .inputs import read_yaml

    path = Path(path)
    if not path.exists():
        raise TaskdivError(f"{path}: no such config file")
    data = read_yaml(path) or {}  # bounded: a special file, an alias bomb, deep nesting are refused
    if not isinstance(data, dict):
        raise TaskdivError(f"{path}: expected a mapping of option names to values")
    _refuse_credentials(data, path)
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        import difflib

        hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, names, 1)) else k
                 for k in unknown]
        raise TaskdivError(f"{path}: unknown key(s) {', '.join(hints)}")
    return data


def _refuse_credentials(value, path, key: str = "") -> None:
    """A config file holds no password (s3://KEY:SECRET@..., user:password@host): it is meant to be
    committed, and an experiment copies it into EXP/config.yaml. Credentials come from the environment."""
    if isinstance(value, str) and split_userinfo(value):
        raise TaskdivError(f"{path}: key {key!r}: {display_uri(value)} holds credentials, which a config file "
                           f"must not (it is meant to be committed); leave them out of the address and set them "
                           f"in the environment (for s3://: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        _refuse_credentials(v, path, f"{key}[{k}]" if isinstance(value, list) else f"{key}.{k}" if key else str(k))


def _optional(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _coerce(value, tp, name, source):
    base, is_list = _base_type(tp)
    try:
        if value is None:
            if _optional(tp):
                return None
            raise ValueError("has no value (an empty YAML key?)")
        if is_list:
            items = value if isinstance(value, list) else [value]
            return [_scalar(v, base) for v in items]
        return _scalar(value, base)
    except (TypeError, ValueError) as e:
        where = f"{source}: " if source else ""
        raise TaskdivError(f"{where}key {name!r}: {e}") from None


def _scalar(value, base):
    """One value as `base`: whole numbers stay whole (1.5 and true are no int), a mapping
    is a dict, text is text."""
    if base is bool and not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    if base is dict and not isinstance(value, dict):
        raise ValueError(f"expected a mapping of keys to values, got {value!r}")
    if base is int and isinstance(value, bool):
        raise ValueError(f"expected a whole number, got {str(value).lower()}")
    if base in (int, float, str) and not isinstance(value, base):
        if base is int and isinstance(value, float) and value != int(value):
            raise ValueError(f"expected a whole number, got {value}")
        if base is str and not isinstance(value, (int, float)):  # a list or mapping is no text
            raise ValueError(f"expected text, got {value!r}")
        return base(value)
    return value


def to_dict(cfg, *, exclude=()) -> dict:
    """The config's fields as a plain dict (what run directories record), without `exclude`;
    a password in an address is masked (`redact.display_uri`)."""
    return {k: shown(v) for k, v in dataclasses.asdict(cfg).items() if k not in exclude}
