"""``selfsup methods``, ``selfsup backbones``, ``selfsup datasets``: what is available."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any, formatter: type) -> None:
    p = sub.add_parser("methods", help="list pretraining methods with family and paper",
                       epilog="example:\n  selfsup methods --verbose", formatter_class=formatter)
    p.add_argument("--verbose", action="store_true", help="also show each method's hyper-parameters and recipe")
    p.set_defaults(func=run_methods)
    p = sub.add_parser("backbones", help="list encoder architectures",
                       epilog="example:\n  selfsup backbones", formatter_class=formatter)
    p.set_defaults(func=run_backbones)
    p = sub.add_parser("presets", help="list packaged CPU presets (use with `pretrain --preset NAME`)",
                       epilog="example:\n  selfsup presets\n  selfsup pretrain --preset cpu-32px --data DIR --out runs/a",
                       formatter_class=formatter)
    p.set_defaults(func=run_presets)
    p = sub.add_parser("datasets", help="list built-in datasets (shipped inside PyPI packages; no download)",
                       epilog="example:\n  selfsup datasets\n"
                       "  selfsup datasets --export builtin:synthetic photos --flat   # a folder of images to try\n"
                       "  selfsup datasets --export builtin:mnist:test mnist-test      # class folders",
                       formatter_class=formatter)
    p.add_argument("--export", nargs=2, metavar=("SPEC", "DIR"),
                   help="write a built-in dataset (builtin:NAME[:SPLIT]) as image files into the new folder DIR")
    p.add_argument("--flat", action="store_true",
                   help="with --export: all images directly in DIR, no class sub-folders (an unlabelled folder)")
    p.set_defaults(func=run_datasets)


def run_methods(args: argparse.Namespace) -> int:
    import dataclasses

    from selfsup.methods import registry

    specs = registry()
    print(f"{'method':<14}{'family':<22}paper")
    for name, s in sorted(specs.items(), key=lambda kv: (kv[1].family, kv[0])):
        print(f"{name:<14}{s.family:<22}{s.paper}")
        if args.verbose:
            print(f"    {s.summary}")
            fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(s.config_cls))
            print(f"    method.*: {fields}")
            r = s.recipe
            print(f"    recipe: {r.optimizer}, base_lr {r.base_lr} x B/256, wd {r.weight_decay}, warmup {r.warmup_epochs} ep")
    print(f"\n{len(specs)} methods")
    return 0


def plain_text(doc: str) -> str:
    """A docstring's Markdown tables and RST literals as aligned plain text for a terminal."""
    import re

    out: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            widths = [max(len(r[i]) for r in table if i < len(r)) for i in range(max(map(len, table)))]
            out.extend("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in table)
            table.clear()

    for line in doc.splitlines():
        text = re.sub(r"``([^`]*)``|`([^`]*)`", lambda m: m.group(1) or m.group(2) or "", line)
        text = text.replace("**", "")
        if text.strip().startswith("|"):
            cells = [c.strip() for c in text.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):  # not the |---|---| rule
                table.append(cells)
            continue
        flush()
        out.append(text)
    flush()
    return "\n".join(out).strip("\n")


def run_backbones(args: argparse.Namespace) -> int:
    from selfsup.models import backbones

    doc = backbones.__doc__ or ""
    print(plain_text(doc.split("\n\n", 2)[2] if doc.count("\n\n") >= 2 else doc))
    return 0


def export_dataset(spec: str, out: str, *, flat: bool = False) -> int:
    """``export_builtin`` into ``out``; ``flat`` moves every image up into ``out`` itself (``<class>_<id>.png``),
    so the folder reads as unlabelled photos. Returns the number of images written."""
    from pathlib import Path

    from selfsup.data import export_builtin

    root = export_builtin(spec, out)
    files = sorted(root.glob("*/*.png"))
    if flat:
        for f in files:
            f.rename(root / f"{f.parent.name}_{f.name}")
        for d in sorted({f.parent for f in files}):
            Path(d).rmdir()
    return len(files)


def run_datasets(args: argparse.Namespace) -> int:
    from selfsup.data import list_builtin

    if args.export:
        spec, out = args.export
        n = export_dataset(spec, out, flat=args.flat)
        print(f"wrote {n} images to {out}" + (" (no class sub-folders)" if args.flat else " (one folder per class)"))
        return 0
    if args.flat:
        from selfsup.errors import ConfigError

        raise ConfigError("--flat goes with --export SPEC DIR")
    for name, desc in list_builtin().items():
        print(f"builtin:{name:<12} {desc}")
    return 0


def run_presets(args: argparse.Namespace) -> int:
    from selfsup.config.presets import list_presets

    for name, desc in list_presets().items():
        print(f"{name:<16} {desc}")
    return 0
