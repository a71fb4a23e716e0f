"""services.toml: pydantic models, tomlkit loading and comment-preserving edits."""
