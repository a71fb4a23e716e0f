"""Building blocks the services.toml models share: the frozen base model, a list of strings,
a rules.py check as a validator, a choice, a ``ca_cert`` file (checked against the home the
loader passes as ``context={"base_dir": home}``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationInfo

from vaultproxy.config import rules
from vaultproxy.config.problems import Problems, TypeProblem
from vaultproxy.config.rules import RuleViolation


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


def str_list(value: object) -> object:
    if isinstance(value, Sequence) and not isinstance(value, str | bytes) and all(
        isinstance(v, str) for v in value
    ):
        return tuple(value)
    raise TypeProblem.one("must be a list of strings")


StrList = Annotated[tuple[str, ...], BeforeValidator(str_list)]


def rule(check: Callable[..., object], *args: Any) -> None:
    """Run a rules.py check; its RuleViolation becomes a problem at this field."""
    try:
        check(*args)
    except RuleViolation as e:
        raise Problems.one(str(e)) from None


def ruled(check: Callable[[str], object]) -> AfterValidator:
    """A field validator that applies one rules.py check to the value."""

    def validate(value: str) -> str:
        rule(check, value)
        return value

    return AfterValidator(validate)


def choice(value: object, choices: tuple[str, ...], *, typed: bool = True) -> object:
    if typed and not isinstance(value, str):
        raise TypeProblem.one("must be a string")
    if value not in choices:
        raise Problems.one(rules.one_of(choices))
    return value


def base_dir(info: ValidationInfo) -> Path | None:
    ctx = info.context
    return ctx.get("base_dir") if isinstance(ctx, Mapping) else None


def ca_file(value: str, info: ValidationInfo, empty: str = "must not be empty") -> str:
    if not value:
        raise Problems.one(empty)
    base = base_dir(info)
    if base is not None:
        rule(rules.check_ca_file, base / value)
    return value
