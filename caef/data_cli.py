"""``caef data``: check a dataset tree, or write a generated one (``synth``, ``scenes``) in the VOC layout."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path


def _data_parser() -> argparse.ArgumentParser:
    from caef.data.scenes import ScenesConfig
    from caef.data.synthetic import SynthConfig

    parser = argparse.ArgumentParser(prog="caef data", description="dataset tools")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a dataset tree: counts per split and every problem found")
    check.add_argument("--root", required=True, help="dataset root (VOC: folder with VOCdevkit; COCO: with train2014)")
    check.add_argument("--dataset", choices=("voc", "coco", "synthetic"), default="voc")
    check.add_argument("--split", action="append", help="check only this split (repeatable)")
    check.add_argument("--cache-dir", default=None)
    synth = sub.add_parser("synth", help="write the generated dataset in the VOC 2012 layout")
    synth.add_argument("--out", required=True, help="output folder (created; must not hold other data)")
    defaults = SynthConfig()
    for f in fields(SynthConfig):
        value = getattr(defaults, f.name)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            synth.add_argument(f"--{f.name.replace('_', '-')}", type=type(value), default=value, dest=f.name)
    scenes = sub.add_parser("scenes", help="compose scenes of MNIST-family objects (Fashion-MNIST) as a VOC tree")
    scenes.add_argument("--out", required=True, help="output folder (created; must not hold other data)")
    scenes.add_argument("--source", default=None, help="folder of *-images-idx3-ubyte(.gz) + *-labels-idx1-ubyte(.gz)")
    scene_defaults = ScenesConfig()
    for f in fields(ScenesConfig):
        value = getattr(scene_defaults, f.name)
        flag, dest = f"--{f.name.replace('_', '-')}", f"scene_{f.name}"
        scenes.add_argument(flag, type=type(value), default=value, dest=dest, metavar=f.name.upper())
    return parser


def data_main(args: Sequence[str]) -> int:
    parsed = _data_parser().parse_args(list(args))
    if parsed.command == "check":
        from caef.data.checks import check_source
        from caef.data.datamodule import open_source

        source = open_source(parsed.dataset, parsed.root, parsed.cache_dir)
        report = check_source(source, parsed.split)
        print(report.format())
        return 0 if report.ok else 1
    if parsed.command == "scenes":
        from caef.data.scenes import ScenesConfig, describe, generate_scenes

        config = ScenesConfig(**{f.name: getattr(parsed, f"scene_{f.name}") for f in fields(ScenesConfig)})
        voc_dir = generate_scenes(Path(parsed.out), config, parsed.source)
        print(f"wrote {describe(config)} to {voc_dir}")
        return 0
    from caef.data.synthetic import SynthConfig, describe, generate

    config = SynthConfig(**{f.name: getattr(parsed, f.name) for f in fields(SynthConfig) if hasattr(parsed, f.name)})
    voc_dir = generate(Path(parsed.out), config)
    print(f"wrote {describe(config)} to {voc_dir}")
    return 0
