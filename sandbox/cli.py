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
    if report.get("utility"):
        lines.append(f"holdout accuracy: {report['utility']['released_accuracy']:.4f}")
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
    from sandbox.demo import EXAMPLE_ALGORITHM, write_digits

    out = args.out or Path(tempfile.mkdtemp(prefix="sandbox-demo-")) / "out"
    with tempfile.TemporaryDirectory(prefix="sandbox-demo-data-") as tmp:
        dataset = write_digits(Path(tmp) / "digits.npz")
        report = _run_job(EXAMPLE_ALGORITHM, dataset, args.policy, out, None, not args.json)
    print(json.dumps(report, indent=2) if args.json else _summary(report, out))
    return 0 if report["decision"] != "rejected" else JobRejected.exit_code


def cmd_policy_test(args: argparse.Namespace) -> int:
    from sandbox.policy.load import load_policy
    from sandbox.redteam.scorecard import run_scorecard
    from sandbox.runner.backend import docker_backend

    policy = load_policy(args.policy)
    show = _tty() and not args.json
    say = _progress(show)
    runner, image = docker_backend(policy.runtime, log=lambda line: say("image", line))
    card = run_scorecard(
        policy, runner, image, budget=args.budget, progress=lambda m: say("scorecard", m)
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
    return parser


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
