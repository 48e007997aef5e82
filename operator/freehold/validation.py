"""Offline validation of Freehold manifests against the generated CRD schemas.

This mirrors what the API server does on create/update, in the same order:
apply schema defaults, reject unknown fields (as `kubectl --validate=strict`
does), check the OpenAPI schema, then evaluate the CEL rules
(`x-kubernetes-validations`), transition rules only when an old object is given.

The CEL rules are evaluated with `common-expression-language`, which implements
the CEL standard library. Kubernetes adds libraries of its own (quantity, regex
helpers); our rules use only what both understand, and the e2e suite exercises
them on a real API server.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import cel

from freehold.quiet_imports import without_optional

# jsonschema probes optional format libraries at import; one of them (rfc3987-syntax,
# pulled into many environments by jsonschema[format-nongpl]) builds a parser grammar
# there, ~1.4 s before every CLI command's first byte. We check no string formats (the API
# server does not either), so the probe is skipped; another importer still gets it.
with without_optional("rfc3987_syntax"):
    import jsonschema

from freehold.api.base import API_VERSION
from freehold.api.kinds import KINDS_BY_NAME, Kind
from freehold.crdgen import Schema, apply_defaults, schema_of

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
Path = tuple[str | int, ...]


@dataclass(frozen=True)
class FieldError:
    """One reason a manifest is invalid, at a field path such as spec.scaling.minReplicas."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def format_path(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "<root>"


@functools.cache
def _schema(kind_name: str) -> Schema:
    return schema_of(KINDS_BY_NAME[kind_name])


@functools.cache
def _program(rule: str) -> Any:
    return cel.compile(rule)


def _unknown_fields(schema: Schema, value: Any, path: Path) -> Iterator[FieldError]:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        for key, sub in value.items():
            if not path and key == "metadata":
                continue  # ObjectMeta: the API server validates it itself, whole
            if key in props:
                yield from _unknown_fields(props[key], sub, (*path, key))
            elif not isinstance(schema.get("additionalProperties"), dict):
                yield FieldError(format_path((*path, key)), "unknown field")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            yield from _unknown_fields(schema["items"], item, (*path, i))


def _schema_message(error: jsonschema.ValidationError) -> tuple[Path, str]:
    path: Path = tuple(error.absolute_path)
    v, inst = error.validator, error.instance
    if v == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        return (*path, *missing[:1]), "Required value"
    if v == "enum":
        allowed = ", ".join(f'"{x}"' for x in error.validator_value)
        return path, f'Unsupported value: "{inst}": supported values: {allowed}'
    if v == "pattern":
        return path, f'Invalid value: "{inst}": must match the pattern {error.validator_value}'
    if v in {"minimum", "maximum"}:
        word = "greater" if v == "minimum" else "less"
        return path, f"Invalid value: {inst}: must be {word} than or equal to " + str(
            error.validator_value
        )
    if v in {"maxLength", "maxItems", "maxProperties"}:
        return path, f"Too long: may have at most {error.validator_value} " + (
            "characters" if v == "maxLength" else "items"
        )
    if v in {"minLength", "minItems"}:
        return path, f"Invalid value: must have at least {error.validator_value} " + (
            "characters" if v == "minLength" else "items"
        )
    if v in {"type", "anyOf"}:
        expected = error.validator_value if v == "type" else "integer or string"
        return path, f"Invalid value: {inst!r}: must be of type {expected}"
    return path, error.message


def _cel_errors(
    schema: Schema, value: Any, old: Any, path: Path, has_old: bool
) -> Iterator[FieldError]:
    for entry in schema.get("x-kubernetes-validations", []):
        rule = entry["rule"]
        transition = "oldSelf" in rule
        if transition and not has_old:
            continue
        context = {"self": value}
        if transition:
            context["oldSelf"] = old
        target = path + tuple(p for p in entry.get("fieldPath", "").split(".") if p)
        try:
            ok = _program(rule).execute(context)
        except Exception as exc:  # the CEL runtime raises plain KeyError/ValueError/...
            yield FieldError(format_path(path), f"rule {rule!r} could not be evaluated: {exc}")
            continue
        if ok is not True:
            yield FieldError(format_path(target), f"Invalid value: {entry['message']}")
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                sub_old_present = has_old and isinstance(old, dict) and name in old
                yield from _cel_errors(
                    sub,
                    value[name],
                    old[name] if sub_old_present else None,
                    (*path, name),
                    sub_old_present,
                )
    elif isinstance(value, list) and "items" in schema:
        # Transition rules under list items need Kubernetes' item correlation
        # (by map keys); we only correlate through objects and skip them here.
        for i, item in enumerate(value):
            yield from _cel_errors(schema["items"], item, None, (*path, i), False)


def kind_of(manifest: Any) -> Kind | None:
    if not isinstance(manifest, dict):
        return None
    return KINDS_BY_NAME.get(str(manifest.get("kind")))


def validate(manifest: Any, old: Any = None) -> list[FieldError]:
    """Every reason `manifest` would be rejected; empty when it is valid.

    `old` is the stored object on an update, for transition (oldSelf) rules.
    """
    if not isinstance(manifest, dict):
        return [FieldError("<root>", "a manifest must be a mapping")]
    if manifest.get("kind") == "CustomResourceDefinition":
        # `freehold validate -f crds/`: the CRD itself, as the API server checks it.
        return crd_errors(manifest)
    errors: list[FieldError] = []
    if manifest.get("apiVersion") != API_VERSION:
        errors.append(FieldError("apiVersion", f'Unsupported value: must be "{API_VERSION}"'))
    kind = kind_of(manifest)
    if kind is None:
        allowed = ", ".join(f'"{k}"' for k in KINDS_BY_NAME)
        errors.append(FieldError("kind", f"Unsupported value: supported values: {allowed}"))
        return errors
    metadata = manifest.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        errors.append(FieldError("metadata.name", "Required value"))
    elif len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        errors.append(
            FieldError(
                "metadata.name",
                f'Invalid value: "{name}": must be a lowercase RFC 1123 subdomain',
            )
        )

    schema = _schema(kind.kind)
    obj = apply_defaults(schema, copy.deepcopy(manifest))
    errors.extend(_unknown_fields(schema, obj, ()))
    validator = jsonschema.Draft7Validator(schema)
    schema_errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    for error in schema_errors:
        path, message = _schema_message(error)
        errors.append(FieldError(format_path(path), message))
    if schema_errors:
        # CEL rules assume a schema-valid object, as on the API server.
        return errors
    old_obj = apply_defaults(schema, copy.deepcopy(old)) if old is not None else None
    errors.extend(_cel_errors(schema, obj, old_obj, (), old is not None))
    return errors


def defaulted(manifest: dict[str, Any]) -> dict[str, Any]:
    """A copy of a manifest with the schema defaults filled in."""
    kind = kind_of(manifest)
    if kind is None:
        raise ValueError("not a Freehold manifest")
    result: dict[str, Any] = apply_defaults(_schema(kind.kind), copy.deepcopy(manifest))
    return result


def _schema_nodes(node: Schema, path: str) -> Iterator[tuple[str, Schema]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _schema_nodes(sub, f"{path}.properties[{name}]")
    if isinstance(node.get("items"), dict):
        yield from _schema_nodes(node["items"], f"{path}.items")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _schema_nodes(node["additionalProperties"], f"{path}.additionalProperties")


def crd_errors(crd: dict[str, Any]) -> list[FieldError]:
    """Why the API server would refuse this CustomResourceDefinition's defaults.

    On create and update of a CRD the API server validates every `default` against the
    schema of its node and that node's CEL rules, as the value stands: nested defaults are
    NOT applied first. A `default: {}` on an object whose rule reads `self.minReplicas`
    is refused with "no such key". Paths are named as the API server names them.
    """
    errors: list[FieldError] = []
    for version in crd.get("spec", {}).get("versions", []):
        root = (version.get("schema") or {}).get("openAPIV3Schema") or {}
        for path, node in _schema_nodes(root, "spec.validation.openAPIV3Schema"):
            if "default" not in node:
                continue
            default = node["default"]
            where = f"{path}.default"
            plain = {k: v for k, v in node.items() if k != "default"}
            for error in jsonschema.Draft7Validator(plain).iter_errors(default):
                errors.append(FieldError(where, f"Invalid value: {error.message}"))
            for problem in _unknown_fields(node, default, ()):
                errors.append(FieldError(where, f"{problem.path}: {problem.message}"))
            for problem in _cel_errors(node, default, None, (), False):
                errors.append(FieldError(where, f"{problem.path}: {problem.message}"))
    return errors
