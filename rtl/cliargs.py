"""Option value checks for every `rtl` verb, applied by argparse at parse time (`type=` callables).

Why: a bad number (`--max-patches 0`, `--port 99999`, `--epochs -3`, `--lr nan`) used to travel into
Ray or MLflow and come back as a traceback, sometimes after minutes of work. argparse turns the
`ArgumentTypeError` raised here into `rtl <verb>: error: argument --x: <message>` and exit code 2,
before anything is written or started. Checks between options (`--min-side` <= `--max-side`) run
right after parsing in `check_combinations`, called by `rtl.cli.main`.

The second half builds the parsers of every verb the same way (issue 15): `RtlParser` (defaults in
`--help`, one-line errors), `add_model_options` / `model_kwargs` (options generated from a pydantic config,
so a default lives only in the model), `deprecated` (old spellings kept for one release, hidden, one
warning line) and `on_first_use` (options whose module imports torch are added only when their verb runs).
"""

from __future__ import annotations

import argparse
import ipaddress
import math
from collections.abc import Callable

SEED_MAX = 2**32 - 1  # numpy's legacy seeding and most samplers accept [0, 2**32)


def _int(text: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def int_range(lo: int, hi: int | None = None, what: str = "") -> Callable[[str], int]:
    """An argparse `type=` accepting integers in [lo, hi] (hi None: no upper bound)."""

    def check(text: str) -> int:
        v = _int(text)
        if v < lo or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise argparse.ArgumentTypeError(f"{what or 'must be an integer'} {rng}, got {v}".strip())
        return v

    check.__name__ = f"int_range_{lo}_{hi}"
    return check


def float_range(lo: float, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False,
                what: str = "must be a number") -> Callable[[str], float]:
    """An argparse `type=` accepting finite floats in [lo, hi] (open ends with lo_open / hi_open)."""

    def check(text: str) -> float:
        v = _float(text)
        if (v <= lo if lo_open else v < lo) or (hi is not None and (v >= hi if hi_open else v > hi)):
            left = ">" if lo_open else ">="
            rng = (f"{left} {lo:g}" if hi is None else
                   f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")
            raise argparse.ArgumentTypeError(f"{what} {rng}, got {text}")
        return v

    check.__name__ = f"float_range_{lo}_{hi}"
    return check


positive_int = int_range(1, what="must be an integer")  # counts that must exist: epochs, batch, workers
nonneg_int = int_range(0, what="must be an integer")            # counts where 0 means none / off
seed = int_range(0, SEED_MAX, what="seed must be")
port = int_range(1, 65535, what="port must be")
positive_float = float_range(0.0, lo_open=True)                  # learning rates
nonneg_float = float_range(0.0)                                   # weight decay, regularizer strengths
fraction = float_range(0.0, 1.0, lo_open=True)                    # shares of a mass
downscale = float_range(1.0, what="a shrink factor must be")      # 1 = never shrink (always patch)
# Image sides: small_cnn, the smallest backbone, max-pools 8x, so an 8 px image reaches its last stage as
# a single pixel (and an 8 px patch holds no defect detail); 16 px still leaves it a 2x2 map.
MIN_SIDE = 16
side = int_range(MIN_SIDE, what="image side (px) must be")


def seed_list(text: str) -> list[int]:
    """Comma-separated seeds, e.g. `0,1,2` (each a `seed`)."""
    items = [t for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("give at least one seed, e.g. 0,1,2")
    return [seed(t.strip()) for t in items]


def host_address(text: str) -> str:
    """An IP address to listen on (`localhost` = 127.0.0.1); names are refused so loopback is decidable."""
    if text.strip().lower() == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(text.strip().strip("[]")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an IP address (e.g. 127.0.0.1 or 0.0.0.0), got {text!r}") from None


def check_combinations(args: argparse.Namespace) -> str | None:
    """A problem between options of one verb (one line), or None. Runs before the verb does anything."""
    lo, hi = getattr(args, "min_side", None), getattr(args, "max_side", None)
    if lo is not None and hi is not None and lo > hi:
        return f"--min-side ({lo}) must be <= --max-side ({hi})"
    return None



def names(text: str) -> list[str]:
    """A comma list of names (`a,b,c`), at least one."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("give at least one name, e.g. a,b")
    return items


def tags(text: str) -> list[str]:
    """A comma list that may be empty (`--domains ""`: no tags)."""
    return [t.strip() for t in text.split(",") if t.strip()]


DEVICES = ("auto", "cpu", "cuda")


def device(text: str) -> str:
    """`auto` (cuda when this machine has a GPU), `cpu`, `cuda` or `cuda:N`."""
    t = text.strip().lower()
    if t in DEVICES or (t.startswith("cuda:") and t[5:].isdigit()):
        return t
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")


def resolve_device(name: str) -> str:
    """`auto` -> `cuda` when torch sees a GPU here, else `cpu`; anything else unchanged. Imports torch only
    for `auto` (the parser itself never does: `rtl --help` stays fast)."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------------------ parsers
# Why a small helper on argparse instead of jsonargparse or typer: no new dependency, argparse is what every
# verb already uses (so `type=` checks, exit codes and tests stay as they are), and `rtl --help` must stay
# fast -- it builds every verb's parser, so a config model (and the torch its module imports) is only read
# when its own verb is used (`on_first_use`).
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps docstring layout and appends `(default: X)` to every option with a meaningful default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("%(default)" in text or action.default in (None, "") or action.default is argparse.SUPPRESS
                or action.required or action.nargs == 0 or not action.option_strings):
            return text
        shown = ",".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else action.default
        return f"{text} (default: {str(shown).replace('%', '%%')})"

    def _split_lines(self, text: str, width: int) -> list[str]:
        """Wrap at spaces only: argparse also breaks after hyphens, which cut a default path such as
        `/tmp/ci-clone/sweeps/demo.yaml` in two (a copied path then has a space in it)."""
        import re
        import textwrap

        return textwrap.wrap(re.sub(r"\s+", " ", text).strip(), width, break_on_hyphens=False,
                             break_long_words=False) or [""]


class RtlParser(argparse.ArgumentParser):
    """argparse with rtl's help formatter, one-line errors (`rtl: error: ...`, exit 2), options added on first
    use (`on_first_use`), an argv rewrite for deprecated spellings (`.rewrite`) and required options that a
    deprecated alias may satisfy (`deprecated`)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self._pending: list[Callable[[argparse.ArgumentParser], None]] = []
        self._aliased_required: list[argparse.Action] = []
        self._args: list[str] = []
        self.rewrite: Callable[[list[str]], list[str]] | None = None

    def _populate(self) -> None:
        while self._pending:
            self._pending.pop(0)(self)

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001 (argparse's signature)
        import sys

        self._populate()
        args = list(sys.argv[1:] if args is None else args)
        if self.rewrite is not None:
            args = self.rewrite(args)
        self._args = args
        for a in self._aliased_required:  # argparse cannot know that `--domain x` gives `--domains`
            a.required = False
        try:
            ns, rest = super().parse_known_args(args, namespace)
        finally:
            for a in self._aliased_required:
                a.required = True
        missing = [a.option_strings[-1] for a in self._aliased_required if getattr(ns, a.dest, None) is None]
        if missing:
            self.error(f"the following arguments are required: {', '.join(missing)}")
        return ns, rest

    def format_help(self) -> str:
        self._populate()
        for a in self._aliased_required:  # shown as required even while parse_known_args relaxes them
            a.required = True
        return super().format_help()

    def format_usage(self) -> str:
        self._populate()
        for a in self._aliased_required:
            a.required = True
        return super().format_usage()

    def error(self, message: str):  # noqa: ANN201 (NoReturn)
        required = "the following arguments are required: "
        if message.startswith(required):  # argparse stops at the first group of missing ones: name them all
            given = {a.split("=", 1)[0] for a in self._args}
            also = [a.option_strings[-1] for a in self._aliased_required
                    if not given & {*a.option_strings, *getattr(a, "aliases", ())}]
            message = ", ".join([message, *(o for o in also if o not in message)])
        verb = self.prog.removeprefix("rtl").strip()
        where = f"{verb}: " if verb else ""
        hint = f" (see `{self.prog} --help`)" if "required" in message or "invalid choice" in message else ""
        self.exit(2, f"rtl: error: {where}{message}{hint}\n")


def on_first_use(parser: argparse.ArgumentParser, add: Callable[[argparse.ArgumentParser], None]) -> None:
    """Run `add(parser)` when this (sub-)parser is first parsed or shown, not when `rtl` builds its parsers:
    keeps torch-importing config modules out of `rtl --help`. Plain argparse parsers get it at once."""
    if isinstance(parser, RtlParser):
        parser._pending.append(add)
    else:
        add(parser)


def warn_deprecated(old: str, new: str) -> None:
    import sys

    print(f"rtl: warning: {old} is deprecated, use {new}", file=sys.stderr)


class _Deprecated(argparse.Action):
    """A hidden old spelling: stores into the new option's dest (or `const`) and warns once."""

    def __init__(self, option_strings, dest, *, new: str, value=None, extend: bool = False, **kw) -> None:  # noqa: ANN001
        super().__init__(option_strings, dest, **kw)
        self.new, self.value, self.extend, self.warned = new, value, extend, False

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        if not self.warned:
            warn_deprecated(option_string or self.option_strings[0], self.new)
            self.warned = True
        v = self.value if self.nargs == 0 else values
        if self.extend and isinstance(v, list):
            v = [*(getattr(namespace, self.dest, None) or []), *v]
        setattr(namespace, self.dest, v)


def deprecated(parser: argparse.ArgumentParser, old: str, new: str, *, value: object = None,
               extend: bool = False) -> None:
    """Keep `old` working for one release as a hidden alias of option `new` (`--gpu` -> `--device cuda`:
    give `value`; a repeatable comma list: `extend`). It prints `rtl: warning: OLD is deprecated, use NEW`."""
    target = parser._option_string_actions[new.split()[0]]
    kw = {"nargs": 0} if value is not None else {"type": target.type, "choices": target.choices,
                                                  "nargs": target.nargs}
    parser.add_argument(old, action=_Deprecated, dest=target.dest, new=new, value=value, extend=extend,
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kw)
    target.aliases = (*getattr(target, "aliases", ()), old)
    if target.required and isinstance(parser, RtlParser):
        parser._aliased_required.append(target)


def _bounds(field) -> dict[str, float]:  # noqa: ANN001 (pydantic FieldInfo)
    out: dict[str, float] = {}
    for m in field.metadata:
        for k in ("ge", "gt", "le", "lt"):
            if getattr(m, k, None) is not None:
                out[k] = getattr(m, k)
    return out


def _int_type(b: dict[str, float]) -> Callable[[str], int]:
    lo = b["ge"] if "ge" in b else b["gt"] + 1 if "gt" in b else None
    hi = b["le"] if "le" in b else b["lt"] - 1 if "lt" in b else None
    return _int if lo is None and hi is None else int_range(int(lo if lo is not None else -2**63), hi)


def _float_type(b: dict[str, float]) -> Callable[[str], float]:
    if not b:
        return _float
    lo = b.get("gt", b.get("ge", -math.inf))
    hi = b.get("lt", b.get("le"))
    return float_range(lo, hi, lo_open="gt" in b, hi_open="lt" in b)


def add_model_options(parser: argparse.ArgumentParser, model, *, rename: dict[str, str] | None = None,  # noqa: ANN001
                      exclude: tuple[str, ...] = (), helps: dict[str, str] | None = None,
                      overrides: dict[str, dict] | None = None, groups: dict | None = None) -> dict[str, str]:
    """One option per field of the pydantic `model` (`--field-name`, or `rename[field]`): type and checks from
    the annotation and its bounds, default from the field, help from `helps[field]` or the field's
    description; `overrides[field]` are add_argument keywords on top (a stricter `type`, `required`,
    `metavar`), `groups[field]` the argument group to add it to. Returns {dest: field} for `model_kwargs`.
    A field the helper cannot map is a bug here (TypeError at parser build), not a user error."""
    import types as pytypes
    from typing import Literal, Union, get_args, get_origin

    rename, helps, overrides, groups = rename or {}, helps or {}, overrides or {}, groups or {}
    mapping: dict[str, str] = {}
    for name, field in model.model_fields.items():
        if name in exclude:
            continue
        ann = field.annotation
        if get_origin(ann) in (Union, pytypes.UnionType):
            inner = [a for a in get_args(ann) if a is not type(None)]
            ann = inner[0] if len(inner) == 1 else ann
        opt = rename.get(name, "--" + name.replace("_", "-"))
        dest = opt.lstrip("-").replace("-", "_")
        kw: dict = {"dest": dest, "help": field.description or helps.get(name)}
        if not kw["help"]:
            raise TypeError(f"{model.__name__}.{name}: no help text (give helps[...] or a Field description)")
        if field.is_required():
            kw["required"] = True
        else:
            kw["default"] = field.get_default(call_default_factory=True)
        if ann in (int, float) or get_origin(ann) is list:
            kw["metavar"] = {int: "N", float: "X"}.get(ann, "A,B")
        if "type" in overrides.get(name, {}):
            pass
        elif ann is bool:
            kw["action"] = "store_true" if kw.get("default") is False else argparse.BooleanOptionalAction
        elif get_origin(ann) is Literal:
            kw["choices"] = get_args(ann)
            kw["type"] = type(kw["choices"][0])
        elif ann is int:
            kw["type"] = _int_type(_bounds(field))
        elif ann is float:
            kw["type"] = _float_type(_bounds(field))
        elif get_origin(ann) is list and get_args(ann) == (str,):
            kw["type"] = names
        elif ann is not str:
            raise TypeError(f"{model.__name__}.{name}: no option for {field.annotation!r}; exclude it or give a type")
        kw.update(overrides.get(name, {}))
        if "choices" in kw and "metavar" not in overrides.get(name, {}):
            kw.pop("metavar", None)  # argparse shows {1,3}
        if kw.get("required"):
            kw.pop("default", None)
        groups.get(name, parser).add_argument(opt, **kw)
        mapping[dest] = name
    return mapping


def model_kwargs(args: argparse.Namespace, mapping: dict[str, str]) -> dict[str, object]:
    """The config model's fields from a parsed namespace (`mapping` from `add_model_options`)."""
    return {field: getattr(args, dest) for dest, field in mapping.items()}
