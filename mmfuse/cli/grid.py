"""Commands over many configurations: grid and ensemble."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..heads import list_heads
from ._common import Pick, Refit, Search, app, user_errors


@app.command()
def grid(
    cache: List[Path] = typer.Argument(..., help="Labelled training feature cache (.h5), or several of the same "
                                       "rows extracted with other backbones: a grid over backbones, every "
                                       "configuration on every (text cache, image cache) pair (--pairs)."),
    out: Path = typer.Option(..., help="Grid folder (results.csv, summary.md, PNGs, best/)."),
    fusion: Optional[str] = typer.Option(None, help=f"Comma list of {', '.join(list_heads())} [default: "
                                         "concat,weighted,gated,late]."),
    lr: Optional[str] = typer.Option(None, help="Comma list [default: 1e-4,3e-4,1e-3]."),
    weight_decay: Optional[str] = typer.Option(None, help="Comma list [default: 0.01]."),
    hidden: Optional[str] = typer.Option(None, help="Comma list."),
    dropout: Optional[str] = typer.Option(None, help="Comma list [default: 0.2]."),
    loss: Optional[str] = typer.Option(None, help="Comma list of ce, hinge."),
    class_weight: Optional[str] = typer.Option(None, help="Comma list of balanced, none."),
    text_feature: Optional[str] = typer.Option(None, help="Comma list of auto, cls, mean, pooled, proj "
                                               "[default: auto]."),
    image_feature: Optional[str] = typer.Option(None, help="Comma list of auto, pooled, cls, mean, proj "
                                                "[default: auto: proj where the cache has it, else pooled]."),
    label_smoothing: Optional[str] = typer.Option(None, help="Comma list."),
    ema: Optional[str] = typer.Option(None, help="Comma list of weight-average decays (0: off) [default: 0]."),
    batch_size: Optional[str] = typer.Option(None, help="Comma list."),
    epochs: Optional[str] = typer.Option(None, help="Comma list [default: 20] (early stopping may end sooner)."),
    patience: Optional[str] = typer.Option(None, help="Comma list [default: 5]: epochs without a validation gain "
                                           "before stopping (3: faster, about the same score; "
                                           "bench/experiments/defaults.py)."),
    c: Optional[str] = typer.Option(None, "--C", help="Comma list of numbers or auto (logreg)."),
    align_weight: Optional[str] = typer.Option(None, help="Comma list (aligned)."),
    combine: Optional[str] = typer.Option(None, help="Comma list of mean, union (late fusion, multi-label)."),
    thresholds: Optional[str] = typer.Option(None, help="Comma list of per-label, global, fixed (multi-label)."),
    zeroshot_from: Optional[str] = typer.Option(None, help="Comma list of image, text, both (zeroshot)."),
    precision: Optional[str] = typer.Option(None, help="fp32 or bf16 training matmuls [default: bf16 where this "
                                            "CPU has native bf16 and runs it measurably faster than fp32, else fp32]."),
    config: Optional[Path] = typer.Option(None, help="TOML/YAML file with a [grid] table (options here override it)."),
    folds: Optional[int] = typer.Option(None, help="Stratified CV folds [default: 5]."),
    repeats: Optional[int] = typer.Option(None, help="Repeated stratified k-fold: reshuffle and run the folds R "
                                          "times (R x folds fits per configuration) [default: 1]."),
    seed: Optional[int] = typer.Option(None, help="Seed of the folds [default: 0]."),
    jobs: Optional[int] = typer.Option(None, help="Local processes [default: all cores]."),
    backend: str = typer.Option("local", help="local (processes) or dask (a dask.distributed cluster)."),
    scheduler: Optional[str] = typer.Option(None, help="Dask scheduler address, e.g. tcp://host:8786."),
    refit: Refit = typer.Option(Refit("folds"), help="What best/ holds: folds (the best configuration's k "
                                "fold models, averaged: what CV scored) or full (one refit on all rows with the "
                                "fold fits' schedule in steps)."),
    search: Search = typer.Option(Search("full"), help="full: every configuration on every fold; halving: "
                                  "successive halving over folds (all on 1 fold, the best third on 2, the best "
                                  "third of those on all; finished folds kept): a third of the fits, for grids "
                                  "too large to run in full (bench/experiments/selection.py)."),
    pick: Pick = typer.Option(Pick("top"), help="What best/ holds: top (best mean CV macro-F1; it predicted "
                              "held-out rows better) or one-se (the simplest configuration within one standard "
                              "error of the top)."),
    pairs: Optional[str] = typer.Option(None, help="Several caches: the backbone pairs, all (every cache's text "
                                        "with every cache's images), same (each cache's own), or a comma list of "
                                        "TEXT:IMAGE cache file stems (or positions 1, 2, ..) [default: all]."),
    progress: bool = typer.Option(True, help="Show the progress bar."),
):
    """Score a grid of head configurations by stratified k-fold CV, in parallel; save the best."""
    from ..grid import GridConfig, grid_configs, open_backbones, run_grid

    with user_errors(f"every finished fit is kept in {out}; re-run the same command to resume"):
        axes = {"fusion": fusion, "lr": lr, "weight_decay": weight_decay, "hidden": hidden, "dropout": dropout,
                "loss": loss, "class_weight": class_weight, "text_feature": text_feature,
                "image_feature": image_feature,
                "label_smoothing": label_smoothing, "ema": ema, "batch_size": batch_size, "epochs": epochs,
                "patience": patience, "C": c, "align_weight": align_weight, "precision": precision,
                "combine": combine, "thresholds": thresholds, "zeroshot_from": zeroshot_from}
        setup = GridConfig.from_options(config, axes, folds=folds, repeats=repeats, seed=seed, jobs=jobs,
                                        backend=backend, scheduler=scheduler, refit_mode=refit.value,
                                        pick=pick.value, search=search.value, pairs=pairs)
        n_pairs = len(open_backbones(cache, setup.pairs)[0].pairs) if len(cache) > 1 else 0  # the rows checked first
        configs = grid_configs(setup.axes, out, log=typer.echo)
        typer.echo(setup.describe(len(configs), n_pairs))
        result = run_grid(cache[0] if len(cache) == 1 else cache, configs, out, setup, progress=progress,
                          log=typer.echo)
    for line in result.lines(setup):
        typer.echo(line)
    name = result.metric_name
    from ..ensemble import recommend_tied

    with user_errors():
        ens = recommend_tied(out, len(result.tied))
    if ens:
        d = ens["difference"]
        typer.echo(f"the {ens['members']} tied configurations averaged: CV {name} {ens['score']:.3f} vs the top's "
                   f"{ens['top']:.3f} (per fold {d['mean']:+.3f}, ahead on {d['ahead']} of {d['folds']}): "
                   + (f"recommended: mmfuse ensemble {out} --top {ens['members']} --out runs/ens" if ens["recommended"]
                      else f"not ahead on most folds, {result.best_run} stays the recommendation"))


@app.command()
def ensemble(
    grid_dir: Path = typer.Argument(..., help="A grid folder from mmfuse grid."),
    out: Path = typer.Option(..., help="Run folder for the ensemble (predict/evaluate accept it)."),
    top: int = typer.Option(8, help="Stack this many best configurations."),
    meta: str = typer.Option("mean", help="mean: average the members' probabilities (it beat lr on held-out "
                             "rows: bench/experiments/refit.py); lr: logistic regression on their out-of-fold "
                             "probabilities (C by inner CV)."),
    refit: Refit = typer.Option(Refit("folds"), help="Each member as its k fold models (folds) or one refit on "
                                "all rows (full)."),
    overwrite: bool = typer.Option(False, help="Replace an existing folder at --out (kept until the new ensemble is "
                                   "complete)."),
):
    """Stack a grid's top configurations with a logistic regression on their out-of-fold probabilities."""
    from ..ensemble import build_ensemble

    with user_errors():
        _, m = build_ensemble(grid_dir, top, out, meta, refit.value, log=typer.echo, overwrite=overwrite)
    b = m["best_member"]
    metric = b["metric"]
    name = metric.replace("_f1", "-F1")
    typer.echo(f"best single configuration ({b['fusion']}): CV {name} {b[metric + '_mean']:.3f} ± "
               f"{b[metric + '_std']:.3f}, pooled out-of-fold {b['pooled']:.3f}")
    for kind, cv in {meta: m["cv"], **m["cv_other"]}.items():
        d = m["vs_best_member"][kind]
        typer.echo(f"ensemble of {len(m['members'])} ({'logistic regression' if kind == 'lr' else 'mean of probabilities'}"
                   f"{', saved' if kind == meta else ''}): CV {name} {cv[metric + '_mean']:.3f} ± "
                   f"{cv[metric + '_std']:.3f}, pooled {cv['pooled']:.3f}; vs the best member per fold "
                   f"{d['mean']:+.3f} ± {d['std']:.3f} (ahead on {d['ahead']} of {d['folds']} folds)")
    typer.echo("(members were chosen on these folds, so the ensemble's CV numbers are optimistic)")
    typer.echo(f"saved run to {out}")
