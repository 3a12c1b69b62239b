"""Reading session files (JSON array, NDJSON, CSV) into validated sessions for import."""
