"""Command-line values converted without pydantic, so that a ``pool`` command starts fast.

Typer (0.2x) converts every parameter of the command being run through a pydantic ``TypeAdapter``:
importing pydantic and building the adapters costs ~0.12 s CPU per call — a third of a thin-client
``pool submit``, which needs none of it. :func:`install` gives the parameters of the annotations
``pool`` uses (str, int, float, bool, Path, list[str]; min/max) a plain conversion for the values
that are clearly valid, and hands every other value (a malformed number, one out of range, a bool
from an environment variable, ...) to Typer's own conversion, so results and error messages stay
exactly Typer's. It wraps Typer's (private) ``get_runtime_param``; a Typer without it is left
alone: slower, never wrong (tests/test_cli.py notices)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_INT = re.compile(r"-?(0|[1-9][0-9]{0,17})")
_FLOAT = re.compile(r"-?([0-9]{1,18}(\.[0-9]{0,18})?|\.[0-9]{1,18})([eE][-+]?[0-9]{1,2})?")


class _Unsure(Exception):
    """This value is left to Typer's own (pydantic) conversion."""


def _in_range(number: float, info: Any) -> float:
    if (info.min is not None and number < info.min) or (info.max is not None and number > info.max):
        raise _Unsure  # Typer says why (or clamps)
    return number


def _to_str(value: Any, info: Any, param: Any, ctx: Any) -> str:
    if type(value) is not str:
        raise _Unsure
    return value


def _to_int(value: Any, info: Any, param: Any, ctx: Any) -> int:
    if type(value) is int:
        return _in_range(value, info)  # type: ignore[return-value]
    if type(value) is str and _INT.fullmatch(value):
        return _in_range(int(value), info)  # type: ignore[return-value]
    raise _Unsure


def _to_float(value: Any, info: Any, param: Any, ctx: Any) -> float:
    if type(value) in (int, float):
        return _in_range(float(value), info)
    if type(value) is str and _FLOAT.fullmatch(value):
        return _in_range(float(value), info)
    raise _Unsure


def _to_str_list(value: Any, info: Any, param: Any, ctx: Any) -> list[str]:
    if isinstance(value, (list, tuple)) and all(type(item) is str for item in value):
        return list(value)
    raise _Unsure


def _to_path(value: Any, info: Any, param: Any, ctx: Any) -> Any:
    from typer._param_types import coerce_cli_path  # checked by _converter

    if type(value) is str:
        value = Path(value)
    if not isinstance(value, Path):
        raise _Unsure
    return coerce_cli_path(value, info, path_type=Path, param=param, ctx=ctx)  # exists, dir_okay...


def _to_bool(value: Any, info: Any, param: Any, ctx: Any) -> bool:
    if type(value) is not bool:
        raise _Unsure  # e.g. "yes" from an environment variable
    return value


def _converter(descriptor: Any) -> Any:
    """The plain conversion for this parameter, or None where Typer's own is kept."""
    info, annotation = descriptor.parameter_info, descriptor.annotation
    if descriptor.file_annotation is not None or info.parser is not None or descriptor.is_choice:
        return None
    if annotation is Path:
        try:
            from typer._param_types import coerce_cli_path  # noqa: F401 - Typer's checks (exists, dir_okay...)
        except ImportError:
            return None
        return _to_path if descriptor.is_path and info.path_type is None else None
    if annotation == list[str]:
        return _to_str_list
    return {str: _to_str, int: _to_int, float: _to_float, bool: _to_bool}.get(annotation)


@functools.cache
def _runtime_param_class() -> Any:
    """Typer's RuntimeParam (its None and multiple-value handling) with the plain conversion first;
    None with a Typer that has no such class."""
    try:
        from typer._coercion import RuntimeParam, build_runtime_param
    except ImportError:
        return None

    @dataclass(frozen=True)
    class PlainRuntimeParam(RuntimeParam):  # type: ignore[misc, valid-type]
        descriptor: Any = None
        convert: Any = None
        typer_own: list[Any] = field(default_factory=list)  # Typer's conversion, built when first needed

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                return self.convert(value, self.parameter_info, param, ctx)
            except _Unsure:
                if not self.typer_own:
                    self.typer_own.append(build_runtime_param(self.descriptor))
                return self.typer_own[0]._coerce_value(value, param=param, ctx=ctx)

    return PlainRuntimeParam


def plain_runtime_param(descriptor: Any) -> Any:
    """The plain conversion of a parameter (Typer's TypeDescriptor), or None where only Typer's applies."""
    cls, convert = _runtime_param_class(), _converter(descriptor)
    if cls is None or convert is None:
        return None
    return cls(parameter_info=descriptor.parameter_info, annotation=descriptor.annotation, descriptor=descriptor,
               convert=convert)


def install() -> bool:
    """From now on, Typer parameters (of any command in this process) convert their values plainly
    where that applies. False (and nothing changed) with a Typer that converts differently."""
    try:
        from typer.core import _TyperParameter
    except ImportError:
        return False
    typer_get_runtime_param = getattr(_TyperParameter, "get_runtime_param", None)
    if typer_get_runtime_param is None or _runtime_param_class() is None:
        return False
    if getattr(typer_get_runtime_param, "plain_conversion", False):
        return True

    def get_runtime_param(self: Any) -> Any:
        if self._runtime_param is None:
            self._runtime_param = plain_runtime_param(self.type_descriptor)
        return typer_get_runtime_param(self)  # Typer builds its own where this left None

    get_runtime_param.plain_conversion = True  # type: ignore[attr-defined]
    _TyperParameter.get_runtime_param = get_runtime_param  # type: ignore[method-assign]
    return True
