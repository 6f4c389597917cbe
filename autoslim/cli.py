"""The ``autoslim`` command line. Its command and flag names are a user contract.

Every user-facing problem (missing or malformed file, unknown component, layer, bit
width or objective) ends as one ``error: ...`` line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from autoslim.errors import AutoslimError
from autoslim.progress import showing_progress


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2, like every other bad input
        raise AutoslimError(f"{self.prog}: {message}")


def package_versions() -> dict[str, str]:
    out = {}
    for name in ("autoslim", "torch", "optuna"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def _format_value(value: object) -> str:
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value) and abs(value) >= 1000:
            return str(int(value))  # byte counts stay exact
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def print_table(
    rows: list[dict], columns: Sequence[str], labels: dict[str, str] | None = None
) -> None:
    labels = labels or {}
    header = [labels.get(c, c) for c in columns]
    cells = [[_format_value(r.get(c, "")) for c in columns] for r in rows]
    widths = [
        max(len(h), *(len(row[i]) for row in cells)) if cells else len(h)
        for i, h in enumerate(header)
    ]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def cmd_search(args: argparse.Namespace) -> int:
    from autoslim.searching.driver import Overrides, search

    run = search(
        args.experiment,
        out=args.out,
        overrides=Overrides(trials=args.trials, timeout=args.timeout, seed=args.seed),
        progress=not args.quiet,
        backend=args.backend,
        address=args.address,
        storage=args.storage,
    )
    print(f"run folder: {run.path}")
    status = _print_front(run, as_json=False)
    summary = run.path / "summary.json"
    for note in json.loads(summary.read_text()).get("notes", []) if summary.is_file() else []:
        print(f"note: {note}")
    return status


def _print_front(run, *, as_json: bool) -> int:
    from autoslim.results.report import latency_ratio_text, shipped_form_text
    from autoslim.searching.outputs import latency_interval

    front = run.front()
    names = list(run.objectives)
    if as_json:
        payload = {
            "objectives": run.objectives,
            "labels": run.labels,
            "baseline": {n: run.baseline[n] for n in names if n in run.baseline},
            "front": [
                {
                    "trial": int(r["trial"]),
                    "values": {n: float(r[n]) for n in names},
                    **latency_interval(r),
                    **_shipped_form(r),
                }
                for _, r in front.iterrows()
            ],
        }
        print(json.dumps(payload))
        return 0
    rows = [{"trial": "baseline", **run.baseline, "latency ×": "", "runs as": "eager torch fp32"}]
    rows += [
        {
            **r.to_dict(),
            "trial": int(r["trial"]),
            "latency ×": latency_ratio_text(r, run.baseline),
            "runs as": shipped_form_text(r),
        }
        for _, r in front.iterrows()
    ]
    extras = [c for c in ("latency_ms", "peak_memory_bytes", "energy_mj") if c not in names]
    extras.append("latency ×")
    if "deploy_form" in front:
        extras.append("runs as")
    print(f"Pareto front of {run.info['experiment']}: {len(front)} of {len(run.table())} trials")
    print_table(
        rows, ["trial", *names, *extras], labels={**run.labels, "energy_mj": _energy_label(run)}
    )
    return 0


def _shipped_form(row) -> dict:
    """The runtime, form and storage-only parts of a front point, where recorded."""
    if not isinstance(row.get("deploy_form"), str):
        return {}
    from autoslim.results.report import storage_only_parts

    return {
        "runtime": row.get("runtime"),
        "deploy_form": row["deploy_form"],
        "storage_only": storage_only_parts(row),
    }


def _energy_label(run) -> str:
    return f"energy_mj ({run.baseline.get('energy_source', 'estimated')})"


def cmd_pareto(args: argparse.Namespace) -> int:
    from autoslim.run import load_run

    run = load_run(args.run_dir)
    if args.format == "csv":
        run.front().to_csv(sys.stdout, index=False)
        return 0
    return _print_front(run, as_json=args.json or args.format == "json")


def cmd_export(args: argparse.Namespace) -> int:
    from autoslim.recipe import Provenance
    from autoslim.results.select import select_trial
    from autoslim.run import load_run
    from autoslim.searching.record import BASELINE_SHA_ATTR, TrialRecord

    if not args.bundle and len(args.trial) + len(args.select) != 1:
        raise AutoslimError("export needs one --trial or one --select (several: add --bundle)")
    run = load_run(args.run_dir)
    if args.bundle:
        return _export_bundle(run, args)
    number = (
        args.trial[0]
        if args.trial
        else select_trial(run.table(), run.objectives, run.baseline, args.select[0])
    )
    recipe = run.recipe(number)
    trial = next(t for t in run.study.get_trials(deepcopy=False) if t.number == number)
    measured = TrialRecord.from_trial(trial).measured or {}
    provenance = Provenance(
        experiment=run.info["experiment"],
        trial=number,
        seed=recipe.seed,
        versions=package_versions(),
        baseline_sha=run.study.user_attrs.get(BASELINE_SHA_ATTR),
        values={k: v for k, v in measured.items() if isinstance(v, (int, float))},
    )
    recipe.model_copy(update={"provenance": provenance}).save(args.output)
    print(f"exported trial {number} of {run.info['experiment']} to {args.output}")
    return 0


def _export_bundle(run, args: argparse.Namespace) -> int:
    from autoslim.bundle.from_run import bundle_run
    from autoslim.results.report import human_bytes

    manifest = bundle_run(
        run, args.output, trials=args.trial, rules=args.select, quiet=args.quiet, force=args.force
    )
    print(f"bundle of {len(manifest.points)} points written to {args.output}")
    for point in manifest.points:
        roles = f" ({', '.join(point.roles)})" if point.roles else ""
        print(f"  {point.name}{roles}: {human_bytes(point.bytes_alone)} alone")
    print(_bundle_bytes_line(manifest, human_bytes))
    return 0


def _bundle_bytes_line(manifest, human_bytes) -> str:
    saved, separate = manifest.bytes_saved, manifest.bytes_separate
    share = abs(saved) / separate if separate else 0.0
    verdict = (
        f"{human_bytes(saved)} ({share:.1%}) saved"
        if saved >= 0
        else f"{human_bytes(-saved)} ({share:.1%}) more: the points share too little to pay for its index"
    )
    shared = manifest.shared_tensors
    noun = "tensor" if shared == 1 else "tensors"
    return (
        f"{human_bytes(manifest.bytes_bundle)} on disk against {human_bytes(separate)} as "
        f"separate artifacts: {verdict}; {shared} {noun} stored once for several points"
    )


def _print_values(values: dict, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"values": values}))
        return
    source = values.get("energy_source", "estimated")
    for key, value in values.items():
        label = f"energy_mj ({source})" if key == "energy_mj" else key
        if key != "energy_source":
            print(f"{label:>24}  {_format_value(value)}")


def _warn_if_baseline_differs(recipe) -> None:
    """A recipe replays exactly only on the fp32 weights it was searched on; say so if not."""
    from autoslim.baseline import load_baseline
    from autoslim.task import load_task

    expected = recipe.provenance.baseline_sha if recipe.provenance else None
    if not expected:
        return
    actual = load_baseline(recipe.task, load_task(recipe.task)).weights_sha
    if actual != expected:
        print(
            f"warning: the fp32 baseline here ({actual}) is not the one the search used ({expected}); "
            "the artifact may differ from the searched values",
            file=sys.stderr,
        )


def cmd_apply(args: argparse.Namespace) -> int:
    from autoslim.artifact import check_output_folder, save_artifact
    from autoslim.measure import measure_in_subprocess
    from autoslim.pipeline import apply_recipe
    from autoslim.recipe import Recipe

    recipe = Recipe.load(args.recipe)
    check_output_folder(args.output, force=args.force)  # before minutes of fine-tuning, not after
    _warn_if_baseline_differs(recipe)
    with showing_progress(not args.quiet):
        model = apply_recipe(recipe)
    out = save_artifact(model, recipe, args.output, force=args.force)
    values = measure_in_subprocess(out, recipe.target, splits=("val", "test"))
    if not args.json:
        print(f"artifact written to {out}")
    _print_values(values, as_json=args.json)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from autoslim.artifact import is_artifact
    from autoslim.measure import measure_in_subprocess
    from autoslim.recipe import Recipe
    from autoslim.trust import require_trusted

    path = Path(args.artifact)
    if not is_artifact(path):
        raise AutoslimError(
            f"not an autoslim artifact (needs recipe.yaml and weights.safetensors): {path}"
        )
    recipe = Recipe.load(path / "recipe.yaml")
    require_trusted(recipe.task.entry)  # here, not in the measuring process it would start
    _print_values(
        measure_in_subprocess(path, recipe.target, splits=("val", "test")), as_json=args.json
    )
    return 0


def cmd_export_model(args: argparse.Namespace) -> int:
    from autoslim.deploy import export_model, integer_quantized

    written = export_model(
        args.artifact,
        args.output,
        format=args.format,
        quantize=args.quantize,
        calibration_batches=args.calibration_batches,
        force=args.force,
    )
    files, source = sum(f.stat().st_size for f in written.files), written.artifact_bytes
    print(f"wrote {', '.join(str(f) for f in written.files)} ({written.summary})")
    print(f"{files} bytes; artifact {source} bytes ({files / source:.2f}× the artifact)")
    if written.provenance.get("quantize") == "none" and integer_quantized(args.artifact):
        print(
            "note: the artifact's weights are integer-quantized; --quantize static stores them in int8"
        )
    return 0


def _parse_widths(text: str) -> list[int]:
    try:
        widths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise AutoslimError(f"--bits takes comma-separated integers, got {text!r}") from None
    bad = [w for w in widths if w not in (2, 3, 4, 5, 6, 8)]
    if bad or not widths:
        raise AutoslimError(
            f"unsupported bit width(s) {bad or text!r} (choose from 2, 3, 4, 5, 6, 8)"
        )
    return widths


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from autoslim.baseline import load_baseline
    from autoslim.results.plot import plot_sensitivity, sensitivity_matrix
    from autoslim.searching.experiment import load_experiment
    from autoslim.task import load_task
    from autoslim.techniques.quantize._mixed_precision import sensitivity_table

    widths = _parse_widths(args.bits)
    experiment, _ = load_experiment(args.experiment)
    task = load_task(experiment.task)
    with showing_progress(not args.quiet):
        baseline = load_baseline(experiment.task, task, log=not args.quiet)
        table = sensitivity_table(
            task, baseline.model, baseline.fingerprint, widths, hessian=args.hessian
        )
    out = Path(args.out) if args.out else Path("runs") / experiment.name
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "sensitivity.csv", index=False)
    plot_sensitivity(table, "kl", out / "sensitivity.png")
    for value, label in (
        ("metric_drop", f"{task.metric_name} drop (val)"),
        ("kl", "output KL vs fp32 (nats)"),
        ("hawq", "HAWQ-V2 Tr(H)/n·||ΔW||²"),
    ):
        if value in table:
            print(f"\n{label}, one layer quantized at a time:")
            print(sensitivity_matrix(table, value).to_string(float_format=lambda v: f"{v:.4g}"))
    print(f"\nwrote {out / 'sensitivity.csv'} and {out / 'sensitivity.png'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from autoslim.results.report import write_report
    from autoslim.run import load_run

    with showing_progress(not args.quiet):
        html_path, md_path = write_report(
            load_run(args.run_dir), args.output, stages=not args.no_stages
        )
    print(f"wrote {html_path} and {md_path}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from autoslim.results.dashboard import serve

    serve(args.run_dir, host=args.host, port=args.port)
    return 0


def _quiet_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars (also off when stderr is not a terminal)",
    )


def _trust_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-task",
        action="store_true",
        help="import and run the task module that the file names even if it is not a registered "
        "task: only for files you trust, since it runs their code",
    )


EXAMPLES = {
    "search": "autoslim search experiments/digits.yaml --trials 20\n"
    "autoslim search exp.yaml --backend ray --address auto",
    "sensitivity": "autoslim sensitivity experiments/digits.yaml --bits 2,4,8 --hessian",
    "pareto": "autoslim pareto runs/digits\nautoslim pareto runs/digits --format csv > front.csv",
    "export": "autoslim export runs/digits --select 'min size_bytes where accuracy_drop <= 0.01' "
    "-o best.yaml\nautoslim export runs/digits --trial 12 -o t12.yaml\n"
    "autoslim export runs/digits --bundle -o bundles/digits\n"
    "autoslim export runs/digits --bundle --select 'max accuracy' --select knee "
    "--select 'min latency_ms' -o bundles/three",
    "report": "autoslim report runs/digits -o report.html",
    "dashboard": "autoslim dashboard runs/digits\n"
    "autoslim dashboard runs/digits --host 0.0.0.0 --port 8081",
    "apply": "autoslim apply best.yaml -o artifacts/best",
    "export-model": "autoslim export-model artifacts/best --format onnx -o model.onnx\n"
    "autoslim export-model artifacts/best --format torch-export -o model.pt2",
    "evaluate": "autoslim evaluate artifacts/best --json",
}


def _command(sub, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with examples."""
    examples = "\n".join(f"  {line}" for line in EXAMPLES[name].splitlines())
    return sub.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=f"examples:\n{examples}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="autoslim", description="Search, export and apply measured compression recipes."
    )
    versions = ", ".join(f"{k} {v}" for k, v in package_versions().items())
    parser.add_argument("--version", action="version", version=versions)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = _command(sub, "search", "run or resume a multi-objective search")
    p.add_argument("experiment", help="experiment YAML file")
    p.add_argument("--trials", type=int, help="the study's trial budget (overrides search.trials)")
    p.add_argument("--timeout", type=float, help="seconds for this invocation")
    p.add_argument("--out", help="run folder (default runs/<experiment name>)")
    p.add_argument("--seed", type=int, help="the sampler's seed (overrides search.seed)")
    p.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="run trials in this process (default) or on a Ray cluster through Ray Tune",
    )
    p.add_argument(
        "--address", help="Ray cluster address (with --backend ray; default: start a local Ray)"
    )
    p.add_argument(
        "--storage",
        help="study storage URL shared by several workers, e.g. "
        "postgresql://host/db (default: a journal file in the run folder)",
    )
    _quiet_flag(p)
    _trust_flag(p)
    p.set_defaults(func=cmd_search)
    p = _command(sub, "sensitivity", "per-layer quantization sensitivity table and heatmap")
    p.add_argument("experiment", help="experiment YAML file")
    p.add_argument("--bits", default="2,3,4,8", help="comma list of widths to try per layer")
    p.add_argument("--hessian", action="store_true", help="add HAWQ-V2 scores (Hutchinson trace)")
    p.add_argument("--out", help="folder for sensitivity.csv/.png (default runs/<experiment name>)")
    _quiet_flag(p)
    _trust_flag(p)
    p.set_defaults(func=cmd_sensitivity)
    p = _command(sub, "pareto", "print a run's Pareto front")
    p.add_argument("run_dir", help="run folder")
    p.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", help="output format"
    )
    p.add_argument("--json", action="store_true", help="same as --format json")
    p.set_defaults(func=cmd_pareto)
    p = _command(sub, "export", "write one trial's replayable recipe, or a bundle of several")
    p.add_argument("run_dir", help="run folder")
    p.add_argument(
        "--trial", type=int, action="append", default=[], help="the trial number (repeatable)"
    )
    p.add_argument(
        "--select",
        action="append",
        default=[],
        help="knee | compromise | min NAME [where COND and ...] | max NAME [...] (repeatable)",
    )
    p.add_argument(
        "--bundle",
        action="store_true",
        help="write a bundle folder of several points (default: the whole front) that "
        "autoslim.load_bundle switches between at run time",
    )
    p.add_argument(
        "--force", action="store_true", help="with --bundle: replace a bundle already there"
    )
    p.add_argument(
        "-o", "--output", required=True, help="recipe YAML file (a folder with --bundle) to write"
    )
    _quiet_flag(p)
    _trust_flag(p)
    p.set_defaults(func=cmd_export)
    p = _command(sub, "report", "self-contained HTML report (+ Markdown summary) of a run")
    p.add_argument("run_dir", help="run folder")
    p.add_argument("-o", "--output", default="report.html", help="HTML file to write")
    p.add_argument("--no-stages", action="store_true", help="skip the measured per-stage breakdown")
    _quiet_flag(p)
    _trust_flag(p)
    p.set_defaults(func=cmd_report)
    p = _command(
        sub,
        "dashboard",
        "browse a run's study in optuna-dashboard (pip install autoslim[dashboard])",
    )
    p.add_argument("run_dir", help="run folder")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every "
        "interface, for anyone who can reach it: the dashboard has no login)",
    )
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    p.set_defaults(func=cmd_dashboard)
    p = _command(sub, "apply", "build an artifact from a recipe and measure it")
    p.add_argument("recipe", help="recipe YAML file (autoslim export writes one)")
    p.add_argument(
        "-o", "--output", required=True, help="artifact folder: new, empty or a previous artifact"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write into a folder holding other files (they are kept, never deleted)",
    )
    p.add_argument("--json", action="store_true", help="print the measured values as JSON")
    _quiet_flag(p)
    _trust_flag(p)
    p.set_defaults(func=cmd_apply)
    p = _command(
        sub,
        "export-model",
        "write an artifact as a model file that runs on ONNX Runtime, OpenVINO or "
        "torch.export alone",
    )
    p.add_argument("artifact", help="artifact folder")
    p.add_argument(
        "--format",
        choices=("onnx", "openvino", "torch-export"),
        default="onnx",
        help="the runtime's file format",
    )
    p.add_argument("-o", "--output", required=True, help="the file to write (.onnx, .xml, .pt2)")
    p.add_argument(
        "--quantize",
        choices=("auto", "none", "dynamic", "static"),
        default="auto",
        help="auto (default): as the artifact's runtime ships it, int8 where the recipe "
        "quantizes to integers, else fp32; none: the fp32 graph; static: int8 weights and "
        "activations calibrated "
        "on the train split; dynamic: int8 weights of MatMul and Gemm (transformers); embedding "
        "tables follow the recipe's quantize stage",
    )
    p.add_argument(
        "--calibration-batches", type=int, default=8, help="train batches calibrating static"
    )
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    _trust_flag(p)
    p.set_defaults(func=cmd_export_model)
    p = _command(sub, "evaluate", "re-measure an artifact")
    p.add_argument("artifact", help="artifact folder")
    p.add_argument("--json", action="store_true", help="print the measured values as JSON")
    _trust_flag(p)
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from autoslim.trust import trusted

    try:
        args = build_parser().parse_args(argv)
        with trusted(getattr(args, "trust_task", False)):
            return args.func(args)
    except AutoslimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
