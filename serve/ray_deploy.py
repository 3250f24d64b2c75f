"""`lantern serve --ray --replicas N`: the same ASGI app as a Ray Serve deployment.

Each replica is a Ray actor that builds its own app (create_app, so its own engine, KV pool
and engine thread); Ray Serve's HTTP proxy spreads requests over the replicas. Needs the
`ray` extra: pip install 'lanternlm[ray]'.

    from lanternlm.serve.ray_deploy import deployment
    serve.run(deployment(path, {"parallel": 8}, replicas=2), route_prefix="/")
"""
from __future__ import annotations

import sys
import time
from typing import Any, Mapping


def build_app(path: str, options: Mapping[str, Any]):
    """Run on each replica: the app for the model at `path` (a file the replicas can read)."""
    from .app import create_app

    return create_app(path, **options)


def deployment(path: str, options: Mapping[str, Any], replicas: int = 1, cpus_per_replica: float = 0):
    """A bound Ray Serve application of `replicas` replicas serving `path` with create_app's
    `options`. cpus_per_replica: the CPUs Ray reserves for each (0: none, so that replicas fit
    on a small machine; the engine uses `threads` cores whatever Ray reserves)."""
    try:
        from ray import serve
    except ImportError:
        raise RuntimeError("--ray needs Ray Serve: pip install 'lanternlm[ray]'") from None

    path, options = str(path), dict(options)

    def builder():     # Ray Serve calls a zero-argument builder on each replica
        return build_app(path, options)

    @serve.ingress(builder)
    class LanternServer:
        """One replica: Ray Serve hands its HTTP requests to the app built above."""

    return serve.deployment(LanternServer, name="lantern", num_replicas=replicas,
                            ray_actor_options={"num_cpus": cpus_per_replica}).bind()


def serve_with_ray(path: str, options: Mapping[str, Any], host: str, port: int, replicas: int) -> int:
    """Start a local Ray instance (or join RAY_ADDRESS), deploy, and serve until Ctrl-C."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise RuntimeError("--ray needs Ray Serve: pip install 'lanternlm[ray]'") from None
    ray.init(ignore_reinit_error=True, include_dashboard=False)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(deployment(path, options, replicas), name="lantern", route_prefix="/")
        print(f"lantern: serving on http://{host}:{port}/v1 with Ray Serve, {replicas} replica(s)",
              file=sys.stderr)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        serve.shutdown()
        ray.shutdown()
