"""The report page's HTML pieces: embedded PNG plots (only PNG files inside the scanned folder), tables,
cards, number formatting, and the state the sections share (:class:`Page`)."""
from __future__ import annotations

import base64
import html
import io
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import MmfuseError
from ..safe import number


PNG = b"\x89PNG\r\n\x1a\n"


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

