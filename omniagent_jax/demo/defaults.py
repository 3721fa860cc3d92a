"""Where and how many: the demo's serving defaults (the CLI's flags and the app's launch share them)."""

DEFAULT_HOST = "127.0.0.1"  # loopback only unless --host says otherwise
DEFAULT_PORT = 8080
DEFAULT_CONCURRENCY = 8  # episodes played at once over all browser sessions (the Gradio queue's limit)
