"""Files for the PASCAL VOC evaluation server (http://host.robots.ox.ac.uk:8080/).

The server expects an archive holding ``results/VOC2012/Segmentation/comp6_test_cls/<id>.png``
(comp6: trained with data beyond VOC, e.g. SBD or COCO), one palette PNG per test image.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

RESULTS_SUBDIR = Path("results") / "VOC2012" / "Segmentation" / "comp6_test_cls"


def results_dir(run_dir: Path) -> Path:
    """Where the per-image PNGs go; created on demand."""
    out = run_dir / RESULTS_SUBDIR
    out.mkdir(parents=True, exist_ok=True)
    return out


def archive_results(run_dir: Path) -> Path:
    """``results.tar.gz`` with the ``results/`` tree at its root, ready to upload."""
    archive = run_dir / "results.tar.gz"
    tmp = archive.with_suffix(".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(run_dir / "results", arcname="results")
    tmp.replace(archive)
    return archive
