"""`darkroom run | validate | schema | replay | submit | status | logs`: batch jobs from the
command line.

Importing this module is cheap (the CLI builds every subcommand at start-up); Ray, torch and
the pipeline are imported by the handlers that need them.
"""

from __future__ import annotations

import argparse
import json

ADDRESS_HELP = "Ray dashboard address, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS " \
               "or $RAY_ADDRESS)"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `run`, `validate`, `schema`, `replay`, `submit`, `status` and `logs` to `darkroom`."""
    run = subparsers.add_parser("run", help="run a job file on local Ray (or $RAY_ADDRESS)")
    _job_arguments(run)
    run.add_argument("--dry-run", action="store_true", help="print the plan, generate nothing")
    run.add_argument("--no-eval", action="store_true", help="skip the job's eval: section")
    run.add_argument("--no-table", action="store_true",
                     help="evaluate and log, but print no ranked table (`darkroom compare` "
                          "follows, as in `make demo`)")
    run.set_defaults(handler=_run)

    validate = subparsers.add_parser("validate", help="check a job file (no Ray, no models)")
    _job_arguments(validate)
    validate.set_defaults(handler=_validate)

    gate = subparsers.add_parser(
        "gate", help="judge runtime options: the job with and without them, speed-up beside "
        "image fidelity and metric changes; exit 1 when a tolerance is exceeded")
    _job_arguments(gate)
    gate.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="a runtime override of the candidate arm (repeatable)")
    gate.add_argument("--tolerance", action="append", default=[], metavar="NAME=VALUE",
                      help="min_speedup, min_psnr, min_ssim, or a metric key and how much it "
                      "may get worse, e.g. class_accuracy=0.01 (repeatable)")
    gate.set_defaults(handler=_gate)

    schema = subparsers.add_parser("schema", help="print the JSON Schema of job files")
    schema.set_defaults(handler=_schema)

    submit = subparsers.add_parser("submit", help="send a job file to a Ray cluster (Jobs API)")
    _job_arguments(submit)
    submit.add_argument("--address", help=ADDRESS_HELP)
    submit.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable for the job on the cluster (repeatable)")
    submit.add_argument("--ship-package", action="store_true",
                        help="upload this checkout's darkroom package with the job (for clusters "
                             "whose image lacks it or has an older one)")
    submit.add_argument("--wait", action="store_true",
                        help="follow the job's logs until it ends; exit with its outcome")
    submit.set_defaults(handler=_submit)

    replay = subparsers.add_parser(
        "replay", help="make one row's image again from its provenance and compare",
        description="Regenerate one image from the provenance in its row (seed, prompt, "
        "settings; model and sampler from run.json; runtime from job.yaml) and report the "
        "largest pixel difference from the stored image. Exit code 0 when it is within the "
        "tolerance, 1 when not.")
    replay.add_argument("location", help="a job folder (OUTPUT/<name>) or a run folder in it; "
                        "a path or a URI (s3://bucket/outputs/name)")
    replay.add_argument("row_id", help="<run_id>/<prompt_id>/<sample_idx>")
    replay.add_argument("--device", help="run the model here (default: the job's runtime)")
    replay.add_argument("--tolerance", type=int, default=1, metavar="N",
                        help="pixel difference (out of 255) still counted the same; default 1")
    replay.add_argument("--save", metavar="PNG", help="also write the regenerated image here")
    replay.set_defaults(handler=_replay)

    status = subparsers.add_parser("status", help="status of a submitted job")
    status.add_argument("job_id")
    status.add_argument("--address", help=ADDRESS_HELP)
    status.set_defaults(handler=_status)

    logs = subparsers.add_parser("logs", help="logs of a submitted job")
    logs.add_argument("job_id")
    logs.add_argument("--address", help=ADDRESS_HELP)
    logs.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
    logs.set_defaults(handler=_logs)


def _job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="job file (YAML)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="override a field, e.g. sweep.steps=[2,4] prompts.limit=8")
    _intermixed(parser)


def _intermixed(parser: argparse.ArgumentParser) -> None:
    """Let KEY=VALUE overrides come after options too (`submit JOB --address X output=/data`).

    The parent parser calls the subcommand's `parse_known_args`, which takes positionals only in
    one run; argparse's intermixed parsing takes them anywhere (and calls `parse_known_args`
    itself, hence the class's own method while it runs).
    """

    def parse(args=None, namespace=None):
        del parser.parse_known_args
        try:
            return parser.parse_known_intermixed_args(args, namespace)
        finally:
            parser.parse_known_args = parse  # type: ignore[method-assign]

    parser.parse_known_args = parse  # type: ignore[method-assign]


def _run(args: argparse.Namespace) -> int:
    from darkroom.jobs.jobfile import load
    from darkroom.jobs.pipeline import run_job
    from darkroom.platform import console

    # the workers read and check the prompt file whole; here only its first rows
    spec = load(args.job, args.overrides, deep=False)
    result = run_job(spec, dry_run=args.dry_run, evaluate=not args.no_eval,
                     log=console.current().log)
    if result.metrics and not args.no_table:
        _print_evaluation(result.metrics, spec.tracking.experiment or spec.name,
                          spec.tracking.uri)
    return 0


def _print_evaluation(results: list[dict], experiment: str, uri: str | None) -> None:
    """The evaluation's ranked table, missing metrics and warnings, as `darkroom compare`
    shows them; the job is done either way, so a store that cannot be read back is a note."""
    from darkroom.evals.reporting.compare import evaluation_report

    try:
        print(evaluation_report(results, experiment, uri))
    except Exception as err:  # the metrics are logged; only showing them failed
        print(f"note: the evaluation is logged, but reading it back from MLflow failed "
              f"({type(err).__name__}: {err}); see `darkroom compare --experiment {experiment}`")


def _validate(args: argparse.Namespace) -> int:
    from darkroom.jobs.jobfile import load
    from darkroom.jobs.plan import describe, expand
    from darkroom.jobs.prompts import load_prompts

    spec = load(args.job, args.overrides)
    print(f"{args.job}: ok")
    print(describe(spec, expand(spec), len(load_prompts(spec.prompts))))
    return 0


def _gate(args: argparse.Namespace) -> int:
    from darkroom.jobs.gate import gate_settings, run_gate
    from darkroom.jobs.jobfile import load

    spec = load(args.job, args.overrides)
    options, gate = gate_settings(spec, args.option, args.tolerance)
    result = run_gate(spec, options, gate)
    return 1 if result.failures else 0


def _schema(args: argparse.Namespace) -> int:
    from darkroom.jobs.spec import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _submit(args: argparse.Namespace) -> int:
    from darkroom.jobs.submit import follow, submit

    job_id, client = submit(args.job, args.overrides, args.address, env=args.env,
                            ship_package=args.ship_package)
    print(f"submitted {job_id}")
    if not args.wait:
        print(f"follow it with: darkroom logs {job_id} --follow --address {client.get_address()}")
        return 0
    return follow(client, job_id)


def _replay(args: argparse.Namespace) -> int:
    from darkroom.jobs.replay import replay
    from darkroom.platform.data import storage
    from darkroom.platform.data.records import encode_png
    from darkroom.platform.errors import UserError

    problem = storage.check(args.location)
    if problem:
        raise UserError(f"LOCATION: {problem}")
    if not 0 <= args.tolerance <= 255:
        raise UserError(f"--tolerance is a pixel difference out of 255: 0..255, got "
                        f"{args.tolerance}")
    found = replay(args.location, args.row_id, args.device)
    if args.save:
        storage.write_bytes(storage.location(args.save), encode_png(found.image))
    print(found.report(args.tolerance))
    return 0 if found.max_difference <= args.tolerance else 1


def _status(args: argparse.Namespace) -> int:
    from darkroom.jobs.submit import client_for, job_info

    client = client_for(args.address)
    info = job_info(client, args.job_id)
    print(f"{args.job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""))
    return 0


def _logs(args: argparse.Namespace) -> int:
    from darkroom.jobs.submit import client_for, follow, job_info

    client = client_for(args.address)
    job_info(client, args.job_id)  # an unknown id fails here, clearly
    if args.follow:
        return follow(client, args.job_id)
    print(client.get_job_logs(args.job_id), end="")
    return 0
