"""Spann3R service: FastAPI app, WebSocket protocol, sessions, device worker, settings, metrics and the CLI."""

if __name__ != "spann3r.server":  # imported as a top-level folder, e.g. from the repository root
    raise ImportError(
        f"import spann3r.server instead of {__name__!r}: the folder is that package, and importing it "
        "by its folder name would load a second copy of every class"
    )
