"""GET /api/openapi.json: the OpenAPI 3.1 document of the whole API, generated
from the routes the app serves and what each says of itself
(:mod:`taskflow.api.route_docs`).

pydantic turns every model into JSON Schema, in one pass so that a model used
in many places is one component; each registered task type gets its own
TaskCreate variant with its payload model. A route that says nothing of
itself is listed all the same, with what the route alone tells.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter
from quart import Blueprint, Quart, Response, current_app
from werkzeug.routing import Rule

from taskflow import __version__
from taskflow.api import config
from taskflow.api.responses import dumps
from taskflow.api.route_docs import (
    PATH_PARAMETERS,
    Body,
    PathParameter,
    Reply,
    RouteDoc,
    documented,
    route_doc,
    wants_user,
)
from taskflow.api.schemas import Error
from taskflow.handlers import Registry
from taskflow.models import TaskBatchCreate, TaskCreate

blueprint = Blueprint("openapi", __name__)

REF_TEMPLATE = "#/components/schemas/{model}"
DOCUMENT_EXTENSION = "taskflow.openapi"
METHODS = ("get", "post", "put", "patch", "delete")
_ROUTE_VARIABLE = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")

Mode = Literal["validation", "serialization"]


@dataclass(frozen=True)
class _Operation:
    rule: Rule
    method: str
    view: Callable[..., Any]
    doc: RouteDoc


def _operations(app: Quart) -> Iterator[_Operation]:
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        doc = route_doc(rule.endpoint, view)
        for method in sorted({m.lower() for m in rule.methods or ()} & set(METHODS)):
            yield _Operation(rule, method, view, doc)


def _is_type(schema: Any) -> bool:
    # Not None (no body), not JSON Schema, not an error's description.
    return schema is not None and not isinstance(schema, Mapping | str)


class _Schemas:
    """Every type the document names, made JSON Schema in one pass."""

    def __init__(self) -> None:
        self._keys: dict[tuple[Any, Mode], int] = {}
        self._schemas: dict[tuple[Any, Mode], dict[str, Any]] = {}
        self.definitions: dict[str, Any] = {}
        self._inlined: set[str] = set()

    def want(self, body: Any, mode: Mode) -> None:
        if isinstance(body, Reply):
            self.want(body.body, mode)
        elif isinstance(body, Body):
            self.want(body.schema, mode)
            self.want(body.event_data, "serialization")
        elif _is_type(body):
            self._keys.setdefault((body, mode), len(self._keys))

    def generate(self) -> None:
        inputs = [(key, mode, TypeAdapter(body)) for (body, mode), key in self._keys.items()]
        by_key, definitions = TypeAdapter.json_schemas(inputs, ref_template=REF_TEMPLATE)
        for (body, mode), key in self._keys.items():
            self._schemas[(body, mode)] = by_key[(key, mode)]
        self.definitions = definitions.get("$defs", {})

    def of(self, body: Any, mode: Mode) -> dict[str, Any]:
        return self._schemas[(body, mode)]

    def component(self, body: Any, mode: Mode) -> tuple[str, dict[str, Any]]:
        name = str(self.of(body, mode)["$ref"]).rsplit("/", 1)[1]
        return name, self.definitions[name]

    def inline(self, model: type[BaseModel], mode: Mode) -> dict[str, Any]:
        """A model's schema itself, for what is no JSON object of its own (a
        form, query parameters); its component goes unless referred to."""
        name, schema = self.component(model, mode)
        self._inlined.add(name)
        return dict(schema)

    def components(self, paths: Any) -> dict[str, Any]:
        kept = {k: v for k, v in self.definitions.items() if k not in self._inlined}
        referred = {reference.rsplit("/", 1)[1] for reference in _references([paths, kept])}
        return {
            name: schema
            for name, schema in sorted(self.definitions.items())
            if name not in self._inlined or name in referred
        }

    def content(self, body: Any, mode: Mode) -> dict[str, Any] | None:
        if body is None:
            return None
        if not isinstance(body, Body):
            return {"application/json": {"schema": self.of(body, mode)}}
        schema = self.inline(body.schema, mode) if _is_type(body.schema) else dict(body.schema)
        media: dict[str, Any] = {"schema": schema}
        if body.event_data is not None:
            media["x-event-data"] = self.of(body.event_data, "serialization")
        return {body.media_type: media}


def _references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _references(value)
    elif isinstance(node, list):
        for value in node:
            yield from _references(value)


def _parameters(model: type[BaseModel], location: str, schemas: _Schemas) -> list[dict[str, Any]]:
    """One parameter per field: a query string or headers are no JSON object."""
    schema = schemas.inline(model, "validation")
    required = set(schema.get("required", ()))
    parameters = []
    for name, original in schema["properties"].items():
        prop = {k: v for k, v in original.items() if k not in ("title", "description")}
        # Absent, not null: a query string or a header has no null.
        if "default" in prop and prop["default"] is None:
            del prop["default"]
        variants = prop.pop("anyOf", None)
        if variants is not None:
            others = [v for v in variants if v != {"type": "null"}]
            prop = {**others[0], **prop} if len(others) == 1 else {"anyOf": others, **prop}
        parameter = {"name": name, "in": location, "required": name in required, "schema": prop}
        if "description" in original:
            parameter["description"] = original["description"]
        parameters.append(parameter)
    return parameters


def _task_create_by_type(schemas: _Schemas, registry: Registry) -> None:
    """TaskCreate as one variant per registered type, each with its payload
    model; a batch's items are those too (the route checks them one by one,
    to name the index of a bad one)."""
    reference = schemas.of(TaskCreate, "validation")
    name, base = schemas.component(TaskCreate, "validation")
    variants = [
        {
            **base,
            "title": f"TaskCreate: {task_type.name}",
            "properties": {
                **base["properties"],
                "type": {"const": task_type.name},
                "payload": schemas.of(task_type.payload_model, "validation"),
            },
        }
        for task_type in registry
    ]
    if variants:
        schemas.definitions[name] = {"oneOf": variants}
    _, batch = schemas.component(TaskBatchCreate, "validation")
    batch["properties"]["tasks"] = {**batch["properties"]["tasks"], "items": reference}


def _errors(operation: _Operation, secured: bool) -> dict[int, str | Reply]:
    errors: dict[int, str | Reply] = {}
    parameters = [_path_parameter(operation, name) for name in _variables(operation.rule)]
    for source in (
        *(parameter.errors for parameter in parameters),
        {401: "missing, invalid, expired or revoked token"} if secured else {},
        operation.doc.errors,
    ):
        for status, error in source.items():
            known = errors.get(status)
            both_text = isinstance(known, str) and isinstance(error, str)
            errors[status] = f"{known}; {error}" if both_text and known != error else error
    return errors


def _variables(rule: Rule) -> list[str]:
    return _ROUTE_VARIABLE.findall(rule.rule)


def _path_parameter(operation: _Operation, variable: str) -> PathParameter:
    return (
        operation.doc.path.get(variable)
        or PATH_PARAMETERS.get(variable)
        or PathParameter(variable, {"type": "string"})
    )


def _document_path(operation: _Operation) -> str:
    return _ROUTE_VARIABLE.sub(
        lambda match: "{" + _path_parameter(operation, match[1]).name + "}", operation.rule.rule
    )


def _render(operation: _Operation, schemas: _Schemas) -> dict[str, Any]:
    doc, rule = operation.doc, operation.rule
    secured = doc.secured if doc.secured is not None else wants_user(operation.view)
    docstring = (operation.view.__doc__ or "").strip()
    summary, _, details = docstring.partition("\n")
    success: dict[str, Any] = {"description": doc.description or HTTPStatus(doc.status).phrase}
    content = schemas.content(doc.response, "serialization")
    if content is not None:
        success["content"] = content
    responses: dict[str, Any] = {str(doc.status): success}
    for status, error in sorted(_errors(operation, secured).items()):
        reply = error if isinstance(error, Reply) else Reply(Error, error)
        responses[str(status)] = {"description": reply.description}
        if (error_content := schemas.content(reply.body, "serialization")) is not None:
            responses[str(status)]["content"] = error_content
    rendered: dict[str, Any] = {
        "summary": doc.summary
        or summary.rstrip(".")
        or rule.endpoint.rpartition(".")[2].replace("_", " "),
        "operationId": f"{rule.endpoint}.{operation.method}",
        "responses": dict(sorted(responses.items())),
    }
    if details.strip():
        rendered["description"] = " ".join(details.split())
    if "." in rule.endpoint:
        rendered["tags"] = [rule.endpoint.partition(".")[0]]
    parameters = [
        {
            "name": (parameter := _path_parameter(operation, variable)).name,
            "in": "path",
            "required": True,
            "schema": dict(parameter.schema),
        }
        for variable in _variables(rule)
    ]
    for model, location in ((doc.query, "query"), (doc.headers, "header")):
        if model is not None:
            parameters += _parameters(model, location, schemas)
    if parameters:
        rendered["parameters"] = parameters
    if doc.request is not None:
        rendered["requestBody"] = {
            "required": True,
            "content": schemas.content(doc.request, "validation"),
        }
    if secured:
        rendered["security"] = [{"bearer": []}]
    return rendered


def build_document(app: Quart, registry: Registry) -> dict[str, Any]:
    operations = list(_operations(app))
    schemas = _Schemas()
    schemas.want(Error, "serialization")
    schemas.want(TaskCreate, "validation")
    schemas.want(TaskBatchCreate, "validation")
    for task_type in registry:
        schemas.want(task_type.payload_model, "validation")
    for operation in operations:
        doc = operation.doc
        schemas.want(doc.request, "validation")
        schemas.want(doc.query, "validation")
        schemas.want(doc.headers, "validation")
        schemas.want(doc.response, "serialization")
        for error in doc.errors.values():
            schemas.want(error, "serialization")
    schemas.generate()
    _task_create_by_type(schemas, registry)
    paths: dict[str, dict[str, Any]] = {}
    for operation in operations:
        rendered = _render(operation, schemas)
        paths.setdefault(_document_path(operation), {})[operation.method] = rendered
    return {
        "openapi": "3.1.0",
        "info": {"title": "TaskFlow", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schemas.components(paths),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


@blueprint.get("/api/openapi.json")
@documented(response=dict[str, Any], description="OpenAPI 3.1")
async def openapi_document() -> Response:
    """This document."""
    # Built once: the routes and the registry are fixed once the app serves.
    document: bytes | None = current_app.extensions.get(DOCUMENT_EXTENSION)
    if document is None:
        document = dumps(build_document(current_app, config().registry))
        current_app.extensions[DOCUMENT_EXTENSION] = document
    return Response(document, content_type="application/json")
