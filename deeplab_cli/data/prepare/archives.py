"""Unpacking zip archives safely, for the prepare commands of datasets shipped as zips."""

from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from .download import PrepareError

MARKER_SUFFIX = ".extracted"


def extract_zip(archive: Path, dest: Path) -> list[str]:
    """Unpack ``archive`` into ``dest``; its top-level names.

    Members with absolute paths or ``..`` are refused (a corrupt or malicious archive
    cannot write outside ``dest``), and zipfile checks every member's CRC as it goes,
    so a damaged download fails here naming the archive.
    """
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                path = PurePosixPath(info.filename)
                if path.is_absolute() or ".." in path.parts:
                    raise PrepareError(
                        f"{archive} holds an unsafe path {info.filename!r}; it is not the right archive."
                    )
            for info in tqdm(members, desc=f"extract {archive.name}", unit=" files"):
                zf.extract(info, dest)
            return sorted({PurePosixPath(i.filename).parts[0] for i in members if i.filename.strip("/")})
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise PrepareError(
            f"Could not extract {archive}: {exc}. The file is damaged or incomplete; download it again."
        ) from exc
