"""What every command shares, declared once: the common options (`--params`, `-S`, `--quiet`,
`--json`) that `command` adds to each command, the translation of library errors into a message and
an exit code, the JSON summary line, and the one fork between a Prefect flow and an in-process run.

Exit codes: 0 done (bad rows are rejections, not failures), 1 unusable input or data that fails its
contract, 2 bad usage or configuration.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from deepmolm.config import DEFAULT_PARAMS, ConfigError, Params, load_params

T = TypeVar("T")

stdout = Console()
stderr = Console(stderr=True)

ParamsOpt = Annotated[Path, typer.Option("--params", help="params file (YAML).", show_default=True)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("-S", "--set", metavar="KEY=VALUE", help="override one param, e.g. -S ingest.rows_per_part=1000; repeatable."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON summary object as the last stdout line.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars.")]
PrefectOpt = Annotated[
    bool, typer.Option(help="run as a Prefect flow (shown in the UI of PREFECT_API_URL; a temporary local API otherwise)."),
]
InstructionsOpt = Annotated[
    Path | None,
    typer.Option(help="an instruction set, or a directory of sets (the current one: LATEST) (default: paths.instructions_dir)."),
]

_COMMON_OPTIONS = [
    inspect.Parameter("params_file", inspect.Parameter.KEYWORD_ONLY, default=DEFAULT_PARAMS, annotation=ParamsOpt),
    inspect.Parameter("set_", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=SetOpt),
    inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=JsonOpt),
    inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=QuietOpt),
]


class Exit(Exception):
    """Stop a command with this exit code and message (inside `Common.errors`)."""

    def __init__(self, code: int, message: str):
        self.code, self.message = code, message


@dataclass
class Common:
    """The common options of one invocation."""

    params_file: Path
    overrides: list[str]
    as_json: bool
    quiet: bool

    @cached_property
    def params(self) -> Params:
        return load_params(self.params_file, self.overrides)

    @property
    def progress(self) -> bool:
        return not self.quiet

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Turn the library's errors into a clear message and an exit code (and a JSON error object)."""
        from deepmolm.data.sources.errors import RequestError, SourceError
        from deepmolm.runtime.numerics import NumericsError
        from deepmolm.store.files import StorageError, storage_problem

        try:
            try:
                yield
            except (ConfigError, RequestError, NumericsError) as exc:
                raise Exit(2, str(exc)) from None
            except (SourceError, FileNotFoundError, StorageError) as exc:
                raise Exit(1, str(exc)) from None
            except OSError as exc:
                if (problem := storage_problem(exc)) is None:
                    raise
                raise Exit(1, f"{problem}: {exc.filename or exc}. Outputs are written whole or not at all; make room "
                              "(or make it writable) and run the same command again") from None
        except Exit as exc:
            stderr.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
            if self.as_json:
                print(json.dumps({"success": False, "error": exc.message}))
            raise typer.Exit(exc.code) from None

    def emit(self, summary: dict, render: Callable[[dict], None]) -> None:
        if self.as_json:
            print(json.dumps(summary, sort_keys=False, default=str))
        else:
            render(summary)

    def run(self, prefect: bool, flow: str, *args, inline: Callable[[], T], **flow_kwargs) -> T:
        """With --prefect, the flow runner `flow` ("flows.<module>:<function>", imported only then)
        called with `args`, this invocation's params file and overrides, and `flow_kwargs`; otherwise
        `inline()`, the same library calls in this process."""
        if not prefect:
            return inline()
        module, _, name = flow.partition(":")
        runner = getattr(importlib.import_module(module), name)
        return runner(*args, self.params_file, list(self.overrides), **flow_kwargs)


def command(group: typer.Typer, name: str):
    """Register `fn(common, ...)` as `name` on `group`, with the common options added to its own."""
    def register(fn):
        hints = typing.get_type_hints(fn, include_extras=True)
        own = [p.replace(annotation=hints.get(p.name, p.annotation))
               for p in inspect.signature(fn).parameters.values() if p.name != "common"]

        @functools.wraps(fn)
        def invoke(*args, params_file: Path, set_: list[str] | None, as_json: bool, quiet: bool, **kwargs):
            return fn(Common(params_file, list(set_ or []), as_json, quiet), *args, **kwargs)

        invoke.__signature__ = inspect.Signature([*own, *_COMMON_OPTIONS], return_annotation=None)
        invoke.__annotations__ = {p.name: p.annotation for p in [*own, *_COMMON_OPTIONS]}
        group.command(name)(invoke)
        return fn
    return register
