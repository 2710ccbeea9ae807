"""The ``caef`` command: dispatch to a stage's LightningCLI (``caef/stage_cli.py``), the pipeline, sweeps, data tools
and the offline commands.

    caef classifier fit --config experiments/classifier/demo.yaml
    caef cgnet fit --config experiments/cgnet/demo.yaml --model.masking_depth=3
    caef cgnet predict --config experiments/cgnet/demo.yaml --ckpt_path runs/demo/cgnet/last.ckpt
    caef data check --root data/VOCdevkit --dataset voc
    caef data synth --out data/synth --num-images 1000 --size 128 --seed 0

Every hyper-parameter is a plain ``--key=value`` flag (what a W&B sweep agent passes).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from caef.stage_cli import STAGES, import_object, stage_cli
from caef.wandb_mode import configure_wandb_mode

#: offline (non-Lightning) steps: name -> (main function, help)
OFFLINE_COMMANDS: dict[str, tuple[str, str]] = {
    "crf": ("caef.stages.crf:main", "dense-CRF seeds (low/high alpha) from saved CAMs; shardable with --shard i/n"),
    "conformance": ("caef.conformance:main", "compare caef with local clones of the official OC-CSE and PSA code"),
    "dashboard": ("caef.dashboard:main", "build the masking-depth / backbone W&B reports (wandb-workspaces)"),
    "export": ("caef.interchange:export_main", "export CAMs (irn | psa format) or networks (psa | occse .pth)"),
    "import": ("caef.interchange:import_main", "import CAMs from IRN / PSA / OC-CSE .npy files"),
}


def _usage() -> str:
    lines = ["usage: caef COMMAND ...", "", "commands:"]
    for name, (_, _, help_text) in STAGES.items():
        lines.append(f"  {name:<11} {help_text} (fit | validate | test | predict; --help for all flags)")
    for name, (_, help_text) in OFFLINE_COMMANDS.items():
        lines.append(f"  {name:<11} {help_text}")
    lines.append(f"  {'pipeline':<11} a whole experiment from one YAML (experiments/demo.yaml), cached and resumable")
    lines.append(f"  {'sweep':<11} a W&B sweep file: `caef sweep FILE --local` runs the grid offline: table + plot")
    lines.append(f"  {'data':<11} dataset tools: `caef data check` validates a tree; `synth`, `scenes` generate one")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from caef.errors import CaefError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from caef import __version__

        print(f"caef {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command in STAGES:
            configure_wandb_mode()
            stage_cli(command, rest)
            return 0
        if command == "data":
            from caef.data_cli import data_main

            return data_main(rest)
        if command == "pipeline":
            configure_wandb_mode()
            from caef.pipeline_cli import main as pipeline_main

            return pipeline_main(rest)
        if command == "sweep":
            configure_wandb_mode()
            from caef.sweep import main as sweep_main

            return sweep_main(rest)
        if command in OFFLINE_COMMANDS:
            return import_object(OFFLINE_COMMANDS[command][0])(rest)
    except CaefError as exc:
        print(f"caef: error: {exc}", file=sys.stderr)
        return 2
    print(f"caef: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
