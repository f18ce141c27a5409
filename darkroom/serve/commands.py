"""`darkroom serve SERVE.yaml`: start the online endpoint on local Ray (or RAY_ADDRESS)."""

from __future__ import annotations

import argparse
import os
import signal
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve", help="serve a model over HTTP (OpenAI Images API) on Ray Serve"
    )
    serve.add_argument("file", metavar="SERVE.yaml", help="serve file (configs/serve/*.yaml)")
    serve.add_argument(
        "--dry-run", action="store_true", help="check the file and print the plan; start nothing"
    )
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from darkroom.platform.sources import resolve_source
    from darkroom.serve.spec import api_key_digest, load_spec

    spec = load_spec(args.file)
    api_key_digest(spec)  # the key's variable must be set before anything starts
    attached = bool(os.environ.get("RAY_ADDRESS"))
    if not attached:  # the replicas will see this machine's files: check the model's name now
        resolve_source(spec.model.model)
    url = f"http://{spec.http.host}:{spec.http.port}{spec.http.route_prefix.rstrip('/')}"
    scaling = spec.autoscaling
    print(
        f"{spec.name}: {spec.model_id}, {scaling.min_replicas}-{scaling.max_replicas} replica(s), "
        f"batches of up to {spec.batching.max_batch_size}, safety "
        f"{spec.safety.checker if spec.safety.on else 'off'}, "
        f"{'API key ' + spec.auth.api_key_env if spec.auth else 'no API key'}"
    )
    if args.dry_run:
        print(f"would serve at {url}/v1")
        return 0

    import ray
    from ray import serve

    from darkroom.serve.app import application

    app = application(spec)
    ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    serve.start(http_options={"host": spec.http.host, "port": spec.http.port})
    # SIGTERM (a supervisor, `kill`) stops it like Ctrl-C; SIGINT is restored for shells that
    # start background jobs with it ignored
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    try:
        serve.run(app, name=spec.name, route_prefix=spec.http.route_prefix)
        if attached:  # a cluster's running Serve keeps its own HTTP host and port
            print(f"serving at route {spec.http.route_prefix} of the Serve proxy of "
                  f"{os.environ['RAY_ADDRESS']}; Ctrl-C removes the app", flush=True)
        else:
            print(f"serving at {url}/v1 (API docs: {url}/docs); Ctrl-C stops it", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        serve.delete(spec.name)
        if not attached:
            serve.shutdown()
            ray.shutdown()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
