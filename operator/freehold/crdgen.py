"""Generate CustomResourceDefinitions from the API models.

Pydantic emits JSON Schema; the API server wants a *structural* OpenAPI v3 schema:
no ``$ref``, a ``type`` on every node, no ``additionalProperties: false``, optional
fields as plain properties rather than ``anyOf [X, null]``. This module does that
translation and nothing else, so ``crds/`` can be regenerated and diffed in CI.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from freehold.api.kinds import KINDS, Kind

Schema = dict[str, Any]
MAX_NAME = 53  # 63 (a Service name, a label value) less "-serve-svc"

# Keys pydantic emits that have no place (or a different meaning) in a CRD schema.
_DROPPED_KEYS = {"title", "$schema"}


def _resolve(node: Schema, defs: dict[str, Schema]) -> Schema:
    """Inline `$ref` / single `allOf` and flatten `anyOf [X, null]` into X."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        # Siblings of the ref (the field's description, default) win over the
        # referenced model's own (its docstring).
        node = {**_resolve(target, defs), **node}
    if "allOf" in node and len(node["allOf"]) == 1:
        (only,) = node.pop("allOf")
        node = {**_resolve(only, defs), **node}
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        branches = [b for b in node["anyOf"] if b != {"type": "null"}]
        if len(branches) == 1 and len(branches) < len(node["anyOf"]):
            node.pop("anyOf")
            node = {**_resolve(branches[0], defs), **node}
            if node.get("default", "unset") is None:
                node.pop("default")
        else:
            raise ValueError(f"union types cannot be expressed in a structural schema: {node}")
    return node


def _structural(node: Schema, defs: dict[str, Schema]) -> Schema:
    node = _resolve(node, defs)
    for key in _DROPPED_KEYS:
        node.pop(key, None)
    if node.get("additionalProperties") is False:
        node.pop("additionalProperties")
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "exclusiveMinimum" in node or "exclusiveMaximum" in node:
        # JSON Schema's numeric form means something else in OpenAPI 3.0.
        raise ValueError(f"use ge/le bounds, not gt/lt: {node}")
    if "properties" in node:
        required = set(node.get("required", []))
        props: dict[str, Schema] = {}
        for name, sub in node["properties"].items():
            child = _structural(sub, defs)
            if name not in required and "default" not in child and not _was_optional(sub):
                # A default_factory leaves no default in JSON Schema. Give the API
                # server one, so nested defaults are filled in, CEL rules can rely
                # on the field, and `kubectl get -o yaml` shows the effective spec.
                if child.get("type") == "object" and not child.get("required"):
                    child["default"] = {}
                elif child.get("type") == "array":
                    child["default"] = []
            if isinstance(child.get("default"), dict):
                # The API server checks a default against its node's CEL rules WITHOUT
                # applying the nested defaults first: `{}` fails a rule that reads
                # self.minReplicas. So a default is written out whole.
                child["default"] = apply_defaults(child, copy.deepcopy(child["default"]))
            props[name] = _ordered(child)
        node["properties"] = props
        node.setdefault("type", "object")
    if "items" in node:
        node["items"] = _structural(node["items"], defs)
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _structural(node["additionalProperties"], defs)
    return _ordered(node)


_LEADING_KEYS = ("type", "description")


def _ordered(node: Schema) -> Schema:
    # type and description first, the rest sorted: a stable, readable CRD diff.
    head = {k: node[k] for k in _LEADING_KEYS if k in node}
    tail = {k: node[k] for k in sorted(node) if k not in _LEADING_KEYS}
    return head | tail


def apply_defaults(schema: Schema, value: Any) -> Any:
    """Fill in schema defaults the way the API server does (recursively, into defaults too)."""
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                value[key] = apply_defaults(extra, value[key])
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def _was_optional(node: Schema) -> bool:
    return any(b == {"type": "null"} for b in node.get("anyOf", []))


def openapi_schema(model: type[BaseModel]) -> Schema:
    """The structural OpenAPI v3 schema of one API model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _structural(raw, defs)


def _printer_columns(kind: Kind) -> list[dict[str, Any]]:
    columns = []
    for col in kind.columns:
        entry: dict[str, Any] = {"name": col.name, "type": col.type, "jsonPath": col.json_path}
        if col.description:
            entry["description"] = col.description
        if col.priority:
            entry["priority"] = col.priority
        columns.append(entry)
    return columns


def crd_for(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind, as a dict ready for YAML."""
    spec_schema = openapi_schema(kind.spec)
    status_schema = openapi_schema(kind.status)
    root: Schema = {
        "type": "object",
        "description": kind.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "APIVersion defines the versioned schema of this representation "
                "of an object.",
            },
            "kind": {
                "type": "string",
                "description": "Kind is a string value representing the REST resource this "
                "object represents.",
            },
            # Children are named after the resource (`<name>-serve-svc`, a Service, is the
            # longest) and labelled with it: a DNS-1035 label short enough for both. The
            # API server itself only asks for a DNS subdomain of 253 characters.
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {
                        "type": "string",
                        "description": f"A DNS-1035 label of at most {MAX_NAME} characters.",
                        "maxLength": MAX_NAME,
                        "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$",
                    }
                },
            },
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.crd_name,
            "labels": {"app.kubernetes.io/part-of": "freehold"},
        },
        "spec": {
            "group": kind.group,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": list(kind.categories),
            },
            "scope": kind.scope,
            "versions": [
                {
                    "name": kind.version,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _printer_columns(kind),
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def crd_filename(kind: Kind) -> str:
    return f"{kind.group}_{kind.plural}.yaml"


class InvalidCrdError(ValueError):
    """A generated CRD the API server would refuse."""


def render(kind: Kind) -> str:
    from freehold.validation import crd_errors  # validation builds on this module

    crd = crd_for(kind)
    problems = crd_errors(crd)
    if problems:
        raise InvalidCrdError(
            f"{kind.crd_name} would be refused by the API server: "
            + "; ".join(str(p) for p in problems)
        )
    header = "# GENERATED by `freehold crds` from operator/freehold/api. Do not edit by hand.\n"
    body = yaml.safe_dump(crd, sort_keys=False, width=100, allow_unicode=True)
    return header + body


def write_crds(output: Path) -> list[Path]:
    """Write every CRD into `output`; returns the files written."""
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in KINDS:
        path = output / crd_filename(kind)
        path.write_text(render(kind), encoding="utf-8")
        written.append(path)
    return written


def schema_of(kind: Kind) -> Schema:
    """The openAPIV3Schema of a kind (a fresh copy; callers may mutate it)."""
    return copy.deepcopy(crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
