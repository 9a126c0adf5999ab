"""One self-contained, static HTML page of everything mmfuse wrote: data (``inspect``), caches, head runs,
grids, ensembles and fine-tune runs. Images are embedded as data URIs; no CDN, no JavaScript.
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import MmfuseError
from .outputs import new_file
from .grid import final_rows, primary, score, stopped_rows, varied_fields as _varied
from .safe import corrupt, number, read_json, reading

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
                todo.extend(p for p in sorted(path.iterdir(), reverse=True) if not (p.is_symlink() and p.is_dir())
                            and not _unfinished(p))
    for kind in KINDS:
        setattr(found, kind, sorted(getattr(found, kind)))
    if not any(getattr(found, k) for k in KINDS):
        raise MmfuseError(f"nothing mmfuse wrote was found in {', '.join(map(str, paths))} (run folders, grid "
                          "folders, .h5 caches, inspect folders)")
    return found


def _unfinished(path: Path) -> bool:
    """An output being written or left by a killed writer (``.NAME.partial-PID``, ``CACHE.partial``,
    ``RUN.partial``): not a result to show."""
    return path.name.startswith(".") or path.name.endswith((".partial", ".creating", ".lock"))


PNG = b"\x89PNG\r\n\x1a\n"


def _stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)  # sys.stderr looked up now: a test runner may have swapped it


def _read_png(folder: Path, path: Path) -> bytes | str:
    """The bytes of ``path`` if it is a PNG file inside ``folder``, else why not."""
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            return "a symbolic link"
        if not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder)):
            return "outside the scanned folder"
        # O_NOFOLLOW: not through a link swapped in since the check; O_NONBLOCK: a FIFO cannot hang the report
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return "not a regular file"
            data = f.read()
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    return data if data.startswith(PNG) else "not a PNG file"


@dataclass
class _Page:
    """What the sections share: names relative to ``base``, the warning ``log``, the folders left out."""
    base: Path
    log: Callable[[str], None]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def name(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.base))
        except ValueError:
            return str(path)

    def each(self, folders: list[Path], build: Callable) -> list:
        """``build(folder, self)`` for each folder; one whose files are damaged is left out with a warning."""
        built = []
        for folder in folders:
            try:
                built.append(build(folder, self))
            except MmfuseError as e:
                message = " ".join(str(e).split())  # one line, whatever the file held
                self.skipped.append((self.name(folder), message))
                self.log(f"skipped {self.name(folder)}: {message}")
        return built

    def img(self, folder: Path, file: str, alt: str, width: int | None = None) -> str:
        """``folder/file`` embedded; a link (to any readable file: a secret, say), a file outside ``folder``
        or anything but a PNG is left out with a note, so the page holds only the plots mmfuse drew."""
        path = folder / file
        if not os.path.lexists(path):
            return ""  # a plot this kind of run does not draw
        data = _read_png(folder, path)
        if isinstance(data, str):
            self.log(f"{self.name(path)} left out: {data}")
            return (f'<p class="note">{html.escape(file)} left out: {html.escape(data)} (only PNG files inside the '
                    'scanned folder are embedded)</p>')
        style = f' style="max-width:{width}px"' if width else ""
        return (f'<figure><img src="data:image/png;base64,{base64.b64encode(data).decode()}" alt="{html.escape(alt)}"'
                f'{style}><figcaption>{html.escape(alt)}</figcaption></figure>')


def _fig(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def _table(headers: list[str], rows: list[list], numeric: set[int] | None = None, caption: str = "") -> str:
    """Every header, cell and the caption escaped: they hold names and values read from files."""
    numeric = numeric or set()
    head = "".join(f'<th class="{"num" if i in numeric else ""}">{html.escape(str(h))}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="{"num" if i in numeric else ""}">{html.escape(str(c))}</td>'
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _card(title: str, body: str) -> str:
    return f'<div class="card"><h3>{html.escape(title)}</h3>{body}</div>'


def _figs(*figures: str) -> str:
    return f'<div class="figs">{"".join(figures)}</div>'


def _f(x, digits: int = 3) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _num(value, path: Path, name: str) -> float | None:
    """A number of a file, or None where absent; a string there is a CorruptFileError naming the field."""
    return None if value is None else number(value, path, name)


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
    from .plots import pyplot as _plt

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
    from .cache import FeatureCache

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
.note{color:#8a5a00;font-size:13px}.warn{border-color:#e0b44c;background:#fff8e6}
"""


def build_report(paths: list[str | Path], out: str | Path, title: str = "mmfuse report",
                 log: Callable[[str], None] = _stderr, overwrite: bool = False) -> Path:
    """Write the report of everything found under ``paths`` to ``out`` (an .html file; an existing one is
    replaced only with ``overwrite``). A folder whose files are damaged is left out (listed at the top, and
    one ``log`` line each); so is a plot that is not a PNG file."""
    out = Path(out)
    found = discover(paths)
    page = _Page(Path.cwd(), log)
    runs, entries = _runs_section(found.run, page)
    grids, grid_entries = _grids_section(found.grid, page)
    sections = [
        ("data", "Data (mmfuse inspect)", _eda_section(found.eda, page)),
        ("caches", "Feature caches and their provenance", _caches_section(found.cache, page) if found.cache else "<p>No caches.</p>"),
        ("ablation", "Ablation: text only, image only, each fusion", _ablation(entries + grid_entries)),
        ("runs", "Runs", runs if found.run else "<p>No head runs.</p>"),
        ("grids", "Grids", grids),
        ("ensembles", "Ensembles against their best member", _ensembles_section(found.ensemble, page)),
        ("finetune", "Fine-tune runs", _finetune_section(found.finetune, page)),
    ]
    counts = ", ".join(f"{len(getattr(found, k))} {k}{'s' if len(getattr(found, k)) != 1 else ''}" for k in KINDS)
    nav = "".join(f'<a href="#{sid}">{html.escape(t.split(":")[0])}</a>' for sid, t, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{html.escape(t)}</h2>{content}</section>' for sid, t, content in sections)
    if page.skipped:
        counts += f"; {len(page.skipped)} left out, unreadable"
        body = (f'<div class="card warn"><h3>Left out: {len(page.skipped)} folder(s) whose files could not be read</h3>'
                f'<ul>{"".join(f"<li>{html.escape(n)}: {html.escape(m)}</li>" for n, m in page.skipped)}</ul></div>' + body)
    text = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width,initial-scale=1"><title>{html.escape(title)}</title><style>{CSS}</style></head>'
            f'<body><header><h1>{html.escape(title)}</h1><p>{counts}; written {time.strftime("%Y-%m-%d %H:%M")} '
            f'from {html.escape(", ".join(map(str, paths)))}</p></header><nav>{nav}</nav><main>{body}</main></body></html>\n')
    with new_file(out, overwrite, "report") as tmp:  # renamed into place when whole; replaces only with overwrite
        tmp.write_text(text, encoding="utf-8", errors="replace")  # a "\ud800" in a JSON file is a lone surrogate
    return out
