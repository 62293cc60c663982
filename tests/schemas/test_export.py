import json

from stream.cli import main


def test_schemas_export_writes_one_json_schema_per_message(tmp_path, capsys):
    assert main(["schemas", "export", str(tmp_path / "out")]) == 0
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == [
        "BehaviorEvent.schema.json",
        "CatalogMessage.schema.json",
        "DeadLetter.schema.json",
        "InterestUpdate.schema.json",
    ]
    event = json.loads((tmp_path / "out" / "BehaviorEvent.schema.json").read_text())
    assert event["additionalProperties"] is False
    assert set(event["required"]) == {"event_id", "user_id", "item_id", "event_type", "timestamp"}
    assert event["properties"]["user_id"]["maxLength"] == 128
    assert event["$defs"]["EventType"]["enum"] == ["click", "view"]
    assert all(field.get("description") for field in event["properties"].values())
    dead = json.loads((tmp_path / "out" / "DeadLetter.schema.json").read_text())
    assert dead["properties"]["payload"]["format"] == "base64url"
