"""``corrtune``: thin commands that parse options and call one function each.

User mistakes (a bad file, key or value) print one line naming the file, the key and the
problem, and exit with status 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from detectors.config import ConfigError, parse_override

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Run and compare object-detection experiments (Ray Tune + MLflow).",
)
data_app = typer.Typer(no_args_is_help=True, help="Make the synthetic set; check a dataset.")
app.add_typer(data_app, name="data")

T = TypeVar("T")

# Options shared by several commands, defined once.
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value: dotted.key=value (repeatable)."),
]
PresetOpt = Annotated[
    str | None,
    typer.Option(
        "--preset", help="Base preset (smoke, tiny, bccd, ...); replaces the space's `base`."
    ),
]
TrackingOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        help="MLflow tracking URI (default: sqlite:///mlflow.db in this folder).",
    ),
]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="Dataset folder, COCO JSON or YOLO YAML: its kind, layout and splits are "
        "detected (see `corrtune data check`); --set data.* still wins.",
    ),
]
VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", help="Show Ray's own logs (and a line per trial event, no table)."
    ),
]


def _overrides(items: list[str] | None, data: Path | None = None) -> dict[str, Any]:
    """``--data`` then ``--set`` as config overrides (a --set wins)."""
    from orchestrator.datasets import data_overrides

    return data_overrides(data) | dict(parse_override(item) for item in items or [])


def _guard(fn: Callable[[], T]) -> T:
    """Run ``fn``; a user-caused error becomes one line on stderr and exit status 2."""
    from orchestrator.errors import EXIT_USER_ERROR, USER_ERRORS

    try:
        return fn()
    except USER_ERRORS as exc:
        typer.echo(f"corrtune: error: {exc}", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        typer.echo("corrtune: interrupted", err=True)
        raise typer.Exit(130) from None


def _progress(line: str) -> None:
    typer.echo(line)
    sys.stdout.flush()


def _live_console(verbose: bool) -> Any:
    """A rich Console for the sweep's live table when stdout is a terminal; None (a line per
    trial event) for pipes, files and CI, and with --verbose (Ray's logs would tear it)."""
    if verbose or not sys.stdout.isatty():
        return None
    from rich.console import Console

    return Console()


@app.command()
def sweep(
    space: Annotated[Path, typer.Argument(help="Search-space YAML (see search_spaces/).")],
    preset: PresetOpt = None,
    data: DataOpt = None,
    set_: SetOpt = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the trial plan and its cost estimate (times a few training steps of "
            "the base config here); run nothing.",
        ),
    ] = False,
    measure: Annotated[
        bool,
        typer.Option(
            "--measure/--no-measure",
            help="With --dry-run: time a few training steps here (--no-measure for presets "
            "that need a GPU or a download).",
        ),
    ] = True,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted sweep.")
    ] = False,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            envvar="RAY_ADDRESS",
            help="Ray cluster to join (default, or `local`: an embedded Ray of its own).",
        ),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage", help="Checkpoint/result storage: a shared path or URI (s3://...)."
        ),
    ] = None,
    tracking_uri: TrackingOpt = None,
    repeats: Annotated[
        int | None,
        typer.Option(
            "--repeats",
            help="Seeds per configuration (replaces the space's `repeats`; with --resume it "
            "may grow: only the new seeds run).",
        ),
    ] = None,
    max_concurrent: Annotated[
        int, typer.Option(help="Trials at once (0: from space/resources).")
    ] = 0,
    verbose: VerboseOpt = False,
) -> None:
    """Run a search space: one MLflow parent run, one child run per trial."""
    from orchestrator.options import SweepOptions
    from orchestrator.plan import plan_and_estimate
    from orchestrator.processes import terminate_as_interrupt
    from orchestrator.ray_runtime import is_local
    from orchestrator.sweep import run_sweep

    def go() -> None:
        opts = SweepOptions(
            preset=preset,
            overrides=_overrides(set_, data),
            repeats=repeats,
            resume=resume,
            address=address,
            storage=storage,
            tracking_uri=tracking_uri,
            verbose=verbose,
            max_concurrent=max_concurrent,
        )
        if dry_run:
            text = plan_and_estimate(
                space,
                preset=preset,
                overrides=opts.overrides,
                workdir=Path.cwd(),
                local=is_local(address) or address == "local",
                max_concurrent=max_concurrent,
                repeats=repeats,
                measure=measure,
            )
            _progress(text)
            return
        with terminate_as_interrupt():  # a SIGTERM stops the sweep as Ctrl-C does
            result = run_sweep(space, opts, printer=_progress, console=_live_console(verbose))
        if result.status == "KILLED":  # interrupted (Ctrl-C); it printed how to resume
            raise typer.Exit(130)
        if result.status not in ("FINISHED", "STOPPED"):  # STOPPED: the budget was spent
            raise typer.Exit(1)

    _guard(go)


@app.command()
def train(
    config: Annotated[Path | None, typer.Argument(help="Experiment YAML (optional).")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="Preset to start from.")] = None,
    data: DataOpt = None,
    set_: SetOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("runs/train"),
) -> None:
    """Train one model and evaluate it; writes OUT/metrics.json and OUT/checkpoint.pt."""
    from detectors.config import compose_config
    from detectors.engine import run_training
    from detectors.fit import fit_config, fitted_values
    from detectors.models import check_settings

    def go() -> None:
        if config is None and preset is None:
            raise ConfigError("corrtune train", "", "give a CONFIG file or --preset NAME")
        given, sources = compose_config(preset, config, _overrides(set_, data))
        check_settings(given, sources)  # a setting nothing reads: before any data is read
        cfg = fit_config(given, Path.cwd() / ".corrtune")
        if cfg != given:  # recorded in the checkpoint's config too
            values = " ".join(f"{k}={v}" for k, v in fitted_values(given, cfg).items())
            _progress(f"fitted to the training boxes: {values}")

        def report(record: dict[str, Any], _: Any) -> None:
            shown = {
                k: round(v, 4)
                for k, v in record.items()
                if k in ("iteration", "train/loss", "val/AP", "train/sec_per_iter")
            }
            _progress(json.dumps(shown))

        metrics = run_training(cfg, out_dir=out, cache_dir=Path.cwd() / ".corrtune", report=report)
        _progress(json.dumps(metrics, indent=2, sort_keys=True))

    _guard(go)


@app.command(name="eval")
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint.pt written by train/sweep.")],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Dataset to evaluate on (default: the checkpoint's): its kind, layout and "
            "validation split are detected.",
        ),
    ] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="Split to evaluate (default: data.val_split).")
    ] = None,
    classes_by_name: Annotated[
        bool,
        typer.Option(
            "--classes-by-name",
            help="The dataset has other classes than the model: score the names both have.",
        ),
    ] = False,
    set_: SetOpt = None,
) -> None:
    """Evaluate a saved model: the full metric set on a dataset's validation split."""
    from orchestrator.evaluation import evaluate_checkpoint

    def go() -> None:
        overrides = _overrides(set_, data)
        if split is not None:
            overrides["data.val_split"] = split
        metrics = evaluate_checkpoint(
            checkpoint, overrides, Path.cwd() / ".corrtune", classes_by_name=classes_by_name
        )
        _progress(json.dumps(metrics, indent=2, sort_keys=True))

    _guard(go)


@app.command()
def report(
    space: Annotated[
        Path, typer.Argument(help="The search-space YAML (or name) of a sweep that ran here.")
    ],
    preset: PresetOpt = None,
) -> None:
    """Rewrite results/<name>/ (tables with 95% CIs, trials.parquet, plots) from the ledger."""
    from orchestrator.report import report_sweep

    _guard(lambda: _progress(str(report_sweep(space, preset=preset, workdir=Path.cwd()))))


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
    tracking_uri: TrackingOpt = None,
    browser: Annotated[
        bool,
        typer.Option("--browser/--no-browser", help="Open the links in a browser, if any."),
    ] = True,
) -> None:
    """Open the MLflow UI on 127.0.0.1 against the same store the sweeps write, and print
    (and open) two links for the latest sweep: its runs sorted by the space's metric, and
    MLflow's compare view of its trials."""
    from orchestrator.processes import serve
    from orchestrator.tracking import tracking_uri as resolve
    from orchestrator.ui import latest_sweep_links, open_when_up

    uri = resolve(tracking_uri)
    base = f"http://127.0.0.1:{port}"
    _progress(f"MLflow UI on {base} (store {uri}); Ctrl-C stops it")
    links = _guard(lambda: latest_sweep_links(uri, base))
    urls = []
    if links is None:
        _progress("no sweep in this store yet: run `corrtune sweep SPACE.yaml` first")
    else:
        urls = [links.runs_sorted, links.compare]
        _progress(
            f"latest sweep: experiment {links.experiment!r}, parent run {links.parent_run_id}, "
            f"{len(links.child_run_ids)} trial run(s)\n"
            f"  runs, best first:  {links.runs_sorted}\n"
            f"  compare the trials: {links.compare}"
        )
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        uri,
        "--workers",
        "1",  # one user on 127.0.0.1; four workers cost seconds of start-up and memory
    ]
    if browser and urls:
        open_when_up(base, urls)
    # The server and every worker it starts end with this command (Ctrl-C or SIGTERM).
    raise typer.Exit(serve(cmd))


@data_app.command("make")
def data_make(
    preset: Annotated[
        str, typer.Option("--preset", help="Preset whose synthetic set to make.")
    ] = "tiny",
    set_: SetOpt = None,
) -> None:
    """Generate (once) the synthetic set of a preset into the cache folder."""
    from detectors.config import load_config
    from detectors.engine import build_datasets

    def go() -> None:
        cfg = load_config(preset=preset, overrides=_overrides(set_))
        train_set, val_set = build_datasets(cfg, Path.cwd() / ".corrtune")
        _progress(
            f"{len(train_set)} train + {len(val_set)} val images, classes {train_set.classes}"
        )

    _guard(go)


@data_app.command("check")
def data_check(
    path: Annotated[
        Path | None,
        typer.Argument(help="Dataset folder, COCO JSON or YOLO YAML (or give --data)."),
    ] = None,
    data: Annotated[Path | None, typer.Option("--data", help="The dataset, as PATH.")] = None,
    kind: Annotated[
        str | None, typer.Option(help="voc, coco or yolo (default: detected).")
    ] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="Check this split only (default: all).")
    ] = None,
    preset: Annotated[
        str,
        typer.Option(
            "--preset",
            help="Preset whose input size and detector the box sizes are measured against.",
        ),
    ] = "custom-cpu",
    set_: SetOpt = None,
    decode: Annotated[
        bool,
        typer.Option("--decode/--no-decode", help="Decode every image (slower, finds more)."),
    ] = True,
) -> None:
    """Report every problem in a dataset, and its box sizes against a detector, without
    training; exit 2 if the dataset is unusable."""
    from detectors.config import load_config
    from orchestrator.datasets import check_report

    def go() -> None:
        root = path or data
        if root is None or (path is not None and data is not None):
            raise ConfigError("corrtune data check", "", "give the dataset once: PATH or --data")
        cfg = load_config(preset=preset, overrides=_overrides(set_))
        text = check_report(
            root, cfg, kind=kind, split=split, decode_images=decode, source=f"preset {preset}"
        )
        _progress(text)

    _guard(go)


@app.command()
def doctor() -> None:
    """What is installed and reachable (versions, CUDA, torchsort, Ray, MLflow store)."""
    from orchestrator.doctor import doctor_report

    _progress(doctor_report())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
