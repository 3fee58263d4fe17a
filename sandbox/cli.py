"""The `sandbox` command: parses arguments, calls the pipeline, prints. Nothing else.

Exit codes come from the error catalog (sandbox.errors); `--json` prints one JSON
document on stdout and keeps progress off it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sandbox.errors import JobRejected, SandboxError, VerificationFailed, classify


def _progress(enabled: bool) -> Callable[[str, str], None]:
    start = time.monotonic()

    def show(step: str, message: str) -> None:
        if enabled:
            sys.stderr.write(f"[{time.monotonic() - start:6.1f}s] {step}: {message}\n")
            sys.stderr.flush()

    return show


def _run_job(
    algorithm: Path, dataset: Path, policy_name: str, out: Path, holdout: Path | None, show: bool
) -> dict[str, Any]:
    from sandbox.pipeline.local import run_with_docker
    from sandbox.policy.load import load_policy

    policy = load_policy(policy_name)
    report = run_with_docker(
        algorithm, dataset, policy, out, holdout=holdout, progress=_progress(show)
    )
    return json.loads(report.to_json())  # type: ignore[no-any-return]


def _summary(report: dict[str, Any], out: Path) -> str:
    lines = [f"decision: {report['decision']}"]
    lines += [f"  - {reason}" for reason in report["reasons"]]
    released = (report.get("utility") or {}).get("released_accuracy")
    if released is not None:
        lines.append(f"holdout accuracy: {released:.4f}")
    if report.get("model"):
        lines.append(f"model: {out / 'model.safetensors'} sha256 {report['model']['sha256']}")
    lines.append(f"report: {out / 'report.json'} (container logs: {out / 'owner' / 'logs.txt'})")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    report = _run_job(
        args.algorithm, args.dataset, args.policy, args.out, args.holdout, _tty() and not args.json
    )
    print(json.dumps(report, indent=2) if args.json else _summary(report, args.out))
    if report["decision"] == "rejected":
        return JobRejected.exit_code
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from sandbox.client.demo import run_demo

    out = args.out or Path(tempfile.mkdtemp(prefix="sandbox-demo-")) / "out"
    result = run_demo(args.policy, out, show=_tty() and not args.json)
    print(json.dumps(result, indent=2) if args.json else _demo_summary(result))
    return 0 if result["decision"] != "rejected" else JobRejected.exit_code


def _demo_summary(result: dict[str, Any]) -> str:
    lines = [f"job {result['job_id']}: decision {result['decision']}"]
    lines += [f"  - {reason}" for reason in result.get("reasons", [])]
    if result.get("accuracy") is not None:
        lines.append(f"holdout accuracy: {result['accuracy']:.4f}")
    if result.get("model_sha256"):
        verified = "verified" if result["verified"] else "NOT verified"
        lines.append(
            f"model sha256 {result['model_sha256']} ({verified} against the release record)"
        )
    lines.append(f"results: {result['out']}")
    return "\n".join(lines)


# ------------------------------------------------------------------ server and client


def cmd_init(args: argparse.Namespace) -> int:
    from sandbox.service.state import default_state_dir, init_state, parse_party

    state = args.dir or default_state_dir()
    parties = [parse_party(spec) for spec in args.party]
    configs = init_state(state, parties, args.address)
    result = {"state": str(state), "configs": {name: str(p) for name, p in configs.items()}}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"state directory {state} (CA, server certificate, master key, signing key)")
        for name, path in configs.items():
            print(f"  {name}: {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from sandbox.server import serve_forever
    from sandbox.service.state import default_state_dir

    serve_forever(args.state or default_state_dir(), args.address)
    return 0


def _client(args: argparse.Namespace) -> Any:
    from sandbox.client.config import find_config
    from sandbox.client.connection import Client
    from sandbox.service.state import default_state_dir

    config = find_config(args.config, args.state or default_state_dir())
    return Client(config, progress=_tty() and not args.json)


def cmd_client(args: argparse.Namespace) -> int:
    from sandbox.client import commands

    show = _tty() and not args.json
    with _client(args) as client:
        action = args.action
        if action == "dataset upload":
            result, text = commands.dataset_upload(client, args.file, args.name)
        elif action == "algorithm upload":
            result, text = commands.algorithm_upload(client, args.path)
        elif action == "algorithm approve":
            result, text = commands.algorithm_approve(client, args.algorithm, args.dataset)
        elif action == "job submit":
            result, text = commands.job_submit(client, args.dataset, args.algorithm, args.policy)
        elif action == "job show":
            result, text = commands.job_show(client, args.job)
        elif action == "job list":
            result, text = commands.job_list(client, args.page_size, args.page_token)
        elif action == "job watch":
            result, text = commands.job_watch(client, args.job, show)
        elif action == "job cancel":
            result, text = commands.job_cancel(client, args.job)
        elif action == "job approve":
            result, text = commands.job_approve(client, args.job, args.deny)
        elif action == "job report":
            result, text = commands.job_report(client, args.job, args.out)
        elif action == "report":
            result, text = commands.report_html(client, args.job, args.html)
        elif action == "model download":
            result, text = commands.model_download(client, args.job, args.out)
        else:  # pragma: no cover - argparse only sets the actions above
            raise AssertionError(action)
    print(json.dumps(result, indent=2) if args.json else text)
    if action == "job watch":
        return commands.exit_code_for(result)
    return 0


def cmd_policy_test(args: argparse.Namespace) -> int:
    from sandbox.policy.load import load_policy
    from sandbox.redteam.scorecard import run_scorecard
    from sandbox.runner.backend import docker_backend

    policy = load_policy(args.policy)
    show = _tty() and not args.json
    say = _progress(show)
    runner, image = docker_backend(policy.runtime, log=lambda line: say("image", line))
    card = run_scorecard(
        policy,
        runner,
        image,
        budget=args.budget,
        progress=lambda m: say("scorecard", m),
        weights=not args.no_weights,
    )
    print(json.dumps(card.to_dict(), indent=2) if args.json else card.table())
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    from sandbox.policy.load import available_policies, load_policy, policy_hash

    if args.policy_command == "list":
        names = available_policies()
        print(json.dumps(names) if args.json else "\n".join(names))
        return 0
    try:
        policy = load_policy(args.name)
    except SandboxError as error:
        if args.policy_command != "validate" or not args.json:
            raise
        problems = getattr(error, "problems", [error.message])
        print(json.dumps({"valid": False, "problems": problems}))
        return classify(error).exit_code
    if args.policy_command == "validate":
        result = {"valid": True, "name": policy.name, "sha256": policy_hash(policy)}
        print(json.dumps(result) if args.json else f"{args.name}: valid (policy {policy.name})")
        return 0
    print(json.dumps(policy.model_dump(mode="json"), indent=2))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from sandbox.audit import default_public_key, load_public_key, read_envelope, verify_attestation

    key = load_public_key(args.key) if args.key else default_public_key()
    expected_policy = None
    if args.policy:
        from sandbox.policy.load import load_policy, policy_hash

        expected_policy = policy_hash(load_policy(args.policy))
    check = verify_attestation(read_envelope(args.attestation), key, args.model, expected_policy)
    print(json.dumps(check.to_dict(), indent=2) if args.json else check.summary())
    return 0 if check.ok else VerificationFailed.exit_code


def cmd_audit(args: argparse.Namespace) -> int:
    from sandbox.audit import LogHead, load_public_key, verify_log

    anchor = LogHead.parse(args.anchor) if args.anchor else None
    result = verify_log(args.log, load_public_key(args.key), anchor=anchor)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.summary())
    return 0 if result.ok else VerificationFailed.exit_code


def cmd_key(args: argparse.Namespace) -> int:
    from sandbox.audit import default_public_key, public_key_pem

    sys.stdout.write(public_key_pem(default_public_key()).decode())
    return 0


def _tty() -> bool:
    return sys.stderr.isatty()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole pipeline locally (no server)")
    run.add_argument("algorithm", type=Path, help="algorithm package: directory or .tar.gz")
    run.add_argument("dataset", type=Path, help="dataset .npz holding x (float32) and y (int64)")
    run.add_argument("--policy", default="default", help="policy name or YAML file")
    run.add_argument("--out", type=Path, required=True, help="new directory for the results")
    run.add_argument("--holdout", type=Path, help="private holdout .npz instead of a split")
    run.add_argument("--json", action="store_true", help="print report.json on stdout")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="end-to-end demo on scikit-learn's digits")
    demo.add_argument("--policy", default="default")
    demo.add_argument("--out", type=Path, help="keep the results here (default: temporary)")
    demo.add_argument("--json", action="store_true")
    demo.set_defaults(func=cmd_demo)

    pol = sub.add_parser("policy", help="list, show or validate policies")
    pol_sub = pol.add_subparsers(dest="policy_command", required=True)
    pol_sub.add_parser("list", help="names of the available policies").add_argument(
        "--json", action="store_true"
    )
    show = pol_sub.add_parser("show", help="print the effective policy")
    show.add_argument("name")
    test = pol_sub.add_parser("test", help="run the red-team scorecard against a policy")
    test.add_argument("--policy", default="default", help="policy name or YAML file")
    test.add_argument("--budget", choices=["small", "full"], default="small")
    test.add_argument(
        "--no-weights",
        action="store_true",
        help="skip the weight and membership attacks (each a whole pipeline job): isolation "
        "and smuggling only",
    )
    test.add_argument("--json", action="store_true")
    test.set_defaults(func=cmd_policy_test)
    validate = pol_sub.add_parser("validate", help="check a policy file; lists every problem")
    validate.add_argument("name", help="policy name or YAML file")
    validate.add_argument("--json", action="store_true")
    pol.set_defaults(func=cmd_policy, json=False)

    ver = sub.add_parser("verify", help="check a release attestation: signature, model, policy")
    ver.add_argument("attestation", type=Path, help="attestation.json (a DSSE envelope)")
    ver.add_argument(
        "--model", type=Path, help="the model file; its sha256 must be the attested one"
    )
    ver.add_argument("--key", type=Path, help="the platform's public key (PEM); default: local key")
    ver.add_argument("--policy", help="policy name or YAML file the release must have used")
    ver.add_argument("--json", action="store_true", help="print the findings as JSON")
    ver.set_defaults(func=cmd_verify)

    key = sub.add_parser("key", help="the platform's signing key")
    key_sub = key.add_subparsers(dest="key_command", required=True)
    key_sub.add_parser("public", help="print the public key (PEM) that verifies attestations")
    key.set_defaults(func=cmd_key)

    audit = sub.add_parser("audit", help="audit log tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    audit_verify = audit_sub.add_parser("verify", help="check a log's hash chain and signatures")
    audit_verify.add_argument("log", type=Path, help="the audit log (JSON Lines)")
    audit_verify.add_argument("--key", type=Path, required=True, help="public key (PEM)")
    audit_verify.add_argument(
        "--anchor", help="SEQ:HASH of an entry the log must still hold (e.g. from an attestation)"
    )
    audit_verify.add_argument("--json", action="store_true", help="print the result as JSON")
    audit_verify.set_defaults(func=cmd_audit)
    _add_server_commands(sub)
    return parser


def _add_server_commands(sub: Any) -> None:
    init = sub.add_parser("init", help="create a server state directory and party certificates")
    init.add_argument("--dir", type=Path, help="state directory (default: $SANDBOX_STATE)")
    init.add_argument(
        "--party",
        action="append",
        default=[],
        metavar="NAME:ROLE",
        help="a party and its role (data_owner, provider, operator, security); repeatable",
    )
    init.add_argument("--address", default="localhost:50443", help="written to client configs")
    init.add_argument("--json", action="store_true")
    init.set_defaults(func=cmd_init)

    serve = sub.add_parser("serve", help="run the gRPC server (mTLS)")
    serve.add_argument("--state", type=Path, help="state directory (default: $SANDBOX_STATE)")
    serve.add_argument("--address", default="localhost:50443", help="HOST:PORT to listen on")
    serve.set_defaults(func=cmd_serve)

    def client_parser(parent: Any, name: str, action: str, help_text: str) -> Any:
        command = parent.add_parser(name, help=help_text)
        command.add_argument("--config", type=Path, help="client config (default: $SANDBOX_CONFIG)")
        command.add_argument("--state", type=Path, help=argparse.SUPPRESS)
        command.add_argument("--json", action="store_true", help="print JSON on stdout")
        command.set_defaults(func=cmd_client, action=action)
        return command

    dataset = sub.add_parser("dataset", help="datasets on the server").add_subparsers(
        dest="dataset_command", required=True
    )
    upload = client_parser(dataset, "upload", "dataset upload", "upload a dataset (.npz)")
    upload.add_argument("file", type=Path)
    upload.add_argument("--name", required=True)

    algorithm = sub.add_parser("algorithm", help="algorithms on the server").add_subparsers(
        dest="algorithm_command", required=True
    )
    alg_upload = client_parser(
        algorithm, "upload", "algorithm upload", "upload an algorithm (directory or .tar.gz)"
    )
    alg_upload.add_argument("path", type=Path)
    alg_approve = client_parser(
        algorithm,
        "approve",
        "algorithm approve",
        "data owner: approve every job of an algorithm on your dataset",
    )
    alg_approve.add_argument("algorithm")
    alg_approve.add_argument("--dataset", required=True)

    job = sub.add_parser("job", help="jobs on the server").add_subparsers(
        dest="job_command", required=True
    )
    submit = client_parser(job, "submit", "job submit", "submit a job")
    submit.add_argument("--dataset", required=True)
    submit.add_argument("--algorithm", required=True)
    submit.add_argument("--policy", default="default")
    for name, help_text in (
        ("show", "show a job"),
        ("watch", "follow a job until it ends"),
        ("cancel", "cancel a job"),
    ):
        client_parser(job, name, f"job {name}", help_text).add_argument("job")
    approve = client_parser(job, "approve", "job approve", "approve (or --deny) a job")
    approve.add_argument("job")
    approve.add_argument("--deny", action="store_true")
    listing = client_parser(job, "list", "job list", "list your jobs")
    listing.add_argument("--page-size", type=int, default=50)
    listing.add_argument("--page-token", default="")
    report = client_parser(job, "report", "job report", "a job's report (what you may see)")
    report.add_argument("job")
    report.add_argument("--out", type=Path, help="also write report, attestation, logs here")

    html = client_parser(
        sub, "report", "report", "data owner: a job's report as a self-contained HTML page"
    )
    html.add_argument("job")
    html.add_argument(
        "--html", type=Path, required=True, metavar="OUT", help="the page to write (.html)"
    )

    model = sub.add_parser("model", help="released models").add_subparsers(
        dest="model_command", required=True
    )
    download = client_parser(model, "download", "model download", "download a released model")
    download.add_argument("job")
    download.add_argument("--out", type=Path, required=True)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds `finally` blocks: containers and tmpfs are removed


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        code: int = args.func(args)
    except SandboxError as error:
        sys.stderr.write(f"sandbox: {error.message}\n")
        return classify(error).exit_code
    except KeyboardInterrupt:
        sys.stderr.write("sandbox: interrupted; containers and temporary files were removed\n")
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
