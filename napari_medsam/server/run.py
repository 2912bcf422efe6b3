"""Start and stop the server: join or start a Ray cluster, start Serve, deploy the encoder."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .encoder import ServerConfig

logger = logging.getLogger(__name__)

#: ``--address`` that means: join the Ray cluster this machine belongs to, or start one.
AUTO_ADDRESS = "auto"
#: ``--address`` that means: start a private Ray instance on this machine.
LOCAL_ADDRESS = "local"


@dataclass
class RunningServer:
    """A deployed server and whether this process started its Ray instance."""

    url: str
    started_ray: bool

    def stop(self) -> None:
        """Remove the deployment (and the Ray instance when this process started it)."""
        import ray
        from ray import serve

        from .app import APP_NAME

        try:
            serve.delete(APP_NAME)
            if self.started_ray:
                serve.shutdown()
        finally:
            if self.started_ray:
                ray.shutdown()


def start_server(config: ServerConfig, *, address: str = AUTO_ADDRESS,
                 host: str = "127.0.0.1", port: int = 8000, replicas: int | str = 1,
                 num_cpus: int | None = None) -> RunningServer:
    """Deploy the encoder and return once every replica has loaded the model.

    Parameters
    ----------
    address
        ``auto``: the Ray cluster this machine is part of (``ray start``), else a new local
        one; ``local``: always a new local one (bound to 127.0.0.1, no dashboard); or
        ``ray://HOST:PORT`` / ``HOST:PORT``.
    host, port
        Where Serve's HTTP proxy listens.
    num_cpus
        CPUs of a new local Ray instance (default: all).
    """
    import ray
    from ray import serve

    from .app import APP_NAME, build_app

    started = False
    if not ray.is_initialized():
        if address == AUTO_ADDRESS:
            try:
                ray.init(address="auto", log_to_driver=False)
            except ConnectionError:  # no cluster here: a local one, on this machine only
                address = LOCAL_ADDRESS
        if address == LOCAL_ADDRESS:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                     log_to_driver=False, _node_ip_address="127.0.0.1")
            started = True
        elif address != AUTO_ADDRESS:
            ray.init(address=address, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    serve.run(build_app(config, replicas, gpus), name=APP_NAME, route_prefix="/")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return RunningServer(url=f"http://{shown}:{port}", started_ray=started)
