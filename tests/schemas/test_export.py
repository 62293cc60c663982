import json

import pytest

from schemas import InterestUpdate, InvalidMessage, decode_event
from schemas.export import json_schemas
from stream.cli import main


def test_schemas_export_writes_one_json_schema_per_message(tmp_path, capsys):
    assert main(["schemas", "export", str(tmp_path / "out")]) == 0
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == [
        "BehaviorEvent.schema.json",
        "CatalogMessage.schema.json",
        "DeadLetter.schema.json",
        "InterestUpdate.schema.json",
        "UserErasure.schema.json",
    ]
    event = json.loads((tmp_path / "out" / "BehaviorEvent.schema.json").read_text())
    assert event["additionalProperties"] is False
    assert set(event["required"]) == {"event_id", "user_id", "item_id", "event_type", "timestamp"}
    assert event["properties"]["user_id"]["maxLength"] == 128
    assert event["$defs"]["EventType"]["enum"] == ["click", "view"]
    assert all(field.get("description") for field in event["properties"].values())
    dead = json.loads((tmp_path / "out" / "DeadLetter.schema.json").read_text())
    assert dead["properties"]["payload"]["format"] == "base64url"


def test_event_timestamp_schema_documents_iso_and_epoch_milliseconds():
    timestamp = json_schemas()["BehaviorEvent"]["properties"]["timestamp"]
    iso, millis = timestamp["anyOf"]
    assert iso == {"type": "string", "format": "date-time", "description": iso["description"]}
    assert "offset" in iso["description"]
    assert millis["type"] == "integer" and "epoch milliseconds" in millis["description"]
    assert "epoch milliseconds" in timestamp["description"]
    event = {"event_id": "e", "user_id": "u", "item_id": "i", "event_type": "view"}
    for accepted in (millis["minimum"], millis["maximum"]):
        decode_event(json.dumps({**event, "timestamp": accepted}).encode())
    for rejected in (millis["minimum"] - 1, millis["maximum"] + 1):
        with pytest.raises(InvalidMessage, match="outside"):
            decode_event(json.dumps({**event, "timestamp": rejected}).encode())


def test_outgoing_timestamps_stay_iso_8601_in_the_schema():
    update = json_schemas()["InterestUpdate"]
    event_ref = update["$defs"]["EventRef"]["properties"]["timestamp"]
    assert event_ref["type"] == "string" and event_ref["format"] == "date-time"


def test_because_is_an_optional_documented_field_and_version_1_updates_still_validate():
    update = json_schemas()["InterestUpdate"]
    recommendation = update["$defs"]["Recommendation"]
    assert recommendation["required"] == ["item_id", "score"]
    assert recommendation["properties"]["because"]["description"]
    reason = update["$defs"]["Reason"]
    assert set(reason["required"]) == {"event_id", "item_id"}
    assert all(field.get("description") for field in reason["properties"].values())
    version_1 = {
        "schema_version": 1,
        "update_id": "v:u:0:1",
        "user_id": "u",
        "model_version": "v",
        "events": [
            {
                "event_id": "e",
                "event_type": "view",
                "timestamp": "2024-01-01T00:00:00Z",
                "partition": 0,
                "offset": 1,
            }
        ],
        "interests": {"Jazz": 1.0},
        "interest_shift": {"Jazz": 0.5},
        "recommendations": [{"item_id": "i", "score": 0.5}],
        "latency_ms": 3.0,
    }
    parsed = InterestUpdate.model_validate_json(json.dumps(version_1))
    assert parsed.recommendations[0].because is None
