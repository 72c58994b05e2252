"""JSON in and out: orjson for speed, pydantic for validation, clear 400s."""

from __future__ import annotations

from typing import Any, TypeVar
from uuid import UUID

import orjson
from pydantic import BaseModel, ValidationError
from quart import Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from taskflow.errors import PayloadTooLarge, ValidationFailed
from taskflow.models import describe_validation_error

ModelT = TypeVar("ModelT", bound=BaseModel)

# Timestamps come out as RFC 3339 UTC with a "Z"; UUIDs as strings.
_DUMP_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def _fallback(value: Any) -> str:
    # asyncpg returns its own UUID subclass, which orjson does not recognise.
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def dumps(data: Any) -> bytes:
    return orjson.dumps(data, option=_DUMP_OPTIONS, default=_fallback)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(data), status=status, headers=headers, content_type="application/json")


def model_response(
    model: BaseModel, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A response model's JSON, written by orjson as every other answer is;
    a field left unset (an optional one, such as an error's ``details``) is
    left out rather than written as null."""
    return json_response(model.model_dump(exclude_unset=True), status, headers)


async def read_json_body() -> Any:
    try:
        raw = await request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise PayloadTooLarge() from None
    if not raw:
        raise ValidationFailed("request body must be a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed(f"malformed JSON: {exc.msg} at position {exc.pos}") from None


def parse_model(
    model: type[ModelT], data: Any, *, what: str = "request body", field_prefix: str = ""
) -> ModelT:
    """Validate decoded JSON; ``field_prefix`` (``tasks[3]``) names where it sits."""
    if not isinstance(data, dict):
        raise ValidationFailed(
            f"{what} must be a JSON object",
            details=[{"field": field_prefix or "(body)", "message": "must be a JSON object"}],
        )
    try:
        # Strict, in JSON mode: the body was JSON, so "3" is not a number, true
        # is not 1 and 1700000000 is not a run_at (the seed's typed decoding
        # refused them too), while RFC 3339 strings still become datetimes.
        return model.model_validate_json(dumps(data), strict=True)
    except orjson.JSONEncodeError:
        # orjson reads 1024 levels but writes only 254: no request needs either.
        raise ValidationFailed(
            f"{what} is nested too deeply",
            details=[{"field": field_prefix or "(body)", "message": "nested too deeply"}],
        ) from None
    except ValidationError as exc:
        raise ValidationFailed(
            f"invalid {what}", details=describe_validation_error(exc, field_prefix)
        ) from None


async def read_model(model: type[ModelT]) -> ModelT:
    return parse_model(model, await read_json_body())
