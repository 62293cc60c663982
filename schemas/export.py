"""JSON Schema for every message, for producers and consumers written in other languages."""

import json
from pathlib import Path

from pydantic import TypeAdapter

from schemas.events import BehaviorEvent, CatalogMessage, UserErasure
from schemas.outputs import DeadLetter, InterestUpdate

__all__ = ["export_json_schemas", "json_schemas"]


def json_schemas() -> dict[str, dict]:
    """Schema per message name: inputs as validated, outputs as serialised."""
    return {
        "BehaviorEvent": BehaviorEvent.model_json_schema(mode="validation"),
        "UserErasure": UserErasure.model_json_schema(mode="validation"),
        "CatalogMessage": TypeAdapter(CatalogMessage).json_schema(mode="validation"),
        "InterestUpdate": InterestUpdate.model_json_schema(mode="serialization"),
        "DeadLetter": DeadLetter.model_json_schema(mode="serialization"),
    }


def export_json_schemas(directory: Path) -> list[Path]:
    """Write `<Name>.schema.json` files into `directory`; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = directory / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
