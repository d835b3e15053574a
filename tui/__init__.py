"""llm-moments' Textual UI. Talks to the engine only through a source (live, replay, watch)."""
