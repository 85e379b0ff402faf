"""The demo's data: class-incremental handwritten digits in five increments, and one broken export among them."""

from __future__ import annotations

from pathlib import Path

LABEL = "digit"
MODEL = "digits"
SETTINGS = {"data": {"bounds": {"*": [0, 16]}}}  # pixel intensities are 0-16


def write_increments(folder: Path) -> list[Path]:
    """The demo's increment files in arrival order, written to ``folder``: a broken one (a pixel column lost) after the third."""
    from lepton.models.datasets import CLASS_ORDER, class_incremental

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (frame, classes) in enumerate(zip(class_incremental(), CLASS_ORDER, strict=True), start=1):
        path = folder / f"digits-{i}-classes-{classes[0]}{classes[1]}.parquet"
        frame.to_parquet(path, index=False)
        files.append(path)
        if i == 3:
            broken = folder / "digits-broken-missing-pixel_10.parquet"
            frame.drop(columns=["pixel_10"]).to_parquet(broken, index=False)
            files.append(broken)
    return files
