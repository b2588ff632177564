"""Command-line options from settings dataclasses: one source for each default and its help.

A field becomes ``--field-name`` (``metadata["flag"]`` overrides it); its help text is
``metadata["help"]`` followed by ``(default: ...)`` taken from the field's default, or from
``metadata["default_text"]`` when the default is computed later (e.g. "the preset's").
``bool`` fields become switches: ``default=False`` gives a flag that sets True, ``default=True``
one that sets False (name it with ``metadata["flag"]``, e.g. ``--no-baselines``). A field
without ``metadata["help"]`` is not an option (the caller fills it).

Further metadata, for options that are not plain ``--name VALUE``:
``positional=True`` makes a required positional argument (``conformer prepare GEOM_DIR``);
``negatable=True`` makes a ``bool`` field a ``--name/--no-name`` pair (help: ``default: on``);
``const=VALUE`` makes a switch that stores VALUE (``--no-progress`` for a ``bool | None``
field whose None means "decide later"); ``parse=callable`` replaces the annotation as the
converter of the text given (e.g. ``0.8,0.1,0.1`` -> a tuple).

Parsers built here leave options that were not given out of the namespace
(``argparse.SUPPRESS``), so :func:`settings_from_args` takes each missing value from the
dataclass itself: argparse never holds a second copy of a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

from conformer.errors import UserInputError


def option(default=dataclasses.MISSING, help: str = "", **metadata):  # noqa: A002
    """A settings field that is also a command-line option: ``help`` and ``metadata`` (flag,
    default_text, choices, metavar) as described in the module docstring."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def option_flag(field: dataclasses.Field) -> str:
    """The command-line flag of ``field``: ``--geom-dir`` for ``geom_dir``."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _value_type(annotation) -> type:
    """``int`` for ``int``, ``int | None`` and ``Optional[int]``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _has_default(field: dataclasses.Field) -> bool:
    return (field.default is not dataclasses.MISSING
            or field.default_factory is not dataclasses.MISSING)


def default_of(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()  # type: ignore[misc]


def default_text(field: dataclasses.Field) -> str:
    """How --help shows the default of ``field``."""
    if "default_text" in field.metadata:
        return field.metadata["default_text"]
    value = default_of(field)
    if field.metadata.get("negatable"):
        return "on" if value else "off"
    if isinstance(value, bool):
        return "not given"  # a switch: its default is its absence
    return "none" if value is None else str(value)


def option_fields(settings_class) -> list[dataclasses.Field]:
    """The fields of ``settings_class`` that are command-line options (they carry help)."""
    return [f for f in dataclasses.fields(settings_class) if "help" in f.metadata]


def add_settings_arguments(parser: argparse.ArgumentParser, *settings_classes,
                           labels: tuple[str, ...] = ()) -> None:
    """Add the option fields of one or more settings dataclasses to ``parser`` (a parser or
    one of its argument groups, which sets the heading they are listed under in --help).

    With several classes (e.g. one per experiment sharing one parser, named by ``labels``) an
    option present in several is added once; where their defaults differ, the help lists each
    (``default: nbody: 2; drugs: the preset's``).
    """
    hints = {cls: typing.get_type_hints(cls) for cls in settings_classes}
    seen: dict[str, list[tuple[str, dataclasses.Field]]] = {}
    order: list[tuple[type, dataclasses.Field]] = []
    for index, cls in enumerate(settings_classes):
        label = labels[index] if index < len(labels) else cls.__name__
        for field in option_fields(cls):
            if field.name not in seen:
                order.append((cls, field))
            seen.setdefault(field.name, []).append((label, field))
    for cls, field in order:
        owners = seen[field.name]
        if field.metadata.get("positional"):
            shown = ""  # a positional argument is required by its nature
        elif not _has_default(field):
            shown = "required"
        elif len({default_text(f) for _, f in owners}) == 1:
            shown = f"default: {default_text(field)}"
        else:
            shown = "default: " + "; ".join(f"{label}: {default_text(f)}" for label, f in owners)
        if len(owners) < len(settings_classes) and len(settings_classes) > 1:
            shown = " and ".join(label for label, _ in owners) + " only; " + shown
        helps = {f.metadata["help"] for _, f in owners}
        described = field.metadata["help"] if len(helps) == 1 else "; ".join(
            f"{label}: {f.metadata['help']}" for label, f in owners)
        help_text = f"{described} ({shown})" if shown else described
        kwargs: dict = {"help": help_text}
        value_type = _value_type(hints[cls][field.name])
        if "const" in field.metadata:
            kwargs.update(action="store_const", const=field.metadata["const"])
        elif value_type is bool and field.metadata.get("negatable"):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif value_type is bool:
            kwargs["action"] = "store_false" if default_of(field) else "store_true"
        else:
            kwargs["type"] = field.metadata.get("parse", value_type)
            if "choices" in field.metadata:
                kwargs["choices"] = field.metadata["choices"]
            if "metavar" in field.metadata:
                kwargs["metavar"] = field.metadata["metavar"]
        if field.metadata.get("positional"):
            parser.add_argument(field.name, **kwargs)
            continue
        kwargs["dest"] = field.name
        if _has_default(field):
            kwargs["default"] = argparse.SUPPRESS
        else:
            kwargs["required"] = True
        parser.add_argument(option_flag(field), **kwargs)


def settings_from_args(settings_class, args: argparse.Namespace, ignore: tuple[str, ...] = (),
                       command: str = ""):
    """A ``settings_class`` from parsed options; options not given keep the class's defaults.

    An option given on the command line that ``settings_class`` does not take (another
    experiment's) is a :class:`UserInputError` naming it and ``command``; ``ignore`` lists
    namespace entries that are not options (e.g. the verb and a positional target).
    """
    given = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ignore}
    names = {f.name: f for f in dataclasses.fields(settings_class)}
    foreign = sorted(k for k in given if k not in names)
    if foreign:
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        raise UserInputError(f"{flags}: not an option of {command or settings_class.__name__}")
    return settings_class(**given)


def pick_settings(settings_class, args: argparse.Namespace):
    """A ``settings_class`` from the entries of ``args`` that are its fields, the rest left
    alone: for a verb whose options come from several settings classes (e.g. ``conformer
    prepare``: how to run it, and the settings its records depend on). Options not given keep
    the class's defaults."""
    names = {f.name for f in dataclasses.fields(settings_class)}
    return settings_class(**{k: v for k, v in vars(args).items() if k in names})


__all__ = ["add_settings_arguments", "default_text", "option", "option_flag", "option_fields",
           "pick_settings", "settings_from_args"]
