"""The tools file: which tools the model gets, loaded from YAML and validated once at start-up.

Default: the shipped tools_service/tools.yaml; `TOOLS_FILE` points at a company's own. Every mistake is a
ConfigError naming the file and the place ("tools.yaml: tools[2].http.url: ..."). docs/tools.md is the reference.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from service_kit.codes import ESCALATION_REASON_CODES
from service_kit.env import ConfigError
from tools_service.orders import MAX_ORDER_ID_LENGTH

SHIPPED_TOOLS_FILE = Path(__file__).with_name("tools.yaml")

READ = "read"
WRITE = "write"
EFFECTS = (READ, WRITE)
# Built-in backends and the effect each has (escalation opens a ticket at once: it needs no confirmation).
BUILTINS = {
    "orders.lookup": READ,
    "tickets.escalate": READ,
    "orders.cancel": WRITE,
    "orders.start_return": WRITE,
    "orders.change_address": WRITE,
}
# Arguments a built-in backend reads: its schema must require them.
BUILTIN_ARGUMENTS = {
    "orders.lookup": ("order_id",),
    "tickets.escalate": ("reason", "priority"),
    "orders.cancel": ("order_id",),
    "orders.start_return": ("order_id",),
    "orders.change_address": ("order_id", "address"),
}
# Where a bound parameter's value comes from: the authenticated customer, or the conversation of the call.
BIND_SOURCES = ("principal", "conversation")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
MAX_HTTP_RETRIES = 5
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
_TOOL_KEYS = {"name", "description", "effect", "parameters", "backend", "bind", "summary"}
_HTTP_KEYS = {"method", "url", "timeout_seconds", "retries", "headers"}


@dataclass(frozen=True)
class HttpEndpoint:
    """An HTTP backend: `url` is a template whose {placeholders} are arguments or bound parameters."""

    method: str
    url: str
    timeout_seconds: float
    retries: int
    headers: tuple[tuple[str, str], ...]  # values with their ${ENV} references resolved

    @property
    def placeholders(self) -> tuple[str, ...]:
        return _placeholders(self.url)


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    # The JSON Schema the tools service validates with (strict); the model gets `portable_schema` of it.
    parameters: dict[str, Any]
    effect: str = READ
    builtin: str | None = None
    http: HttpEndpoint | None = None
    # Parameter name → BIND_SOURCES entry; never in `parameters`, filled by the tools service.
    bind: Mapping[str, str] = field(default_factory=dict)
    # Writes through HTTP: "Cancel subscription {subscription_id}" (built-in order writes compute theirs).
    summary: str | None = None

    @property
    def changes_state(self) -> bool:
        return self.effect == WRITE

    def openai_tool(self) -> dict[str, Any]:
        """The definition the model gets: the schema with portable patterns (see `portable_schema`); the
        tools service itself validates against the strict `parameters`."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": portable_schema(self.parameters),
            },
        }


_CLASS_SHORTHANDS = {"d": "0-9", "w": "A-Za-z0-9_"}


def portable_pattern(pattern: str) -> str:
    """A regular expression that grammar-based servers (llama.cpp's JSON-schema-to-grammar) can compile:
    `\\d`/`\\w` spelt as character classes and the outer `^`/`$` anchors dropped (a JSON Schema pattern the
    model must fill is matched whole by such servers anyway). ``^ORD-\\d{5}$`` → ``ORD-[0-9]{5}``."""
    out: list[str] = []
    in_class = False
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            escaped = pattern[index + 1]
            shorthand = _CLASS_SHORTHANDS.get(escaped)
            if shorthand is None:
                out.append(char + escaped)
            else:
                out.append(shorthand if in_class else f"[{shorthand}]")
            index += 2
            continue
        if char == "[" and not in_class:
            in_class = True
        elif char == "]" and in_class:
            in_class = False
        out.append(char)
        index += 1
    text = "".join(out)
    if text.startswith("^"):
        text = text[1:]
    if text.endswith("$") and not text.endswith("\\$"):
        text = text[:-1]
    return text


def portable_schema(schema: Any) -> Any:
    """`schema` with every string `pattern` made portable (`portable_pattern`); everything else as is."""
    if isinstance(schema, dict):
        return {
            key: portable_pattern(value)
            if key == "pattern" and isinstance(value, str)
            else portable_schema(value)
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [portable_schema(item) for item in schema]
    return schema


def _placeholders(template: str) -> tuple[str, ...]:
    try:
        return tuple(name for _, name, _, _ in string.Formatter().parse(template) if name is not None)
    except ValueError:
        return ("",)  # unbalanced braces: reported as an empty placeholder


class _Place:
    """Builds "file: tools[2].http.url: message" errors."""

    def __init__(self, file: Path) -> None:
        self.file = file

    def error(self, where: str, message: str) -> ConfigError:
        return ConfigError(
            f"{self.file.name}: {where}: {message}" if where else f"{self.file.name}: {message}"
        )


def _string(value: object, where: str, place: _Place, *, max_length: int = 4000) -> str:
    if not isinstance(value, str) or not value.strip():
        raise place.error(where, "must be a non-empty string")
    if len(value) > max_length:
        raise place.error(where, f"is longer than {max_length} characters")
    return value.strip()


def _check_strings_bounded(schema: object, where: str, place: _Place) -> None:
    """Every free-text string the model may fill has a maxLength (a tool never takes unbounded text)."""
    if not isinstance(schema, dict):
        return
    if schema.get("type") == "string" and "enum" not in schema and "maxLength" not in schema:
        raise place.error(where, "a string parameter needs a maxLength (or an enum)")
    for name, sub in (schema.get("properties") or {}).items():
        _check_strings_bounded(sub, f"{where}.properties.{name}", place)
    if "items" in schema:
        _check_strings_bounded(schema["items"], f"{where}.items", place)


def _parameters(raw: object, where: str, place: _Place) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise place.error(where, "must be a JSON Schema object")
    parameters = dict(raw)
    try:
        Draft202012Validator.check_schema(parameters)
    except SchemaError as error:
        path = "".join(f".{part}" for part in error.absolute_path)
        raise place.error(f"{where}{path}", f"not a valid JSON Schema: {error.message}") from None
    if parameters.get("type") != "object":
        raise place.error(f"{where}.type", "must be object")
    if parameters.setdefault("additionalProperties", False) is not False:
        raise place.error(f"{where}.additionalProperties", "must be false (unknown arguments are refused)")
    properties = parameters.setdefault("properties", {})
    if not isinstance(properties, dict):
        raise place.error(f"{where}.properties", "must be a mapping")
    for name in parameters.get("required", []):
        if name not in properties:
            raise place.error(f"{where}.required", f"{name!r} is required but not a property")
    _check_strings_bounded(parameters, where, place)
    return parameters


def _resolve_env(value: str, where: str, place: _Place, environ: Mapping[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ or not environ[name]:
            raise place.error(where, f"environment variable {name} is not set")
        return environ[name]

    resolved = _ENV_REFERENCE.sub(substitute, value)
    if any(char in resolved for char in "\r\n\0"):
        raise place.error(where, "a header value must be one line")
    return resolved


def _http(raw: object, where: str, effect: str, place: _Place, environ: Mapping[str, str]) -> HttpEndpoint:
    if not isinstance(raw, dict):
        raise place.error(where, "must be a mapping with method and url")
    unknown = sorted(set(raw) - _HTTP_KEYS)
    if unknown:
        raise place.error(f"{where}.{unknown[0]}", f"unknown key (use {', '.join(sorted(_HTTP_KEYS))})")
    method = str(raw.get("method", "GET")).upper()
    if method not in HTTP_METHODS:
        raise place.error(f"{where}.method", f"must be one of {', '.join(HTTP_METHODS)}")
    url = _string(raw.get("url"), f"{where}.url", place)
    if not url.startswith(("http://", "https://")):
        raise place.error(f"{where}.url", "must start with http:// or https://")
    url = _resolve_env(url, f"{where}.url", place, environ) if "${" in url else url
    if any(not _NAME.fullmatch(name) for name in _placeholders(url)):
        raise place.error(f"{where}.url", "every {placeholder} must be a parameter name")
    timeout = raw.get("timeout_seconds", 5)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 120:
        raise place.error(f"{where}.timeout_seconds", "must be a number of seconds in (0, 120]")
    retries = raw.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_HTTP_RETRIES:
        raise place.error(f"{where}.retries", f"must be an integer from 0 to {MAX_HTTP_RETRIES}")
    if retries and effect == WRITE:
        raise place.error(f"{where}.retries", "a write is never retried (it could happen twice): use 0")
    headers_raw = raw.get("headers", {}) or {}
    if not isinstance(headers_raw, dict):
        raise place.error(f"{where}.headers", "must be a mapping of header name to value")
    headers: list[tuple[str, str]] = []
    for name, value in headers_raw.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise place.error(f"{where}.headers", f"{name!r} is not a valid header name")
        if name.lower() == "idempotency-key":
            raise place.error(f"{where}.headers.{name}", "is set by the tools service (the action id)")
        text = _string(value, f"{where}.headers.{name}", place)
        headers.append((name, _resolve_env(text, f"{where}.headers.{name}", place, environ)))
    return HttpEndpoint(method, url, float(timeout), retries, tuple(headers))


def _order_id_property(parameters: dict[str, Any], pattern: str) -> None:
    """Built-in order tools take `order_id`, validated with the service's ORDER_ID_PATTERN."""
    properties = parameters["properties"]
    properties["order_id"] = {
        **properties["order_id"],
        "type": "string",
        "pattern": pattern,
        "maxLength": MAX_ORDER_ID_LENGTH,
    }


def _tool(
    raw: object, where: str, place: _Place, environ: Mapping[str, str], order_id_pattern: str
) -> ToolSpec:
    if not isinstance(raw, dict):
        raise place.error(where, "must be a mapping")
    unknown = sorted(set(raw) - _TOOL_KEYS)
    if unknown:
        raise place.error(f"{where}.{unknown[0]}", f"unknown key (use {', '.join(sorted(_TOOL_KEYS))})")
    name = _string(raw.get("name"), f"{where}.name", place, max_length=64)
    if not _NAME.fullmatch(name):
        raise place.error(f"{where}.name", "letters, digits, _ and - only, starting with a letter")
    description = _string(raw.get("description"), f"{where}.description", place)
    effect = raw.get("effect")
    if effect not in EFFECTS:
        raise place.error(f"{where}.effect", "must be read or write")
    parameters = _parameters(raw.get("parameters", {"type": "object"}), f"{where}.parameters", place)
    bind_raw = raw.get("bind", {}) or {}
    if not isinstance(bind_raw, dict):
        raise place.error(f"{where}.bind", "must be a mapping of parameter name to principal or conversation")
    bind: dict[str, str] = {}
    for key, source in bind_raw.items():
        if not isinstance(key, str) or not _NAME.fullmatch(key):
            raise place.error(f"{where}.bind", f"{key!r} is not a parameter name")
        if source not in BIND_SOURCES:
            raise place.error(f"{where}.bind.{key}", f"must be one of {', '.join(BIND_SOURCES)}")
        if key in parameters["properties"]:
            raise place.error(
                f"{where}.bind.{key}",
                "a bound parameter must not be in parameters (the model never sees or sets it)",
            )
        bind[key] = source
    backend = raw.get("backend")
    if not isinstance(backend, dict) or len(backend) != 1 or next(iter(backend)) not in ("builtin", "http"):
        raise place.error(f"{where}.backend", "must be {builtin: <name>} or {http: {...}}")
    summary = raw.get("summary")
    builtin: str | None = None
    http: HttpEndpoint | None = None
    if "builtin" in backend:
        builtin = backend["builtin"]
        if builtin not in BUILTINS:
            raise place.error(f"{where}.backend.builtin", f"must be one of {', '.join(BUILTINS)}")
        if BUILTINS[builtin] != effect:
            raise place.error(f"{where}.effect", f"{builtin} is a {BUILTINS[builtin]} backend")
        if bind:
            raise place.error(f"{where}.bind", "built-in backends take the customer from the caller already")
        if summary is not None:
            raise place.error(
                f"{where}.summary", "built-in order writes compute their summary from the order"
            )
        for argument in BUILTIN_ARGUMENTS[builtin]:
            if argument not in parameters.get("required", []):
                raise place.error(f"{where}.parameters.required", f"{builtin} needs a required {argument}")
        if builtin.startswith("orders."):
            _order_id_property(parameters, order_id_pattern)
        if builtin == "tickets.escalate" and "reason_code" in parameters["properties"]:
            reason_code = parameters["properties"]["reason_code"]
            parameters["properties"]["reason_code"] = {**reason_code, "enum": list(ESCALATION_REASON_CODES)}
    else:
        http = _http(backend["http"], f"{where}.http", effect, place, environ)
        known = set(parameters["properties"]) | set(bind)
        required = set(parameters.get("required", [])) | set(bind)
        for placeholder in http.placeholders:
            if placeholder not in required:
                state = "optional" if placeholder in known else "unknown"
                raise place.error(
                    f"{where}.http.url",
                    f"{{{placeholder}}} is an {state} parameter (must be required or bound)",
                )
        if effect == WRITE:
            summary = _string(summary, f"{where}.summary", place, max_length=300)
            for placeholder in _placeholders(summary):
                if placeholder not in parameters.get("required", []):
                    raise place.error(f"{where}.summary", f"{{{placeholder}}} must be a required parameter")
        elif summary is not None:
            raise place.error(f"{where}.summary", "only write tools have a summary")
    return ToolSpec(name, description, parameters, effect, builtin, http, bind, summary)


def load_tools(
    path: Path | None = None, *, order_id_pattern: str, environ: Mapping[str, str] | None = None
) -> tuple[ToolSpec, ...]:
    """The tools declared in `path` (default: the shipped file), or ConfigError naming the file and place."""
    file = path or SHIPPED_TOOLS_FILE
    place = _Place(file)
    try:
        document = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"TOOLS_FILE={file}: cannot read it ({error.strerror})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        raise place.error(where, "not valid YAML") from None
    if not isinstance(document, dict) or not isinstance(document.get("tools"), list) or not document["tools"]:
        raise place.error("tools", "must be a non-empty list of tools")
    unknown = sorted(set(document) - {"tools"})
    if unknown:
        raise place.error(unknown[0], "unknown key (the file holds `tools:`)")
    env = os.environ if environ is None else environ
    specs: list[ToolSpec] = []
    for index, raw in enumerate(document["tools"]):
        spec = _tool(raw, f"tools[{index}]", place, env, order_id_pattern)
        if any(other.name == spec.name for other in specs):
            raise place.error(f"tools[{index}].name", f"{spec.name!r} is declared twice")
        specs.append(spec)
    return tuple(specs)
