"""The explore page: one self-contained HTML file (its script, pictures and maps inline; no network)."""
from __future__ import annotations

import errno
import html
import json
import os
import re
import stat
from importlib import resources
from pathlib import Path
from typing import Any

from ..extract.results import ResultSet, load_run
from ..files import atomic_write, broken_link, file_kind
from .data import page_data

__all__ = ["Explorer", "check_page", "explore", "render_page"]

#: characters the page's JSON writes as ``\uXXXX``: no text from the data (an image's file name) can close or
#: open anything in its ``<script>`` (``</script>``, ``<!--<script>``); U+2028/U+2029 for older JavaScript parsers
_JSON_ESCAPES = {ord(ch): f"\\u{ord(ch):04x}" for ch in "<>&\u2028\u2029"}


def render_page(data: dict[str, Any]) -> str:
    """The HTML of the page showing ``data`` (:func:`~nlanalysis.explore.data.page_data`)."""
    folder = resources.files(__package__)
    text = (folder / "page.html").read_text(encoding="utf-8")
    parts = {
        "TITLE": html.escape(f"{Path(data['run']).name}: {len(data['images'])} images, {len(data['sites'])} sites"),
        "SCRIPT": (folder / "viewer.js").read_text(encoding="utf-8"),
        "DATA": json.dumps(data, separators=(",", ":")).translate(_JSON_ESCAPES),
    }
    return re.sub(r"\{\{(TITLE|SCRIPT|DATA)\}\}", lambda m: parts[m.group(1)], text)  # one pass: no part is read as a slot


class Explorer:
    """The page of one result set: :attr:`html`, :meth:`save`, and shown inline in Jupyter (``_repr_html_``).

    Attributes:
        run: the result set.
        data: what the page shows (:func:`~nlanalysis.explore.data.page_data`).
    """

    def __init__(self, run: ResultSet, data: dict[str, Any]) -> None:
        self.run, self.data = run, data
        self._html: str | None = None

    @property
    def html(self) -> str:
        if self._html is None:
            self._html = render_page(self.data)
        return self._html

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the page to ``path`` (atomically: a temporary file beside it, then renamed) and return it.

        Raises:
            IsADirectoryError: ``path`` is a folder.
            ValueError: ``path`` is no ``.html`` name, or a file that is not an explore page (:func:`check_page`).
        """
        path = check_page(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, encoding="utf-8", unique=True) as f:  # unique: no two writers share its temporary file
            f.write(self.html)
        return path

    def _repr_html_(self) -> str:
        """The page in an ``<iframe>`` (its own document: its script and styles stay in it)."""
        return f'<iframe srcdoc="{html.escape(self.html, quote=True)}" style="width:100%;height:720px;border:0"></iframe>'


def check_page(path: str | os.PathLike[str]) -> Path:
    """``path`` as a name an explore page may be written to: an ``.html`` name that is new or holds an explore page
    (whose first bytes are the page's own), never a folder or any other file (a run's ``metrics.csv``, say).

    Raises:
        IsADirectoryError: ``path`` is a folder.
        ValueError: what else is wrong, naming ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{path} is a folder: give the page's file name (e.g. {path / 'explore.html'})")
    if path.suffix.lower() != ".html":
        raise ValueError(f"{path}: an explore page is an .html file; give a name ending in .html")
    if not os.path.lexists(path):
        return path
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):  # never opened: opening a named pipe waits for a writer
            raise ValueError(f"{path}: {file_kind(mode)}, not an explore page; give another name")
        with open(path, "rb") as f:
            head = f.read(len(_PAGE_HEAD))
    except OSError as err:
        raise ValueError(f"{path}: {broken_link(path) or 'cannot be read'}, so not known to be an explore page "
                         f"({err.strerror or err}); give another name") from None  # fmt: skip
    if head != _PAGE_HEAD:
        raise ValueError(f"{path}: a file that nlanalysis explore did not write (not an explore page); explore replaces "
                         "only its own pages: give another name")  # fmt: skip
    return path


#: how every explore page begins (the template up to its title): what :func:`check_page` recognises
_PAGE_HEAD = (resources.files(__package__) / "page.html").read_text(encoding="utf-8").split("{{TITLE}}")[0].encode()


def explore(run: ResultSet | str | os.PathLike[str], image_ids: list[Any] | None = None,
            image_root: str | os.PathLike[str] | None = None) -> Explorer:  # fmt: skip
    """The explore page of a result set (a folder or a loaded :class:`~nlanalysis.extract.results.ResultSet`).

    Args:
        run: the run (made with ``--save-maps all`` to hover every query; with chosen queries, those).
        image_ids: only these images (default: every image with saved maps).
        image_root: where the image files are, when not where the run found them.
    """
    if not isinstance(run, ResultSet):
        run = load_run(run)
    return Explorer(run, page_data(run, image_ids, None if image_root is None else os.fspath(image_root)))
