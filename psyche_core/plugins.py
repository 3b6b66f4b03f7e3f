"""Loading plugins from the ``psyche`` entry-point group.

Entry points are loaded one at a time, each in its own ``try``: a plugin that fails to import or
whose hook raises is recorded with its error (``psyche list-plugins`` shows it) and everything
else keeps working. pluggy's own ``load_setuptools_entrypoints`` stops at the first broken
plugin, which is why this module does the loop itself.

``PSYCHE_LOAD_PLUGINS`` restricts which entry points load: a comma-separated list of entry-point
names, or empty for none (the built-ins always load). Tests use it to stay hermetic.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TextIO

import click
import pluggy

from psyche_core import hookspecs
from psyche_core.errors import PsycheError
from psyche_core.registry import Owner, Registry
from psyche_core.specs import (
    DataProviderSpec,
    EvaluatorSpec,
    ModelSpec,
    OptimizerSpec,
    ReporterSpec,
)

ENTRY_POINT_GROUP = "psyche"
BUILTIN_PLUGINS = (
    "psyche_core.default_plugins.adamw",
    "psyche_core.default_plugins.sample",
    "psyche_core.default_plugins.reporters",
)
#: what to install when a kind of plugin is missing (the umbrella distribution of first-party
#: plugins; core names no single plugin)
INSTALL_HINT = "pip install psyche-all installs every first-party plugin"
LOAD_PLUGINS_ENV = "PSYCHE_LOAD_PLUGINS"


@dataclass
class PluginInfo:
    """What one plugin is and what it registered (or why it failed)."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    builtin: bool = False
    error: str | None = None
    traceback: str | None = None
    models: list[str] = field(default_factory=list)
    data_providers: list[str] = field(default_factory=list)
    optimizers: list[str] = field(default_factory=list)
    reporters: list[str] = field(default_factory=list)
    evaluators: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    @property
    def owner(self) -> Owner:
        return Owner(self.name, self.distribution, self.version)

    def fail(self, stage: str, exc: BaseException) -> None:
        self.error = f"{stage}: {type(exc).__name__}: {exc}"
        self.traceback = "".join(traceback.format_exception(exc))


_HOOKS: tuple[tuple[str, str, type], ...] = (
    ("register_models", "models", ModelSpec),
    ("register_data_providers", "data_providers", DataProviderSpec),
    ("register_optimizers", "optimizers", OptimizerSpec),
    ("register_reporters", "reporters", ReporterSpec),
    ("register_evaluators", "evaluators", EvaluatorSpec),
)


class Plugins:
    """The plugins of one process: a pluggy manager plus the five registries."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.models: Registry[ModelSpec] = Registry("model", f"Model plugins: {INSTALL_HINT}.")
        self.data_providers: Registry[DataProviderSpec] = Registry(
            "data provider", f"Data providers: {INSTALL_HINT}."
        )
        self.optimizers: Registry[OptimizerSpec] = Registry(
            "optimizer", f"Optimizers: {INSTALL_HINT}."
        )
        self.reporters: Registry[ReporterSpec] = Registry("reporter", f"Reporters: {INSTALL_HINT}.")
        self.evaluators: Registry[EvaluatorSpec] = Registry(
            "evaluator", f"Evaluators: {INSTALL_HINT}."
        )
        self.infos: list[PluginInfo] = []
        #: how this set was loaded, so worker processes can load the same set
        self.load_args: tuple[bool, tuple[str, ...]] = (False, ())

    # -- loading --------------------------------------------------------------------------------

    @classmethod
    def load(cls, entry_points: bool = True, extra: Iterable[ModuleType] = ()) -> Plugins:
        """Built-ins, then every ``psyche`` entry point (unless disabled), then ``extra``."""
        plugins = cls()
        from psyche_core import __version__

        for module_name in BUILTIN_PLUGINS:
            module = importlib.import_module(module_name)
            plugins.add_module(
                module, module_name.rsplit(".", 1)[-1], "psyche-core", __version__, builtin=True
            )
        if entry_points:
            for ep in _selected_entry_points():
                plugins.add_entry_point(ep)
        extra = list(extra)
        for module in extra:
            plugins.add_module(module, module.__name__)
        plugins.load_args = (entry_points, tuple(m.__name__ for m in extra))
        return plugins

    @classmethod
    def reload(cls, load_args: tuple[bool, tuple[str, ...]]) -> Plugins:
        """Load the same set again (in a worker process) from ``load_args``."""
        entry_points, modules = load_args
        return cls.load(entry_points, [importlib.import_module(name) for name in modules])

    def add_entry_point(self, ep: importlib.metadata.EntryPoint) -> PluginInfo:
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            name=ep.name,
            module=ep.value,
            distribution=dist.name if dist else None,
            version=dist.version if dist else None,
        )
        self.infos.append(info)
        if any(other.name == ep.name for other in self.infos[:-1]):
            first = next(other for other in self.infos[:-1] if other.name == ep.name)
            info.error = (
                f"entry point name {ep.name!r} is also used by {first.owner}; "
                "uninstall one of the two distributions"
            )
            return info
        try:
            module = ep.load()
        except BaseException as exc:  # a plugin must never take the CLI down with it
            if isinstance(exc, KeyboardInterrupt):
                raise
            info.fail("import failed", exc)
            return info
        self._register(module, info)
        return info

    def add_module(
        self,
        module: ModuleType,
        name: str,
        distribution: str | None = None,
        version: str | None = None,
        builtin: bool = False,
    ) -> PluginInfo:
        """Register an already imported plugin module (built-ins and tests use this)."""
        info = PluginInfo(name, module.__name__, distribution, version, builtin)
        self.infos.append(info)
        self._register(module, info)
        return info

    def _register(self, module: ModuleType, info: PluginInfo) -> None:
        try:
            self.pm.register(module, name=info.name)
        except Exception as exc:
            info.fail("invalid hooks", exc)
            return
        staged: list[tuple[Registry[Any], str, Any]] = []
        for hook_name, attribute, spec_type in _HOOKS:
            registry = getattr(self, attribute)
            for function in self._impls(hook_name, info.name):
                names: list[str] = []

                def register(spec: Any, _type=spec_type, _reg=registry, _names=names) -> None:
                    if not isinstance(spec, _type):
                        raise PsycheError(
                            f"register() expects a {_type.__name__}, got {type(spec).__name__}"
                        )
                    staged.append((_reg, spec.name, spec))
                    _names.append(spec.name)

                try:
                    function(register=register)
                except Exception as exc:
                    info.fail(f"{hook_name} raised", exc)
                    self.pm.unregister(name=info.name)
                    return
                getattr(info, attribute).extend(names)
        for registry, name, spec in staged:
            registry.add(name, spec, info.owner)

    def _impls(self, hook_name: str, plugin_name: str) -> list[Callable[..., Any]]:
        hook = getattr(self.pm.hook, hook_name)
        return [impl.function for impl in hook.get_hookimpls() if impl.plugin_name == plugin_name]

    def add_commands(self, cli: click.Group) -> None:
        """Let every plugin add its commands; a name clash or a raising hook marks it broken."""
        for info in self.infos:
            if info.error:
                continue
            for function in self._impls("register_commands", info.name):
                before = dict(cli.commands)
                try:
                    function(cli=cli)
                except Exception as exc:
                    info.fail("register_commands raised", exc)
                    cli.commands.clear()
                    cli.commands.update(before)
                    break
                clashes = [n for n, c in before.items() if cli.commands.get(n) is not c]
                if clashes:
                    cli.commands.clear()
                    cli.commands.update(before)
                    info.error = (
                        f"command {clashes[0]!r} already exists; the plugin's commands were not "
                        "added"
                    )
                    break
                for name in sorted(set(cli.commands) - set(before)):
                    info.commands.extend(_command_paths(name, cli.commands[name]))

    # -- queries --------------------------------------------------------------------------------

    def broken(self) -> list[PluginInfo]:
        return [info for info in self.infos if info.error]

    def conflicts(self) -> list[PsycheError]:
        return [
            *self.models.conflicts(),
            *self.data_providers.conflicts(),
            *self.optimizers.conflicts(),
            *self.reporters.conflicts(),
            *self.evaluators.conflicts(),
        ]

    def warn_problems(self, stream: TextIO | None = None) -> None:
        """One stderr line per broken plugin or clashing name."""
        stream = stream or sys.stderr
        for info in self.broken():
            print(
                f"warning: plugin {info.name!r} is broken ({info.error}); "
                "see `psyche list-plugins`",
                file=stream,
            )
        for conflict in self.conflicts():
            print(f"warning: {conflict}", file=stream)


def _command_paths(name: str, command: click.Command) -> list[str]:
    if isinstance(command, click.Group) and command.commands:
        return [
            path
            for sub_name, sub in sorted(command.commands.items())
            for path in _command_paths(f"{name} {sub_name}", sub)
        ]
    return [name]


def _selected_entry_points() -> list[importlib.metadata.EntryPoint]:
    eps = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    selection = os.environ.get(LOAD_PLUGINS_ENV)
    if selection is None:
        return eps
    wanted = {name.strip() for name in selection.split(",") if name.strip()}
    return [ep for ep in eps if ep.name in wanted]
