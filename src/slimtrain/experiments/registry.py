"""The experiments, each declared once: options, run function, defaults and CLI rules.

An experiment is a frozen options dataclass plus ``run(options, session) -> Result`` that
computes and returns everything to report (summary, metric rows, figures, table) and writes
nothing itself: :mod:`slimtrain.experiments.report` writes. The command line builds its
subcommands, ``--help`` (with the real defaults) and the rules of which option applies where
from :data:`REGISTRY`.

Declaring an experiment::

    @dataclass(frozen=True)
    class ClassifyOptions:
        epochs: int = field(default=5, metadata={"help": "epochs"})
        seed: int = field(default=0, metadata={"help": "seed of data and weights"})

    def run_classify(options: ClassifyOptions, session: Session) -> Result: ...

    register(Experiment("classify", "MNIST classification", ClassifyOptions, run_classify))

Option fields become flags (``batch_size`` -> ``--batch-size``, or metadata ``"flag"``) with
metadata ``"help"`` and ``"parse"`` (a parser of the text); a field whose default is a
dataclass contributes its own fields, or only those named in its metadata ``"flags"``
(``{name: help}``), less those in ``"exclude"``. A field with ``metadata={"cli": False}`` is
set by the command line itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

__all__ = ["REGISTRY", "Experiment", "OptionField", "Result", "Session", "build_options",
           "option_fields", "option_values", "register"]


@dataclass(frozen=True)
class Result:
    """What a run reports: ``summary.json``, ``metrics.csv`` rows, figures, the text table."""

    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    figures: dict[str, Figure] = field(default_factory=dict)
    table: str = ""


@dataclass(frozen=True)
class Session:
    """How a run is carried out, apart from what it computes (not part of its identity).

    progress : a progress bar per method; echo : called with one line per epoch and method
    (the CLI prints it when no progress bar shows); checkpoint_dir, resume : checkpoints after
    every epoch (or sweep cell), and continuing from them.
    """

    progress: bool = False
    echo: Callable[[str], None] | None = None
    checkpoint_dir: Path | None = None
    resume: bool = False


@dataclass(frozen=True)
class Experiment:
    """One experiment's declaration.

    name : the subcommand (``slimtrain run NAME``; the sweep is ``slimtrain sweep``).
    description : one line of help.
    options : the frozen options dataclass.
    run : ``run(options, session) -> Result``.
    defaults, quick : overrides of the options' defaults (by flag field name) in the normal
        and the ``--quick`` version.
    distributed : runs data-parallel under ``--nproc`` (else rank 0 alone works).
    resumable : writes checkpoints and takes ``--resume``.
    resume_may_change : options that may differ when the run is resumed.
    why_not : ``{flag field: reason}`` shown when an option of another experiment is given.
    notice : ``notice(options)``, a line printed before the run starts, or None.
    """

    name: str
    description: str
    options: type
    run: Callable[[Any, Session], Result]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    quick: Mapping[str, Any] | None = None
    distributed: bool = False
    resumable: bool = False
    resume_may_change: tuple[str, ...] = ("epochs", "device", "methods")
    why_not: Mapping[str, str] = field(default_factory=dict)
    notice: Callable[[Any], str | None] | None = None


#: Every declared experiment by name, in declaration order.
REGISTRY: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Add ``experiment`` to :data:`REGISTRY` (its name must be new)."""
    if experiment.name in REGISTRY:
        raise ValueError(f"experiment {experiment.name!r} is declared twice")
    REGISTRY[experiment.name] = experiment
    return experiment


@dataclass(frozen=True)
class OptionField:
    """A leaf option: its name, the path of nested fields to it, default, help and parser."""

    name: str
    path: tuple[str, ...]
    default: Any
    help: str
    parse: Callable[[str], Any] | None
    flag: str


def option_fields(options: type, defaults: Mapping[str, Any] | None = None) -> list[OptionField]:
    """The leaf options of an options dataclass, with ``defaults`` overriding its own."""
    return list(_leaves(options, (), dict(defaults or {})))


def _leaves(cls: type, prefix: tuple[str, ...], overrides: dict[str, Any]
            ) -> Iterator[OptionField]:
    defaults = _defaults(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli", True) is False:
            continue
        default = defaults.get(f.name)
        if _is_record(default) and "flags" in f.metadata:
            for name, text in f.metadata["flags"].items():
                value = overrides.get(name, getattr(default, name))
                yield OptionField(name, (*prefix, f.name, name), value, text, None, name)
        elif _is_record(default):
            skip = set(f.metadata.get("exclude", ()))
            yield from (o for o in _leaves(type(default), (*prefix, f.name), overrides)
                        if o.name not in skip)
        else:
            yield OptionField(f.name, (*prefix, f.name), overrides.get(f.name, default),
                              f.metadata.get("help", ""), f.metadata.get("parse"),
                              f.metadata.get("flag", f.name))


def _is_record(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _defaults(cls: type) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return values


def build_options(experiment: Experiment, given: Mapping[str, Any], quick: bool = False,
                  fixed: Mapping[str, Any] | None = None) -> Any:
    """The options of ``experiment``: ``given`` leaf values over the experiment's (``--quick``)
    defaults over the dataclass's; ``fixed`` sets top-level fields (``cli=False`` ones)."""
    unknown = set(given) - {o.name for o in option_fields(experiment.options)}
    if unknown:
        raise ValueError(f"{sorted(unknown)} are not options of {experiment.name!r}")
    values = {**experiment.defaults, **((experiment.quick or {}) if quick else {}), **given}
    return _build(experiment.options, values, dict(fixed or {}))


def _build(cls: type, values: Mapping[str, Any], top: dict[str, Any]) -> Any:
    kwargs = dict(top)
    defaults = _defaults(cls)
    for f in dataclasses.fields(cls):
        if f.name in kwargs:
            continue
        default = defaults.get(f.name)
        if _is_record(default) and "flags" in f.metadata:
            sub = {n: values[n] for n in f.metadata["flags"] if n in values}
            if sub:
                kwargs[f.name] = dataclasses.replace(default, **sub)  # type: ignore[type-var]
        elif _is_record(default):
            kwargs[f.name] = _build(type(default), values, {})
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


def option_values(options: Any) -> dict[str, Any]:
    """The leaf options of an options instance by name, plus its ``cli=False`` fields."""
    values = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)
              if f.metadata.get("cli", True) is False}
    for leaf in option_fields(type(options)):
        value = options
        for name in leaf.path:
            value = getattr(value, name)
        values[leaf.name] = value
    return values
