"""`darkroom serve SERVE.yaml`: start the online endpoint on a private local Ray (or RAY_ADDRESS).

Without RAY_ADDRESS it starts its own local Ray and Serve, and stops both on exit. With
RAY_ADDRESS it deploys into that cluster's Serve and, on exit, deletes only its own application.
On SIGINT or SIGTERM it first drains: the ingress answers new requests 503 and waits up to the
serve file's `drain_timeout_s` for those in flight. Exit is bounded: a signal to the process or
its whole group ends it within `STOP_SECONDS` even when the signal also took down the local Ray
it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from darkroom.serve.spec import ServeSpec

STOP_SECONDS = 18  # drain and clean-up together; then the process exits regardless
ACK_SECONDS = 2  # how long the stop signal may take to be acknowledged (Ray may be gone)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `serve SERVE.yaml [--dry-run]` to the `darkroom` command."""
    serve = subparsers.add_parser(
        "serve", help="serve a model over HTTP (OpenAI Images API) on Ray Serve"
    )
    serve.add_argument("file", metavar="SERVE.yaml", help="serve file (configs/serve/*.yaml)")
    serve.add_argument(
        "--dry-run", action="store_true", help="check the file and print the plan; start nothing"
    )
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from darkroom.platform.models.names import resolve_source
    from darkroom.serve.spec import api_key_digest, load_spec

    spec = load_spec(args.file)
    api_key_digest(spec)  # the key's variable must be set before anything starts
    attached = bool(os.environ.get("RAY_ADDRESS"))
    if not attached:  # the replicas will see this machine's files: check the model's name now
        resolve_source(spec.model.model)
    scaling = spec.autoscaling
    print(
        f"{spec.name}: {spec.model_id}, {scaling.min_replicas}-{scaling.max_replicas} replica(s), "
        f"batches of up to {spec.batching.max_batch_size}, safety "
        f"{spec.safety.checker if spec.safety.on else 'off'}, "
        f"{'API key ' + spec.auth.api_key_env if spec.auth else 'no API key'}"
    )
    if args.dry_run:
        print(f"would serve at {_url(spec.http.host, spec.http.port, spec.http.route_prefix)}/v1")
        return 0
    if not attached:
        _check_port_free(spec.http.host, spec.http.port)

    from ray import serve

    from darkroom.platform.cluster import connect_ray
    from darkroom.serve.app import application
    from darkroom.serve.guards import StopSignal

    connect_ray(log_to_driver=False)
    if attached:
        _check_name_free(spec.name)
    stop = StopSignal.remote()  # owned by this process: it goes when the process goes
    app = application(spec, stop)
    # SIGTERM (a supervisor, `kill`) stops it like Ctrl-C; SIGINT is restored for shells that
    # start background jobs with it ignored
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    try:
        if not attached:
            serve.start(http_options={"host": spec.http.host, "port": spec.http.port})
        serve.run(app, name=spec.name, route_prefix=spec.http.route_prefix)
        host, port = _proxy_address()
        print(f"serving at {_url(host, port, spec.http.route_prefix)}/v1 (API docs: "
              f"{_url(host, port, spec.http.route_prefix)}/docs); Ctrl-C "
              f"{'removes the app' if attached else 'stops it'}", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        _stop(spec, stop, attached)
    return 0


def _url(host: str, port: int, route_prefix: str) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}{route_prefix.rstrip('/')}"


def _proxy_address() -> tuple[str, int]:
    """Where Serve's HTTP proxy really listens (a joined cluster keeps its own host and port)."""
    from ray.serve.context import _get_global_client

    config = _get_global_client().http_config
    return config.host, config.port


def _check_port_free(host: str, port: int) -> None:
    from darkroom.platform.errors import UserError

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UserError(f"port {port} on {host} is in use ({err.strerror}); stop what holds "
                            "it or set `http.port` in the serve file") from err


def _check_name_free(name: str) -> None:
    """On a shared cluster, never take over (and later delete) another application."""
    from ray import serve

    from darkroom.platform.errors import UserError

    if name in serve.status().applications:
        raise UserError(f"the cluster already runs a Serve application named {name!r}; set "
                        "`name` in the serve file to another one (a leftover of an earlier run "
                        f"goes with `ray.serve.delete({name!r})` on the cluster)")


def _stop(spec: ServeSpec, stop: Any, attached: bool) -> None:
    """Drain, then delete our application (or, when the Ray is our own, stop that Ray), within
    `STOP_SECONDS` in all.

    A SIGTERM sent to the whole process group also ends the local Ray's processes, after which
    Ray's calls would wait for them forever: past the budget the process just exits.
    """

    def clean_up() -> None:
        import ray
        from ray import serve

        _drain(stop, spec.ingress.replicas, spec.drain_timeout_s)
        if attached:
            serve.delete(spec.name)  # only ever our own application on a shared cluster
        else:
            # Our own Ray, Serve's proxy with it, goes at once: deleting the app first would
            # leave the proxy answering a plain 404 for the app's routes until it stopped
            ray.shutdown()

    for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut it short
        signal.signal(sig, signal.SIG_IGN)
    worker = threading.Thread(target=clean_up, daemon=True)
    worker.start()
    worker.join(STOP_SECONDS)
    if worker.is_alive():
        print(f"clean-up did not finish in {STOP_SECONDS} s (Ray's processes already gone?); "
              "exiting", flush=True)
        os._exit(0)


def _drain(stop: Any, replicas: int, seconds: float) -> None:
    """Have every ingress replica refuse new requests (503) and finish those in flight."""
    import ray

    started = time.monotonic()
    print(f"draining: new requests get 503; waiting up to {seconds:g} s for those in flight",
          flush=True)
    try:
        ray.get(stop.start.remote(seconds), timeout=ACK_SECONDS)
        # each replica reports once drained; those still in flight at its deadline got a 503
        drained = ray.get(stop.wait_drained.remote(replicas, seconds + ACK_SECONDS),
                          timeout=seconds + 2 * ACK_SECONDS)
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError) as err:
        print(f"could not drain ({type(err).__name__}); removing the app", flush=True)
        return
    left = sum(drained.values())
    print(f"drained {len(drained)} of {replicas} ingress replica(s) in "
          f"{time.monotonic() - started:.1f} s"
          + (f"; {left} request(s) still in flight were answered 503" if left else ""),
          flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
