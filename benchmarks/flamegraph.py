"""A small static flame graph (SVG, no script) from collapsed stacks, e.g. py-spy's raw output.

    py-spy record -r 500 --format raw -o add.txt -- \\
        python benchmarks/profile_hot_paths.py --path add --no-profile
    python benchmarks/flamegraph.py add.txt docs/img/flame_add.svg --only "run (" \\
        --title "Store.add"

``--only TEXT`` keeps the samples whose stack holds a frame containing TEXT and
cuts each stack above the first such frame (the timed loop, not imports and
set-up).  Frames narrower than ``--min-width`` of the total are dropped, so the
file stays small enough to keep in the repository.
"""

from __future__ import annotations

import argparse
import html
import zlib
from typing import Any


def load(path: str, only: str | None) -> dict[tuple[str, ...], int]:
    stacks: dict[tuple[str, ...], int] = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            if only is not None:
                at = next((i for i, fr in enumerate(frames) if only in fr), None)
                if at is None:
                    continue
                frames = frames[at:]
            key = tuple(frames)
            stacks[key] = stacks.get(key, 0) + int(count)
    return stacks


def tree(stacks: dict[tuple[str, ...], int]) -> dict[str, Any]:
    root: dict[str, Any] = {"name": "all", "value": 0, "kids": {}}
    for frames, n in stacks.items():
        node = root
        node["value"] += n
        for fr in frames:
            node = node["kids"].setdefault(fr, {"name": fr, "value": 0, "kids": {}})
            node["value"] += n
    return root


def color(name: str) -> str:
    h = zlib.crc32(name.encode())
    return f"rgb({205 + h % 50},{80 + (h >> 8) % 120},{(h >> 16) % 60})"


def render(root: dict[str, Any], title: str, width: int, min_frac: float) -> str:
    row = 16
    total = root["value"] or 1
    rects: list[str] = []
    depth_max = 0

    def walk(node: dict[str, Any], x: float, depth: int) -> None:
        nonlocal depth_max
        w = node["value"] / total * width
        if node["value"] / total < min_frac:
            return
        depth_max = max(depth_max, depth)
        label = node["name"]
        # py-spy names frames "function (file.py:line)": keep the short form.
        short = label.split(" (")[0] + (" (" + label.split(" (")[1].split("/")[-1]
                                        if " (" in label else "")
        tip = html.escape(f"{label}: {node['value']} samples, "
                          f"{100 * node['value'] / total:.1f} %")
        chars = int(w / 6.5)
        text = html.escape(short if len(short) <= chars else short[: max(chars - 2, 0)] + "..")
        rects.append((depth, f'<g><title>{tip}</title><rect x="{x:.1f}" y="DEPTH{depth}" '
                      f'width="{max(w - 0.5, 0.1):.1f}" height="{row - 1}" '
                      f'fill="{color(node["name"])}"/>'
                      + (f'<text x="{x + 3:.1f}" y="TEXT{depth}">{text}</text>'
                         if chars >= 3 else "") + "</g>"))
        cx = x
        for kid in sorted(node["kids"].values(), key=lambda k: k["name"]):
            walk(kid, cx, depth + 1)
            cx += kid["value"] / total * width

    walk(root, 0.0, 0)
    height = (depth_max + 1) * row + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="monospace" font-size="11">',
           f'<text x="4" y="16" font-size="13">{html.escape(title)} '
           f'({root["value"]} samples; hover for names and shares)</text>']
    for depth, r in rects:
        y = height - (depth + 1) * row - 4
        out.append(r.replace(f'y="DEPTH{depth}"', f'y="{y}"')
                   .replace(f'y="TEXT{depth}"', f'y="{y + row - 4}"'))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("raw")
    p.add_argument("svg")
    p.add_argument("--only", help="keep stacks through a frame containing this text")
    p.add_argument("--title", default="flame graph")
    p.add_argument("--width", type=int, default=1200)
    p.add_argument("--min-width", type=float, default=0.004,
                   help="drop frames narrower than this share of the samples")
    a = p.parse_args()
    svg = render(tree(load(a.raw, a.only)), a.title, a.width, a.min_width)
    with open(a.svg, "w") as f:
        f.write(svg)


if __name__ == "__main__":
    main()
