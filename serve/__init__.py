"""`lantern serve`: an OpenAI-compatible HTTP server over the continuous-batching engine.

    from lanternlm.serve import create_app
    app = create_app("smollm2-135m-instruct", parallel=8)    # an ASGI app (Starlette)

app.py holds the routes, protocol.py the request checks and errors, metrics.py /metrics,
cli.py the command, ray_deploy.py the Ray Serve deployment (`lantern serve --ray`).
"""
from .app import create_app

__all__ = ["create_app"]
