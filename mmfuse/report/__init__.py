"""One self-contained, static HTML page of everything mmfuse wrote: data (``inspect``), caches, head runs,
grids, ensembles and fine-tune runs. Images are embedded as data URIs; no CDN, no JavaScript.
"""
from __future__ import annotations

import html
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import MmfuseError
from ..outputs import new_file
from ._html import _Page
from ._sections import (_ablation, _caches_section, _eda_section, _ensembles_section, _finetune_section,
                        _grids_section, _runs_section)


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


def _stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)  # sys.stderr looked up now: a test runner may have swapped it



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
