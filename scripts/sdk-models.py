#!/usr/bin/env python3
"""Dumps the Daytona SDK's wire models that corral sends into
crates/corral-testing/tests/data/daytona-models.json: for each model, every JSON field name
(the pydantic alias, i.e. the generator's attribute_map value), whether the model requires it,
whether it may be null, and its JSON type. crates/corral-testing/tests/wire.rs checks corral's
DTO snapshots against that file.

Run with the Python that has the pinned SDK (tests/requirements.txt: daytona==0.226.1):

    /work/venv/bin/python scripts/sdk-models.py     # or any venv with daytona_api_client

The output is generated data: do not edit it by hand; regenerate it when the SDK pin moves.
"""

import enum
import json
import pathlib
import sys
import types
import typing

import daytona_api_client
from daytona_api_client import models
from pydantic import BaseModel

# SDK model -> what corral sends it for (documentation only).
MODELS = {
    "Sandbox": "GET/POST /api/sandbox..., SandboxDto with env",
    "SandboxListItem": "items of GET /api/sandbox",
    "ListSandboxesResponse": "GET /api/sandbox",
    "SandboxVolume": "Sandbox.volumes[]",
    "SnapshotDto": "GET/POST /api/snapshots...",
    "PaginatedSnapshots": "GET /api/snapshots",
    "VolumeDto": "GET/POST /api/volumes...",
    "PortPreviewUrl": "GET /api/sandbox/{id}/ports/{port}/preview-url",
    "SignedPortPreviewUrl": "GET /api/sandbox/{id}/ports/{port}/signed-preview-url",
    "ToolboxProxyUrl": "GET /api/sandbox/{id}/toolbox-proxy-url",
    "Url": "GET /api/.../build-logs-url",
    "SandboxLabels": "PUT /api/sandbox/{id}/labels",
    "StorageAccessDto": "GET /api/object-storage/push-access",
    "CreateSandbox": "POST /api/sandbox body (what corral reads: each field honoured or refused)",
}


def item_type(annotation):
    """The model name of a list's items or a map's values, else their JSON type."""
    kind, _, ref = json_type(annotation)
    return ref if kind == "object" and ref else kind


def json_type(annotation):
    """(JSON type, nullable, item or model name) of a pydantic annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return json_type(args[0])
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        nullable = len(non_none) < len(args)
        kinds = {json_type(a)[0] for a in non_none}
        if kinds <= {"integer", "number"}:
            kind = "number" if "number" in kinds else "integer"
            return kind, nullable, None
        if len(non_none) == 1:
            kind, inner_null, ref = json_type(non_none[0])
            return kind, nullable or inner_null, ref
        return "any", nullable, None
    if origin in (list, typing.List):
        return "array", False, item_type(args[0]) if args else None
    if origin in (dict, typing.Dict):
        return "object", False, item_type(args[1]) if len(args) > 1 else None
    if annotation is typing.Any or annotation is object:
        return "any", True, None
    if isinstance(annotation, type):
        if issubclass(annotation, bool):
            return "boolean", False, None
        if issubclass(annotation, enum.Enum):
            return "string", False, annotation.__name__
        if issubclass(annotation, str):
            return "string", False, None
        if issubclass(annotation, int):
            return "integer", False, None
        if issubclass(annotation, float):
            return "number", False, None
        if issubclass(annotation, BaseModel):
            return "object", False, annotation.__name__
        if annotation.__name__ == "datetime":
            return "string", False, "date-time"
    return "any", True, None


def dump(name):
    cls = getattr(models, name)
    # The JSON names the model reads and writes (catch-alls like additional_properties are not).
    wire = set(getattr(cls, f"_{name}__properties"))
    fields = {}
    for attr, info in cls.model_fields.items():
        json_name = info.serialization_alias or info.alias or attr
        if json_name not in wire:
            continue
        kind, nullable, ref = json_type(info.annotation)
        field = {
            "python": attr,
            "required": info.is_required(),
            "nullable": nullable,
            "type": kind,
        }
        if ref:
            field["of"] = ref
            target = getattr(models, ref, None)
            if isinstance(target, type) and issubclass(target, enum.Enum):
                field["values"] = sorted(e.value for e in target)
        fields[json_name] = field
    return {"usedFor": MODELS[name], "fields": dict(sorted(fields.items()))}


def main():
    out = {
        "_generated": "by scripts/sdk-models.py from daytona_api_client "
        f"{getattr(daytona_api_client, '__version__', '?')}; do not edit, regenerate",
        "models": {name: dump(name) for name in MODELS},
    }
    path = pathlib.Path(__file__).resolve().parent.parent / \
        "crates/corral-testing/tests/data/daytona-models.json"
    path.write_text(json.dumps(out, indent=2, sort_keys=False) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
