"""The summary of a grid folder: summary.md (the top configurations, the tied set and the pick; successive
halving's early stops below them; a grid over several caches, its backbone pairs), heatmaps.png (lr against
the grid's other main axis, per fusion), fusions.png (the best configuration per fusion) and, in a grid over
several caches, backbones.png (the best score of each backbone pair and fusion)."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np

from ..heads import HeadConfig
from ..heads.registry import head_info
from ._select import primary, score, standard_error
from ._spec import task_metrics


def _uses(fusion: str, field: str) -> bool:
    """Whether ``field`` changes the model of ``fusion`` (what the head declares in the registry); the backbone
    pair of a grid over several caches changes every head."""
    return field == "backbone" or head_info(fusion).uses_field(field)


def varied_fields(rows: list[dict]) -> list[str]:
    """The HeadConfig fields that differ between rows (the grid's axes), after ``backbone`` in a grid over
    several caches (always shown there: it names the pair); a field an older grid's rows lack is not an axis."""
    pairs = ["backbone"] if any(r.get("backbone") for r in rows) else []
    return pairs + [f.name for f in fields(HeadConfig) if len({r.get(f.name) for r in rows}) > 1]


def backbones_note(backbones) -> str:
    """The paragraph summary.md gives a grid over several caches (``backbones``: grid.Backbones): its pairs."""
    return ("\nBackbone pairs (the `backbone` column; text from one cache, images from another; `backbones.png`: "
            "the best score of each pair and fusion):\n\n" + backbones.describe() + "\n")


_varied = varied_fields  # its former name (mmfuse.report imports it)


def write_summary(out: Path, rows: list[dict], folds: int, top: int = 10, extra: str = "",
                  pick: dict | None = None, tied: list[dict] | None = None, rule: str = "top", repeats: int = 1,
                  stopped: list[dict] | None = None) -> Path:
    """summary.md: the top configurations (all tied ones included); after successive halving (``stopped``
    given, possibly empty), a ``rung`` and a ``splits`` column, and the best ``top`` of the configurations
    that stopped early below them."""
    axes = varied_fields(rows + (stopped or [])) or ["fusion"]
    tied_ids = {r["config_id"] for r in tied or []}
    metrics = task_metrics(bool(rows) and primary(rows[0]) == "micro_f1")
    titles = {"macro_f1": "macro-F1", "accuracy": "accuracy", "weighted_f1": "weighted-F1",
              "balanced_accuracy": "balanced acc.", "micro_f1": "micro-F1", "samples_f1": "samples-F1", "map": "mAP"}
    halving = stopped is not None
    n_splits = folds * repeats
    pairs = {r["backbone"] for r in rows + (stopped or []) if r.get("backbone")}
    lines = [f"# Grid {out}: {len(rows) + len(stopped or [])} configurations"
             + (f" ({len(pairs)} backbone pairs)" if pairs else "") + f", {folds}-fold stratified CV"
             + (f" repeated {repeats} times" if repeats > 1 else "")
             + (", successive halving" if halving else "")
             + (" (multi-label: iterative stratification; ranked by micro-F1)" if metrics[0] == "micro_f1" else "") + "\n",
             f"| rank | {' | '.join(axes)} | " + ("rung | splits | " if halving else "") + f"{titles[metrics[0]]} | ± SE | "
             + " | ".join(titles[m] for m in metrics[1:]) + " | s/fit | parameters | tied with the top |",
             "|---:|" + "---|" * len(axes) + ("---:|---:|" if halving else "") + "---:|---:|"
             + "---:|" * (len(metrics) - 1) + "---:|---:|:---:|"]
    shown, full_ids = rows[:max(top, len(tied_ids))] + (stopped or [])[:top], {r["config_id"] for r in rows}
    for i, r in enumerate(shown, 1):
        full = r["config_id"] in full_ids
        lines.append(f"| {i if full else '-'} | " + " | ".join(str(r[a]) if _uses(r["fusion"], a) else "-" for a in axes) + " | "
                     + (f"{r['rung']} | {n_splits if full else r['splits']} | " if halving else "")
                     + f"{score(r):.3f} ± {r[metrics[0] + '_std']:.3f} | "
                     + (f"{standard_error(r, folds):.3f} | " if full else "- | ")
                     + " | ".join(f"{r[m + '_mean']:.3f} ± {r[m + '_std']:.3f}" for m in metrics[1:])
                     + f" | {r['seconds_per_fit']:.2f} | {r.get('parameters', '')} | "
                     + ("yes" if r["config_id"] in tied_ids else "") + " |")
    if pick:
        lines.append(f"\n{len(tied_ids)} configuration(s) score within one standard error of the top "
                     f"({score(rows[0]):.3f} - {standard_error(rows[0], folds):.3f}): statistically tied. "
                     + ("Picked by the one-standard-error rule, the simplest of them (fewest parameters): "
                        if rule == "one-se" else "Picked: the top by mean (`--pick one-se` takes the simplest tied one): ")
                     + f"`{pick['config_id']}` ({', '.join(f'{a}={pick[a]}' for a in axes)}), saved in `best/` "
                     f"(use it with `mmfuse predict {out}/best ...`). `mmfuse ensemble {out}` stacks the top ones.")
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def heatmap_axis(rows: list[dict]) -> str:
    """The heatmaps' columns: the numeric field besides lr with the most values among the rows (the first in
    HeadConfig's order on a tie), weight_decay (one column) when none varies, as in the default grid."""
    numeric = [f for f in varied_fields(rows) if f not in ("lr", "seed") and
               all(isinstance(r[f], (int, float)) and not isinstance(r[f], bool) for r in rows)]
    return max(numeric, key=lambda f: len({r[f] for r in rows}), default="weight_decay")


def plot_grid(out: Path, rows: list[dict]) -> None:
    """heatmaps.png: lr x the grid's other main axis per fusion (the numeric field with the most values besides
    lr, see heatmap_axis; best macro-F1 over the remaining axes); fusions.png: best per fusion."""
    if not rows:
        return
    from ..plots import pyplot as _plt

    plt = _plt()
    name = {"macro_f1": "macro-F1", "micro_f1": "micro-F1"}[primary(rows[0])]
    std = f"{primary(rows[0])}_std"
    fusions = sorted({r["fusion"] for r in rows}, key=lambda f: -max(score(r) for r in rows if r["fusion"] == f))
    best = {f: max((r for r in rows if r["fusion"] == f), key=score) for f in fusions}
    fig, ax = plt.subplots(figsize=(1.1 * len(fusions) + 3, 3.8))
    ax.bar(range(len(fusions)), [score(best[f]) for f in fusions],
           yerr=[best[f][std] for f in fusions], capsize=4, color="C0")
    ax.set_xticks(range(len(fusions)), fusions, rotation=30, ha="right")
    low = min(score(best[f]) - best[f][std] for f in fusions)
    ax.set_ylim(max(0, low - 0.05), None)
    ax.set_ylabel(f"CV {name} (best config, ± std over folds)")
    ax.set_title("best configuration per fusion")
    fig.tight_layout()
    fig.savefig(out / "fusions.png", dpi=110)
    plt.close(fig)
    if any(r.get("backbone") for r in rows):
        plot_backbones(out, rows, plt, name)

    torch_fusions = [f for f in fusions if head_info(f).training == "gradient"]  # the heads lr changes
    if not torch_fusions:
        return
    torch_rows = [r for r in rows if r["fusion"] in torch_fusions]
    lrs = sorted({r["lr"] for r in torch_rows})
    axis = heatmap_axis(torch_rows)
    label = axis.replace("_", " ")
    wds = sorted({r[axis] for r in torch_rows})
    cols = min(4, len(torch_fusions))
    nrows = -(-len(torch_fusions) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols + 1.2, 3.1 * nrows + 0.8), squeeze=False,
                             constrained_layout=True)
    vmin = min(score(r) for r in rows)
    vmax = max(score(r) for r in rows)
    for n, (ax, f) in enumerate(zip(axes.flat, torch_fusions)):
        grid = np.full((len(lrs), len(wds)), np.nan)
        for r in rows:
            if r["fusion"] == f:
                i, j = lrs.index(r["lr"]), wds.index(r[axis])
                grid[i, j] = np.nanmax([grid[i, j], score(r)])
        im = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        for i in range(len(lrs)):
            for j in range(len(wds)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=8,
                            color="white" if grid[i, j] < (vmin + vmax) / 2 else "black")
        ax.set_xticks(range(len(wds)), [f"{w:g}" for w in wds])
        ax.set_yticks(range(len(lrs)), [f"{v:g}" for v in lrs] if n % cols == 0 else [])
        ax.set_xlabel(label)
        if n % cols == 0:
            ax.set_ylabel("learning rate")
        ax.set_title(f)
    for ax in list(axes.flat)[len(torch_fusions):]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label=f"CV {name}")
    fig.suptitle(f"CV {name} by learning rate and {label} (best over other axes)")
    fig.savefig(out / "heatmaps.png", dpi=110)
    plt.close(fig)


def plot_backbones(out: Path, rows: list[dict], plt, name: str) -> None:
    """backbones.png: backbone pair x fusion, the best CV score of each (over the other axes)."""
    fusions = sorted({r["fusion"] for r in rows}, key=lambda f: -max(score(r) for r in rows if r["fusion"] == f))
    pairs = sorted({r["backbone"] for r in rows}, key=lambda b: -max(score(r) for r in rows if r["backbone"] == b))
    grid = np.full((len(pairs), len(fusions)), np.nan)
    for r in rows:
        i, j = pairs.index(r["backbone"]), fusions.index(r["fusion"])
        grid[i, j] = np.nanmax([grid[i, j], score(r)])
    fig, ax = plt.subplots(figsize=(1.0 * len(fusions) + 4.5, 0.5 * len(pairs) + 2), constrained_layout=True)
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    middle = (np.nanmin(grid) + np.nanmax(grid)) / 2
    for i in range(len(pairs)):
        for j in range(len(fusions)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=8,
                        color="white" if grid[i, j] < middle else "black")
    ax.set_xticks(range(len(fusions)), fusions, rotation=30, ha="right")
    # a "$" in a name read from a cache would start matplotlib's mathtext
    ax.set_yticks(range(len(pairs)), [p.replace("$", r"\$") for p in pairs])
    ax.set_xlabel("fusion")
    ax.set_ylabel("backbone pair (text + image)")
    fig.colorbar(im, ax=ax, label=f"CV {name}")
    ax.set_title(f"CV {name} by backbone pair and fusion (best over other axes)")
    fig.savefig(out / "backbones.png", dpi=110)
    plt.close(fig)
