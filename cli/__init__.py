"""The ``spann3r`` command: one module per sub-command (``reconstruct``, ``serve``, ``stream``, ``eval``), each with
``register(subparsers)`` and ``run(args)``; ``main`` imports only the command that runs."""

if __name__ != "spann3r.cli":  # imported as a top-level folder, e.g. from the repository root
    raise ImportError(
        f"import spann3r.cli instead of {__name__!r}: the folder is that package, and importing it "
        "by its folder name would load a second copy of every class"
    )
