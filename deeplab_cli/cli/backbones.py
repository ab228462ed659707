"""``deeplab-backbones``: which timm models run as a DeepLab backbone at output stride 8, 16 and 32.

Usage::

    deeplab-backbones [PATTERN ...] [input=256] [out=docs/timm_backbones.md [overwrite=true]]

For every timm model name matching the patterns (``timm.list_models`` wildcards;
all of them by default) and every output stride, the backbone is built exactly as
``backbone=timm backbone.model=NAME`` builds it, on the meta device (shapes only:
the whole list takes minutes, not hours), and run once on an ``input`` x ``input``
image. A stride "works" when both succeed and the deepest feature has that stride.
The v3+ column says whether a stride-4 feature exists for the decoder. The table
is printed, and with ``out=`` written as Markdown (the README links the full list).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..engine.runtime.outputs import write_texts
from ..errors import DeepLabError
from ..models.backbones.timm_encoder import OUTPUT_STRIDES, TimmBackbone, TimmModelError, import_timm, probe

DEFAULT_INPUT = 256


@dataclass
class Support:
    """One model's row: per output stride, "yes" or why not."""

    name: str
    strides: dict[int, str] = field(default_factory=dict)
    low_level: bool = False
    out_channels: int | None = None
    low_channels: int | None = None

    @property
    def works(self) -> tuple[int, ...]:
        return tuple(s for s in OUTPUT_STRIDES if self.strides.get(s) == "yes")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "(timm: " in text:  # our probe's one line: keep timm's reason
        text = text.split("(timm: ", 1)[1].split("); ", 1)[0]
        text = text.replace("AssertionError: its constructor refuses that stride: it cannot dilate", "cannot dilate")
    return text.replace("|", "/")[:90]


def check(name: str, size: int = DEFAULT_INPUT) -> Support:
    """Build ``name`` at each output stride on the meta device and run it on one ``size`` image."""
    row = Support(name)
    for os_ in OUTPUT_STRIDES:
        try:
            probe(name, os_)
        except TimmModelError as exc:
            row.strides[os_] = "no: " + _short(exc)
            continue
        try:
            with torch.device("meta"):
                backbone = TimmBackbone(name, os_).eval()
                with torch.no_grad():
                    feats = backbone(torch.empty(1, 3, size, size))
        except Exception as exc:  # noqa: BLE001 - any failure of a third-party forward is a "no"
            row.strides[os_] = f"fails on {size}x{size}: " + _short(exc)
            continue
        got = -(-size // feats["out"].shape[-1])
        if abs(feats["out"].shape[-1] - size / os_) > 1:
            row.strides[os_] = f"no: output stride {got}"
            continue
        row.strides[os_] = "yes"
        row.out_channels = backbone.feature_info["out"].channels
        if "low_level" in feats:
            row.low_level = True
            row.low_channels = backbone.feature_info["low_level"].channels
    return row


def markdown(rows: list[Support], size: int, seconds: float) -> str:
    timm = import_timm()
    count = {s: sum(s in r.works for r in rows) for s in OUTPUT_STRIDES}
    v3plus = sum(bool(r.works) and r.low_level for r in rows)
    lines = [
        "# timm models as DeepLab backbones",
        "",
        f"Made by `deeplab-backbones input={size} out=docs/timm_backbones.md overwrite=true` with timm "
        f"{timm.__version__} and torch {torch.__version__} in {seconds / 60:.1f} min: every model built as "
        f"`backbone=timm backbone.model=NAME model.output_stride=S` builds it, on the meta device, and run on a "
        f"{size}x{size} image.",
        "",
        f"Of {len(rows)} timm architectures, **{count[8]} run at output stride 8, {count[16]} at 16 and {count[32]} "
        f"at 32**; {v3plus} of those that run have the stride-4 feature the v3+ decoder needs. `yes`: it works; "
        "`no: ...`: timm refuses that stride (deeplab-train says so in one line before building anything); "
        f"`fails on {size}x{size}: ...`: it builds but fails on that input (fixed-size transformers: try "
        "`backbone.kwargs={dynamic_img_size: true}` or their own input size).",
        "",
        "| model | OS 8 | OS 16 | OS 32 | v3+ (stride-4 feature) | out ch | low-level ch |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r.strides.get(s, "") for s in OUTPUT_STRIDES]
        low = "yes" if r.low_level else ("no" if r.works else "")
        lines.append(f"| {r.name} | {' | '.join(cells)} | {low} | {r.out_channels or ''} | {r.low_channels or ''} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help", "help") for a in args):
        print(__doc__)
        return 0
    size, out, patterns, overwrite = DEFAULT_INPUT, None, [], False
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "input":
            if not value.isdigit() or int(value) < 32:
                print(f"Error: input={value!r} must be a whole number of pixels >= 32 (the input side, e.g. "
                      f"input={DEFAULT_INPUT}).", file=sys.stderr)  # fmt: skip
                return 2
            size = int(value)
        elif key == "out":
            out = value
        elif key == "overwrite" and value in ("true", "false"):
            overwrite = value == "true"
        elif "=" in arg:
            print(f"Error: unknown option {key!r} in {arg!r}; the options are input=N, out=FILE and overwrite=true, "
                  "and the "
                  "other arguments are timm name patterns (deeplab-backbones --help).", file=sys.stderr)  # fmt: skip
            return 2
        else:
            patterns.append(arg)
    timm = import_timm()
    names = sorted(set(timm.list_models(patterns or "*")))
    if not names:
        print(f"Error: no timm model matches {' '.join(patterns)}; see timm.list_models().", file=sys.stderr)
        return 1
    start = time.perf_counter()
    rows = []
    for i, name in enumerate(names, 1):
        rows.append(check(name, size))
        r = rows[-1]
        print(f"[{i}/{len(names)}] {name}: OS {' '.join(map(str, r.works)) or 'none'}", file=sys.stderr, flush=True)
    text = markdown(rows, size, time.perf_counter() - start)
    if out:
        try:  # a file of that name that deeplab-backbones did not write is kept
            write_texts({Path(out): text}, "out", overwrite)
        except DeepLabError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return 1
        print(f"Wrote {out}", file=sys.stderr)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
