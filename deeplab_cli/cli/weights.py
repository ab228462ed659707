"""``deeplab-weights``: the weights catalogue: list it, see where each file is looked for, verify, download.

Usage::

    deeplab-weights list [PATTERN] [--kind imagenet|segmentation] [--preset NAME] [--present]
    deeplab-weights where [ID ...]
    deeplab-weights verify FILE [--entry ID]
    deeplab-weights download ID [--dir DIR]

``verify`` hashes the file and names the catalogue entry it is. With ``--entry``, or
when the file's name is an entry's file name, a different hash is refused (exit 1)
with both hashes. ``download`` fetches an entry's URL into torch hub's cache (or
``--dir``) and keeps the file only when its sha256 is the catalogue's: run it on a
machine with internet, then copy the file to the same place on an offline one.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path

from ..errors import DeepLabError, user_message
from ..models.weights import catalogue
from ..models.weights.catalogue import Entry
from ..models.weights.verify import WeightsHashError, check_file, download_verified, sha256_file


def _matches(entry: Entry, args: argparse.Namespace) -> bool:
    if args.pattern and not fnmatch.fnmatch(entry.id.lower(), f"*{args.pattern.lower()}*"):
        return False
    if args.kind and entry.kind != args.kind:
        return False
    if args.preset and args.preset not in entry.presets:
        return False
    return not args.present or catalogue.present_file(entry) is not None


def _fits(entry: Entry) -> str:
    return ", ".join(f"{k}={v}" for k, v in entry.fits.items())


def cmd_list(args: argparse.Namespace) -> int:
    rows = [e for e in catalogue.load_catalogue() if _matches(e, args)]
    if not rows:
        print("no catalogue entry matches; `deeplab-weights list` shows them all", file=sys.stderr)
        return 1
    print("| id | kind | fits | presets | preprocess (mean / std) | licence | size | sha256 | here |")
    print("|---|---|---|---|---|---|---|---|---|")
    for e in rows:
        pre = f"{e.preprocess['mean']} / {e.preprocess['std']}" + (" BGR" if e.preprocess.get("bgr") else "")
        here = "yes" if catalogue.present_file(e) is not None else "no"
        presets = ", ".join(e.presets) or "(model.init_from)"
        print(
            f"| {e.id} | {e.kind} | {_fits(e)} | {presets} | {pre} | {e.licence or 'not stated'} | {e.size_text} "
            f"| {e.hash_text} | {here} |"
        )
    print(f"\n{len(rows)} entries; `deeplab-weights where ID` lists where each file is looked for.")
    return 0


def cmd_where(args: argparse.Namespace) -> int:
    entries = [catalogue.get_entry(i) for i in args.ids] if args.ids else list(catalogue.load_catalogue())
    for entry in entries:
        print(f"{entry.id}  ({entry.kind}; {entry.size_text}; sha256 {entry.hash_text})")
        for loc in catalogue.locations(entry):
            if loc.path is None:
                print(f"  {loc.source.kind:8s} {loc.source.describe()}  (a page: download by hand)")
                continue
            state = "present" if loc.present else "absent"
            print(f"  {loc.source.kind:8s} {loc.path}  [{state}]  <- {loc.source.describe()}")
        if entry.note:
            print(f"  note: {entry.note}")
    return 0


def _expected_by_name(path: Path) -> Entry | None:
    """The entry whose package file, URL or Hugging Face file has ``path``'s name, if exactly one."""
    found = []
    for entry in catalogue.load_catalogue():
        names = {(s.path or "").rsplit("/", 1)[-1] if s.kind == "package" else s.location.rsplit("/", 1)[-1]
                 for s in entry.sources if s.kind in ("package", "url")}  # fmt: skip
        if path.name in names:
            found.append(entry)
    return found[0] if len(found) == 1 else None


def cmd_verify(args: argparse.Namespace) -> int:
    path = Path(args.file).expanduser()
    if not path.is_file():
        raise DeepLabError(f"{path} does not exist or is not a file; pass the weights file to check.")
    expected = catalogue.get_entry(args.entry) if args.entry else _expected_by_name(path)
    if expected is not None:
        digest = check_file(path, expected)  # WeightsHashError: refused, with both hashes
        kind = "sha256" if expected.sha256 else "sha256 prefix"
        if not (expected.sha256 or expected.sha256_prefix):
            print(f"{path}: sha256 {digest}; {expected.id} publishes no hash, so it cannot be verified")
            return 0
        print(f"{path}: OK, {expected.id} ({kind} matches; sha256 {digest}, {path.stat().st_size} bytes)")
        return 0
    digest = sha256_file(path)
    match = catalogue.find_by_hash(digest)
    if match is None:
        print(f"{path}: sha256 {digest}, {path.stat().st_size} bytes: not in the weights catalogue")
        return 1
    print(f"{path}: OK, {match.id} (sha256 {digest}, {path.stat().st_size} bytes)")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    entry = catalogue.get_entry(args.id)
    urls = entry.sources_of("url")
    if not urls:
        ways = "; ".join(s.describe() for s in entry.sources)
        raise DeepLabError(f"{entry.id} has no direct download URL: get it with {ways}.")
    url = urls[0].location
    dest = Path(args.dir).expanduser() / url.rsplit("/", 1)[-1] if args.dir else None
    path = download_verified(url, entry, dest)
    print(f"{path}: {entry.id}, sha256 {sha256_file(path)} (checked against {entry.hash_text})")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deeplab-weights", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="the catalogue as a table (filterable)")
    ls.add_argument("pattern", nargs="?", help="part of an id, e.g. lite or resnet101")
    ls.add_argument("--kind", choices=("imagenet", "segmentation"))
    ls.add_argument("--preset", help="entries a model= preset loads, e.g. deeplabv3plus_resnet101")
    ls.add_argument("--present", action="store_true", help="only files present on this machine")
    ls.set_defaults(run=cmd_list)
    where = sub.add_parser("where", help="where each file is looked for, and whether it is there")
    where.add_argument("ids", nargs="*")
    where.set_defaults(run=cmd_where)
    verify = sub.add_parser("verify", help="hash a file and name its catalogue entry; refuse a corrupt copy")
    verify.add_argument("file")
    verify.add_argument("--entry", help="the entry the file must be")
    verify.set_defaults(run=cmd_verify)
    download = sub.add_parser("download", help="download an entry's file, kept only if its sha256 matches")
    download.add_argument("id")
    download.add_argument("--dir", help="folder to write to (default: torch hub's checkpoints/)")
    download.set_defaults(run=cmd_download)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except WeightsHashError as exc:
        print(f"Refused: {user_message(exc)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `deeplab-weights list | head`
        sys.stderr.close()
        return 0
    except DeepLabError as exc:
        print(f"Error: {user_message(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
