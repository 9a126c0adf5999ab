"""The report's sections, one builder per kind of output (runs, the ablation, grids, ensembles, fine-tune
runs, caches, inspect folders); each reads its folder's files through ``safe`` and returns HTML."""
from __future__ import annotations

import html
import math
from pathlib import Path

from ..grid import final_rows, primary, score, stopped_rows, varied_fields as _varied
from ..errors import MmfuseError
from ..safe import corrupt, number, read_json, reading
from ._html import _Page, _card, _f, _fig, _figs, _num, _table


def _score(m: dict, path: Path) -> tuple[str, float | None, float | None]:
    """(metric name, value, fold std or None) of a run's metrics.json: validation or CV."""
    if "validation" in m:
        v = m["validation"]
        name = "micro_f1" if "micro_f1" in v else "macro_f1"
        return name, _num(v.get(name), path, f"validation.{name}"), None
    cv = m.get("cv", {})
    name = "micro_f1" if "micro_f1_mean" in cv else "macro_f1"
    return (name, _num(cv.get(f"{name}_mean"), path, f"cv.{name}_mean"),
            _num(cv.get(f"{name}_std"), path, f"cv.{name}_std"))


def _run(run: Path, page: _Page) -> tuple[float, list, tuple, str]:
    """A run's (score to order by, table row, ablation entry, card of plots)."""
    path = run / "metrics.json"
    m, cfg = read_json(path, ("fusion",)), read_json(run / "config.json", ("fusion",))
    name, fusion = page.name(run), str(cfg["fusion"])
    with reading(path):  # a field of another type than mmfuse writes: one line naming the file
        metric, value, std = _score(m, path)
        acc = _num(m.get("validation", {}).get("accuracy", m.get("cv", {}).get("accuracy_mean")), path, "accuracy")
        weights = ", ".join(f"{k} {number(w, path, f'modality_weights.{k}'):.2f}"
                            for k, w in (m.get("modality_weights") or {}).items())
        row = [name, "grid best/ (fold models)" if (run / "bagged.json").is_file() else "train-head", fusion,
               _vectors(m, cfg), metric.replace("_f1", "-F1"),
               _f(value) + (f" ± {_f(std)}" if std is not None else ""), _f(acc),
               _f(_num(m.get("fit_seconds"), path, "fit_seconds"), 2), weights]
    plots = "".join(page.img(run, p, f"{name}: {alt}", 520) for p, alt in (
        ("curves.png", "training curves"), ("confusion.png", "confusion matrix"),
        ("label_f1.png", "per-label F1"), ("thresholds.png", "F1 against the threshold")))
    return value or 0.0, row, (fusion, value, std), _card(f"{name} ({fusion})", _figs(plots)) if plots else ""


def _vectors(metrics: dict, cfg: dict) -> str:
    """The cached vectors a run read, "text, image" (a run from before image vectors were chosen: image/pooled)."""
    text = metrics.get("text_feature", cfg.get("text_feature"))
    image = metrics.get("image_feature") or ("pooled" if "text_feature" in metrics
                                             else cfg.get("image_feature", "pooled"))
    return f"{text}, {image}"


def _runs_section(runs: list[Path], page: _Page) -> tuple[str, list[tuple]]:
    built = page.each(runs, _run)
    if not built:
        return "<p>No head runs could be read.</p>", []
    table = _table(["run", "kind", "fusion", "text, image vectors", "metric", "score", "accuracy", "fit (s)",
                    "learned modality weights"], [b[1] for b in sorted(built, key=lambda b: -b[0])], {5, 6, 7},
                   "validation scores of train-head runs; CV mean ± fold std of grid picks. Best first.")
    return table + "".join(b[3] for b in built), [b[2] for b in built]


def _ablation(entries: list[tuple[str, float | None, float | None]]) -> str:
    """Text-only vs image-only vs each fusion: the best score per fusion (runs and grid rows)."""
    from ..plots import pyplot as _plt

    best: dict[str, tuple[float, float | None]] = {}
    for fusion, value, std in entries:
        if value is not None and math.isfinite(value) and (fusion not in best or value > best[fusion][0]):
            best[fusion] = (value, std if std is not None and math.isfinite(std) else None)  # NaN: no axis limits
    if not best:
        return "<p>No runs to compare.</p>"
    order = sorted(best, key=lambda f: (f not in ("text", "image"), -best[f][0]))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.0 * len(order) + 3, 3.4))
    colors = ["C1" if f in ("text", "image") else "C0" for f in order]
    ax.bar(range(len(order)), [best[f][0] for f in order], yerr=[best[f][1] or 0 for f in order], capsize=4, color=colors)
    # a "$" in a fusion name read from a file would start matplotlib's mathtext (and can fail to parse)
    ax.set_xticks(range(len(order)), [f.replace("$", r"\$") for f in order], rotation=30, ha="right")
    low = min(best[f][0] - (best[f][1] or 0) for f in order)
    ax.set_ylim(max(0, low - 0.05), None)
    ax.set_ylabel("best score (± fold std where known)")
    ax.set_title("ablation: unimodal (orange) vs fusion (blue); macro-F1, multi-label micro-F1")
    fig.tight_layout()
    out = _fig(fig, "ablation: the best score of each fusion and of the text-only and image-only heads")
    plt.close(fig)
    return out


def _grid(g: Path, page: _Page) -> tuple[str, list[tuple]]:
    """A grid's card and its rows' ablation entries (scored as the grid scores: micro-F1 multi-label, else macro-F1)."""
    info = read_json(g / "grid.json", ("cache", "rows", "folds"))
    with reading(g / "results.csv"):  # a value that is not a number, a column missing
        rows = final_rows(g)  # best first; those that ran every split
        metric = primary(rows[0]) if rows else "macro_f1"
        axes = _varied(rows) or ["fusion"]
        top = [[i + 1, *[r[a] for a in axes], f"{score(r):.3f} ± {r[f'{metric}_std']:.3f}",
                f"{r['seconds_per_fit']:.2f}"] for i, r in enumerate(rows[:10])]
        entries = [(str(r["fusion"]), score(r), r[f"{primary(r)}_std"]) for r in rows]
    try:
        stopped = stopped_rows(g)
    except (OSError, ValueError, KeyError, IndexError, TypeError, EOFError) as e:
        raise corrupt(g, f"its successive-halving files (configs.json, folds.npy, splits/) cannot be read: "
                         f"{type(e).__name__}: {e}") from None
    with reading(g / "grid.json"):
        precision = info.get("precision") or []
        precision = ", ".join(map(str, [precision] if isinstance(precision, str) else precision))
    table = _table(["rank", *axes, metric.replace("_f1", "-F1"), "s/fit"], top, {0, len(axes) + 1, len(axes) + 2},
                   f"top 10 of {len(rows)} configurations, {info['folds']}-fold CV"
                   + (f" ({len(stopped)} more stopped early by successive halving, on fewer folds)" if stopped else ""))
    with reading(g / "grid.json"):
        caches = ", ".join(map(str, (info.get("backbones") or {}).get("caches") or [info["cache"]]))
    about = (f'<p>{"caches" if "," in caches else "cache"} {html.escape(caches)}, {html.escape(str(info["rows"]))} '
             f'rows, precision {html.escape(precision)}</p>')
    return _card(page.name(g), about + table + _figs(
        page.img(g, "backbones.png", "backbone pair (text + image) x fusion: the best score of each", 620),
        page.img(g, "heatmaps.png", "heatmaps: learning rate x the grid's other main axis, per fusion"),
        page.img(g, "fusions.png", "best configuration per fusion", 520))), entries


def _grids_section(grids: list[Path], page: _Page) -> tuple[str, list[tuple]]:
    built = page.each(grids, _grid)
    return "".join(b[0] for b in built) or "<p>No grids.</p>", [e for b in built for e in b[1]]


def _ensemble(e: Path, page: _Page) -> list:
    path = e / "metrics.json"
    m = read_json(path, ("members", "cv"))
    with reading(path):
        cv, best = m["cv"], m.get("best_member", {})
        metric = str(cv.get("metric", "micro_f1" if "micro_f1_mean" in cv else "macro_f1"))
        d = m.get("vs_best_member", {}).get(m.get("meta", "mean"), {})

        def n(part: dict, key: str, where: str) -> str:
            return _f(_num(part.get(key), path, f"{where}.{key}"))
        return [page.name(e), len(m["members"]), m.get("meta"),
                f"{n(cv, f'{metric}_mean', 'cv')} ± {n(cv, f'{metric}_std', 'cv')}",
                f"{n(best, f'{metric}_mean', 'best_member')} ({best.get('fusion', '')})",
                f"{number(d.get('mean', 0), path, 'vs_best_member.mean'):+.3f} ± "
                f"{number(d.get('std', 0), path, 'vs_best_member.std'):.3f}", f"{d.get('ahead', '')} of {d.get('folds', '')}"]


def _ensembles_section(ensembles: list[Path], page: _Page) -> str:
    rows = page.each(ensembles, _ensemble)
    return (_table(["ensemble", "members", "meta", "CV score", "best member", "vs best member, per fold", "folds ahead"],
                   rows, {1, 3, 4, 5}, "members are chosen on the same folds: the ensemble's CV score is optimistic")
            if rows else "<p>No ensembles.</p>")


def _finetune(r: Path, page: _Page) -> str:
    path = r / "metrics.json"
    m = read_json(path) if path.is_file() else {}
    with reading(path):
        metric, value, _ = _score(m, path) if m else ("macro_f1", None, None)
    return _card(page.name(r), f'<p>{html.escape(metric.replace("_f1", "-F1"))} {_f(value)}</p>' + _figs(
        page.img(r, "curves.png", "fine-tune curves", 520), page.img(r, "confusion.png", "confusion matrix", 420)))


def _finetune_section(runs: list[Path], page: _Page) -> str:
    return "".join(page.each(runs, _finetune)) or "<p>No fine-tune runs.</p>"


def _cache(c: Path, page: _Page) -> list:
    from ..cache import FeatureCache

    try:
        with reading(c):  # h5py's own errors on a damaged file too
            fc = FeatureCache(c, allow_incomplete=True)
    except MmfuseError as e:  # listed with its error, as a cache being written may be
        page.log(f"{page.name(c)}: {' '.join(str(e).split())}")
        return [page.name(c), str(e), "", "", "", "", "", ""]
    p = fc.provenance
    with reading(c):  # provenance entries of other types than mmfuse writes
        t, i, d = p.get("text", {}), p.get("image", {}), p.get("data", {})
        w = i.get("weights")
        weights = (w.get("name") or Path(str(w.get("file"))).name or str(w.get("sha256"))[:12]) if isinstance(w, dict) else w
        return [page.name(c), f"{Path(str(t.get('model'))).name} (max {t.get('max_length')})",
                f"{i.get('model')} ({weights})",
                f"{d.get('root')} : {d.get('split')}", len(fc), len(fc.skipped),
                f"{p.get('precision')} / {p.get('store_dtype')}", ("complete" if fc.complete else "INCOMPLETE")
                + f", {str(p.get('created', ''))[:16]}"]


def _caches_section(caches: list[Path], page: _Page) -> str:
    return _table(["cache", "text model", "image model (weights)", "data : split", "rows", "skipped",
                   "precision / stored", "state"], page.each(caches, _cache), {4, 5})


def _eda(e: Path, page: _Page) -> str:
    path = e / "eda.json"
    data = read_json(path, ("splits", "source", "max_length", "tokenizer"))
    with reading(path):  # a split without a field, a field of another type
        rows = []
        for s in data["splits"]:
            rows.append([s["split"], s["rows"], ", ".join(f"{k} {v}" for k, v in s["labels"].items())
                         if s["labelled"] else "unlabelled", len(s["encoding_fallbacks"]), len(s["failed_images"]),
                         len(s["duplicate_images"]), len(s["duplicate_texts"]), s["truncated"]])
        leaks = data.get("leaks") or {}
        leak = (f"<p>Leak check between the splits: {len(leaks.get('images', []))} images and "
                f"{len(leaks.get('texts', []))} texts appear in both.</p>") if leaks else ""
    table = _table(["split", "rows", "labels", "not UTF-8", "images that fail", "duplicate image groups",
                    "duplicate text groups", f"texts over {data['max_length']} tokens"], rows, {1, 3, 4, 5, 6, 7})
    figs = "".join(page.img(e, p, alt) for p, alt in (("labels.png", "label balance"),
                                                     ("text_length.png", f"text length ({data['tokenizer']})"),
                                                     ("image_size.png", "image sizes")))
    return _card(f"{page.name(e)}: {data['source']}", table + leak + _figs(figs))


def _eda_section(folders: list[Path], page: _Page) -> str:
    return "".join(page.each(folders, _eda)) or "<p>No inspect folders (run <code>mmfuse inspect</code>).</p>"

