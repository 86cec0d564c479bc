"""Spann3R service: FastAPI app, WebSocket protocol, sessions, device worker, settings, metrics and the CLI."""
