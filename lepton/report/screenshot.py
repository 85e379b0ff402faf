"""A report page rendered to PNG with headless Chromium (``lepton report --png``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from lepton.report.data import WIDTH


class RenderError(RuntimeError):
    """Headless Chromium could not render the page."""


def browser_binary() -> str | None:
    """Headless Chromium: ``LEPTON_CHROMIUM``, else the first of the usual names on PATH."""
    named = os.environ.get("LEPTON_CHROMIUM")
    if named:
        return named
    return next((path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None)


def screenshot(html: Path, png: Path, *, width: int = WIDTH, height: int = 4000, timeout: float = 90, trim: bool = True) -> Path:
    """Render ``html`` with headless Chromium into ``png`` (``width`` wide), cropped below the page's content.

    Chromium only captures its window, so the window is tall and the empty bottom is cut;
    a page taller than the window is rendered again in a taller one.
    """
    binary = browser_binary()
    if binary is None:
        raise RenderError("no Chromium found: install it (Debian: apt-get install chromium) or set LEPTON_CHROMIUM to its path")
    png = png.resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    while True:
        _run_chromium(binary, html.resolve(), png, width, height, timeout)
        if not trim or _trim(png):
            return png
        if height >= 32000:
            return png  # Chromium's limit: keep the top of an enormous page
        height *= 2


def _run_chromium(binary: str, html: Path, png: Path, width: int, height: int, timeout: float) -> None:
    with tempfile.TemporaryDirectory(prefix="lepton-chromium-") as profile:
        command = [
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--disable-dev-shm-usage", "--force-device-scale-factor=1",
            # A profile of its own: a second render (or a user's browser) never shares its lock.
            f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={width},{height}", html.as_uri(),
        ]
        if png.exists():
            png.unlink()
        # Its own process group: on a timeout, the renderer and GPU helpers go with it.
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, text=True)
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise RenderError(f"Chromium did not render {html} within {timeout:.0f}s") from None
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # helpers that outlive the browser process
            except ProcessLookupError:
                pass
        if proc.returncode != 0 or not png.exists():
            tail = "\n".join(stderr.strip().splitlines()[-5:])
            raise RenderError(f"Chromium exited with {proc.returncode} without writing {png}: {tail}")


def _trim(png: Path, margin: int = 24) -> bool:
    """Cut the rows below the content (the page's background colour); False when there is no such margin."""
    from PIL import Image

    with Image.open(png) as image:
        pixels = np.asarray(image.convert("RGB"))
    background = pixels[-1, 0]
    rows = np.any(np.abs(pixels.astype(int) - background.astype(int)).sum(axis=2) > 0, axis=1)
    content = np.flatnonzero(rows)
    bottom = (content[-1] + 1) if len(content) else 0
    if pixels.shape[0] - bottom < margin:
        return False  # content reaches the bottom of the window: the page may go on
    Image.fromarray(pixels[: bottom + margin]).save(png)
    return True
