"""The Gradio demo, `omniagent demo` (docs/architecture.md §2.7): `app` (the page), `session` (episodes through
the episode driver, streamed), `hub` (one engine thread shared by all sessions), `render`, `media_files`,
`export`, `uploads`, `examples`, `cli`. Gradio is imported only by `app` (the `[demo]` extra)."""
