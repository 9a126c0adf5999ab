"""One self-contained, static HTML page of everything mmfuse wrote: data (``inspect``), caches, head runs,
grids, ensembles and fine-tune runs. Images are embedded as data URIs; no CDN, no JavaScript.
"""
from __future__ import annotations

import base64
import html
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MmfuseError
from .grid import _varied, final_rows, primary, score, stopped_rows

KINDS = ("eda", "cache", "run", "grid", "ensemble", "finetune")
MARKERS = {"eda.json": "eda", "grid.json": "grid", "ensemble.json": "ensemble", "finetune.json": "finetune"}


@dataclass
class Found:
    eda: list[Path] = field(default_factory=list)
    cache: list[Path] = field(default_factory=list)
    run: list[Path] = field(default_factory=list)
    grid: list[Path] = field(default_factory=list)
    ensemble: list[Path] = field(default_factory=list)
    finetune: list[Path] = field(default_factory=list)


def kind_of(path: Path) -> str | None:
    """What mmfuse wrote at ``path``, or None."""
    if path.is_file():
        if path.suffix == ".h5" and ".shard-" not in path.name:
            try:
                import h5py
                with h5py.File(path, "r") as f:
                    return "cache" if f.attrs.get("format") == "mmfuse-cache" else None
            except OSError:
                return None
        return None
    for marker, kind in MARKERS.items():
        if (path / marker).is_file():
            return kind
    if (path / "metrics.json").is_file() and (path / "config.json").is_file():
        return "run"  # a train-head run or a grid's best/ (bagged fold models)
    return None


def discover(paths: list[str | Path]) -> Found:
    """Everything mmfuse wrote under ``paths`` (each a result itself or a parent searched for them); the
    insides of results (an ensemble's members, a grid's best/ and fold models) are not listed again."""
    found, seen = Found(), set()
    for root in map(Path, paths):
        if not root.exists():
            raise MmfuseError(f"{root} does not exist")
        todo = [root]
        while todo:
            path = todo.pop()
            if path.resolve() in seen:  # the same folder given twice, or reached through a link
                continue
            seen.add(path.resolve())
            kind = kind_of(path)
            if kind:
                getattr(found, kind).append(path)
                continue
            if path.is_dir() and path.name not in (".venv", ".git", "__pycache__", "oof"):
                todo.extend(p for p in sorted(path.iterdir(), reverse=True) if not (p.is_symlink() and p.is_dir()))
    for kind in KINDS:
        setattr(found, kind, sorted(getattr(found, kind)))
    if not any(getattr(found, k) for k in KINDS):
        raise MmfuseError(f"nothing mmfuse wrote was found in {', '.join(map(str, paths))} (run folders, grid "
                          "folders, .h5 caches, inspect folders)")
    return found


def _img(path: Path, alt: str, width: int | None = None) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    style = f' style="max-width:{width}px"' if width else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}"{style}><figcaption>{html.escape(alt)}</figcaption></figure>'


def _fig(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def _table(headers: list[str], rows: list[list], numeric: set[int] | None = None, caption: str = "") -> str:
    numeric = numeric or set()
    head = "".join(f'<th class="{"num" if i in numeric else ""}">{html.escape(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="{"num" if i in numeric else ""}">{c if isinstance(c, Markup) else html.escape(str(c))}</td>'
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _card(title: str, body: str) -> str:
    return f'<div class="card"><h3>{html.escape(title)}</h3>{body}</div>'


def _figs(*figures: str) -> str:
    return f'<div class="figs">{"".join(figures)}</div>'


class Markup(str):
    """A table cell that is already HTML."""


def _f(x, digits: int = 3) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _name(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _score(m: dict) -> tuple[str, float | None, float | None]:
    """(metric name, value, fold std or None) of a run's metrics.json: validation or CV."""
    if "validation" in m:
        v = m["validation"]
        name = "micro_f1" if "micro_f1" in v else "macro_f1"
        return name, v.get(name), None
    cv = m.get("cv", {})
    name = "micro_f1" if "micro_f1_mean" in cv else "macro_f1"
    return name, cv.get(f"{name}_mean"), cv.get(f"{name}_std")


def _runs_section(runs: list[Path], base: Path) -> tuple[str, list[dict]]:
    rows, cards, summary = [], [], []  # rows: (score for the order, table row)
    for run in runs:
        m = json.loads((run / "metrics.json").read_text())
        cfg = json.loads((run / "config.json").read_text())
        metric, value, std = _score(m)
        kind = "grid best/ (fold models)" if (run / "bagged.json").is_file() else "train-head"
        v = m.get("validation", {})
        acc = v.get("accuracy", m.get("cv", {}).get("accuracy_mean"))
        weights = m.get("modality_weights")
        rows.append((value or 0.0, [_name(run, base), kind, cfg.get("fusion"), m.get("text_feature", cfg.get("text_feature")),
                                    metric.replace("_f1", "-F1"), _f(value) + (f" ± {_f(std)}" if std is not None else ""),
                                    _f(acc), _f(m.get("fit_seconds"), 2),
                                    ", ".join(f"{k} {w:.2f}" for k, w in weights.items()) if weights else ""]))
        summary.append({"name": _name(run, base), "fusion": cfg.get("fusion"), "score": value, "std": std, "metric": metric})
        plots = "".join(_img(run / p, f"{_name(run, base)}: {alt}", 520) for p, alt in (
            ("curves.png", "training curves"), ("confusion.png", "confusion matrix"),
            ("label_f1.png", "per-label F1"), ("thresholds.png", "F1 against the threshold")))
        if plots:
            cards.append(_card(f"{_name(run, base)} ({cfg.get('fusion')})", _figs(plots)))
    table = _table(["run", "kind", "fusion", "text vector", "metric", "score", "accuracy", "fit (s)",
                    "learned modality weights"], [r for _, r in sorted(rows, key=lambda r: -r[0])], {5, 6, 7},
                   "validation scores of train-head runs; CV mean ± fold std of grid picks. Best first.")
    return table + "".join(cards), summary


def _ablation(summary: list[dict], grids: list[Path]) -> str:
    """Text-only vs image-only vs each fusion: the best score per fusion (runs and grid rows)."""
    from .metrics import _plt

    best: dict[str, tuple[float, float | None]] = {}
    for s in summary:
        if s["score"] is not None and (s["fusion"] not in best or s["score"] > best[s["fusion"]][0]):
            best[s["fusion"]] = (s["score"], s["std"])
    for g in grids:
        for r in final_rows(g):  # scored as the grid scores: micro-F1 multi-label, else macro-F1
            if r["fusion"] not in best or score(r) > best[r["fusion"]][0]:
                best[r["fusion"]] = (score(r), r[f"{primary(r)}_std"])
    if not best:
        return "<p>No runs to compare.</p>"
    order = sorted(best, key=lambda f: (f not in ("text", "image"), -best[f][0]))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.0 * len(order) + 3, 3.4))
    colors = ["C1" if f in ("text", "image") else "C0" for f in order]
    ax.bar(range(len(order)), [best[f][0] for f in order], yerr=[best[f][1] or 0 for f in order], capsize=4, color=colors)
    ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
    low = min(best[f][0] - (best[f][1] or 0) for f in order)
    ax.set_ylim(max(0, low - 0.05), None)
    ax.set_ylabel("best score (± fold std where known)")
    ax.set_title("ablation: unimodal (orange) vs fusion (blue); macro-F1, multi-label micro-F1")
    fig.tight_layout()
    out = _fig(fig, "ablation: the best score of each fusion and of the text-only and image-only heads")
    plt.close(fig)
    return out


def _grids_section(grids: list[Path], base: Path) -> str:
    parts = []
    for g in grids:
        info = json.loads((g / "grid.json").read_text())
        rows, stopped = final_rows(g), stopped_rows(g)  # best first; those that ran every split
        metric = primary(rows[0]) if rows else "macro_f1"
        axes = _varied(rows) or ["fusion"]
        top = [[i + 1, *[r[a] for a in axes], f"{score(r):.3f} ± {r[f'{metric}_std']:.3f}",
                f"{r['seconds_per_fit']:.2f}"] for i, r in enumerate(rows[:10])]
        table = _table(["rank", *axes, metric.replace("_f1", "-F1"), "s/fit"], top, {0, len(axes) + 1, len(axes) + 2},
                       f"top 10 of {len(rows)} configurations, {info.get('folds')}-fold CV"
                       + (f" ({len(stopped)} more stopped early by successive halving, on fewer folds)" if stopped else ""))
        about = (f'<p>cache {html.escape(str(info.get("cache")))}, {info.get("rows")} rows, precision '
                 f'{html.escape(", ".join(info.get("precision") or []))}</p>')
        parts.append(_card(_name(g, base), about + table + _figs(
            _img(g / "heatmaps.png", "heatmaps: learning rate x the grid's other main axis, per fusion"),
            _img(g / "fusions.png", "best configuration per fusion", 520))))
    return "".join(parts) or "<p>No grids.</p>"


def _ensembles_section(ensembles: list[Path], base: Path) -> str:
    rows = []
    for e in ensembles:
        m = json.loads((e / "metrics.json").read_text())
        cv, best = m.get("cv", {}), m.get("best_member", {})
        metric = cv.get("metric", "micro_f1" if "micro_f1_mean" in cv else "macro_f1")
        d = m.get("vs_best_member", {}).get(m.get("meta", "mean"), {})
        rows.append([_name(e, base), len(m.get("members", [])), m.get("meta"),
                     f"{_f(cv.get(f'{metric}_mean'))} ± {_f(cv.get(f'{metric}_std'))}",
                     f"{_f(best.get(f'{metric}_mean'))} ({best.get('fusion', '')})",
                     f"{d.get('mean', 0):+.3f} ± {d.get('std', 0):.3f}", f"{d.get('ahead', '')} of {d.get('folds', '')}"])
    return (_table(["ensemble", "members", "meta", "CV score", "best member", "vs best member, per fold", "folds ahead"],
                   rows, {1, 3, 4, 5}, "members are chosen on the same folds: the ensemble's CV score is optimistic")
            if rows else "<p>No ensembles.</p>")


def _finetune_section(runs: list[Path], base: Path) -> str:
    parts = []
    for r in runs:
        m = json.loads((r / "metrics.json").read_text()) if (r / "metrics.json").is_file() else {}
        metric, value, _ = _score(m) if m else ("macro_f1", None, None)
        parts.append(_card(_name(r, base), f'<p>{metric.replace("_f1", "-F1")} {_f(value)}</p>' + _figs(
            _img(r / "curves.png", "fine-tune curves", 520), _img(r / "confusion.png", "confusion matrix", 420))))
    return "".join(parts) or "<p>No fine-tune runs.</p>"


def _caches_section(caches: list[Path], base: Path) -> str:
    from .cache import FeatureCache

    rows = []
    for c in caches:
        try:
            fc = FeatureCache(c, allow_incomplete=True)
        except MmfuseError as e:
            rows.append([_name(c, base), str(e), "", "", "", "", "", ""])
            continue
        p = fc.provenance
        t, i, d = p.get("text", {}), p.get("image", {}), p.get("data", {})
        w = i.get("weights")
        weights = (w.get("name") or Path(str(w.get("file"))).name or str(w.get("sha256"))[:12]) if isinstance(w, dict) else w
        rows.append([_name(c, base), f"{Path(str(t.get('model'))).name} (max {t.get('max_length')})",
                     f"{i.get('model')} ({weights})",
                     f"{d.get('root')} : {d.get('split')}", len(fc), len(fc.skipped),
                     f"{p.get('precision')} / {p.get('store_dtype')}", ("complete" if fc.complete else "INCOMPLETE")
                     + f", {str(p.get('created', ''))[:16]}"])
    return _table(["cache", "text model", "image model (weights)", "data : split", "rows", "skipped",
                   "precision / stored", "state"], rows, {4, 5})


def _eda_section(folders: list[Path], base: Path) -> str:
    parts = []
    for e in folders:
        data = json.loads((e / "eda.json").read_text())
        rows = []
        for s in data["splits"]:
            n = s["rows"]
            rows.append([s["split"], n, ", ".join(f"{k} {v}" for k, v in s["labels"].items()) if s["labelled"] else "unlabelled",
                         len(s["encoding_fallbacks"]), len(s["failed_images"]), len(s["duplicate_images"]),
                         len(s["duplicate_texts"]), s["truncated"]])
        leaks = data.get("leaks") or {}
        leak = (f"<p>Leak check between the splits: {len(leaks.get('images', []))} images and "
                f"{len(leaks.get('texts', []))} texts appear in both.</p>") if leaks else ""
        table = _table(["split", "rows", "labels", "not UTF-8", "images that fail", "duplicate image groups",
                        "duplicate text groups", f"texts over {data['max_length']} tokens"], rows, {1, 3, 4, 5, 6, 7})
        figs = "".join(_img(e / p, alt) for p, alt in (("labels.png", "label balance"),
                                                      ("text_length.png", f"text length ({data['tokenizer']})"),
                                                      ("image_size.png", "image sizes")))
        parts.append(_card(f"{_name(e, base)}: {data['source']}", table + leak + _figs(figs)))
    return "".join(parts) or "<p>No inspect folders (run <code>mmfuse inspect</code>).</p>"


CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}header p{margin:4px 0 0;color:#c9cfdb}
nav{padding:8px 32px;background:#e9ecf2;font-size:14px}nav a{margin-right:16px;color:#254e9c;text-decoration:none}
main{padding:8px 32px 40px;max-width:1280px}section{margin-top:28px}h2{border-bottom:2px solid #d5dae4;padding-bottom:4px}
.card{background:#fff;border:1px solid #dde2ea;border-radius:6px;padding:12px 16px;margin:14px 0}.card h3{margin:0 0 8px;font-size:16px}
table{border-collapse:collapse;margin:8px 0;font-size:14px;background:#fff}caption{caption-side:bottom;text-align:left;color:#5b6475;font-size:13px;padding-top:4px}
th,td{border:1px solid #dde2ea;padding:4px 10px;text-align:left}th{background:#eef1f6;white-space:nowrap}
th::after{content:" \\2195";color:#9aa3b5;font-size:11px}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#f8f9fb}.figs{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0}figure img{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:13px;color:#5b6475}
"""


def build_report(paths: list[str | Path], out: str | Path, title: str = "mmfuse report") -> Path:
    """Write the report of everything found under ``paths`` to ``out`` (an .html file)."""
    out = Path(out)
    found = discover(paths)
    base = Path.cwd()
    runs, summary = _runs_section(found.run, base)
    sections = [
        ("data", "Data (mmfuse inspect)", _eda_section(found.eda, base)),
        ("caches", "Feature caches and their provenance", _caches_section(found.cache, base) if found.cache else "<p>No caches.</p>"),
        ("ablation", "Ablation: text only, image only, each fusion", _ablation(summary, found.grid)),
        ("runs", "Runs", runs if found.run else "<p>No head runs.</p>"),
        ("grids", "Grids", _grids_section(found.grid, base)),
        ("ensembles", "Ensembles against their best member", _ensembles_section(found.ensemble, base)),
        ("finetune", "Fine-tune runs", _finetune_section(found.finetune, base)),
    ]
    counts = ", ".join(f"{len(getattr(found, k))} {k}{'s' if len(getattr(found, k)) != 1 else ''}" for k in KINDS)
    nav = "".join(f'<a href="#{sid}">{html.escape(t.split(":")[0])}</a>' for sid, t, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{html.escape(t)}</h2>{content}</section>' for sid, t, content in sections)
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width,initial-scale=1"><title>{html.escape(title)}</title><style>{CSS}</style></head>'
            f'<body><header><h1>{html.escape(title)}</h1><p>{counts}; written {time.strftime("%Y-%m-%d %H:%M")} '
            f'from {html.escape(", ".join(map(str, paths)))}</p></header><nav>{nav}</nav><main>{body}</main></body></html>\n')
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(page)
    tmp.replace(out)
    return out
