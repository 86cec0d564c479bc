"""Spann3R live: real-time incremental 3D reconstruction as a service.

The product's top-level folders are this package's sub-packages (``spann3r/`` holds links to them, so every
tool — interpreter, tests, type checker, editor, the installed wheel — resolves ``spann3r.*`` the same way):

- ``spann3r.core``: model, spatial memory, streaming engine, geometry, weights, exports (``core/``; no web code)
- ``spann3r.server``: FastAPI app, protocol, sessions, worker, settings, metrics (``server/``)
- ``spann3r.client``: the Python streaming client (``client_py/``; needs no torch)
- ``spann3r.cli``: the ``spann3r`` command (``cli/``)
"""
