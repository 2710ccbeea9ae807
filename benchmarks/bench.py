"""``make bench``: caef's costly steps against the reference recipe, side by side, on one device.

    python -m benchmarks.bench                  # full config on CUDA, small config on CPU
    python benchmarks/bench.py --config small --device cpu
    make bench BENCH_ARGS="--config full --device cuda"

Rows: (a) CGNet training step, (b) multi-scale + flip CAM inference (+ numerics), (c) dense-CRF seeds on 1, 2 and
all cores, (d) random walk, (e) peak GPU memory of (a), (f) model FLOPs utilisation of (a). Prints a table and
writes ``benchmarks/results/<device-slug>.json`` atomically. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/bench.py`: make `benchmarks` and `caef` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import CONFIGS, config_dict, cpu_count, device_name, peak_tflops, slugify  # noqa: E402

BENCHMARKS = ("train", "msf", "crf", "rw", "aff")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), help="default: full on CUDA, small on CPU")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda if available, else cpu")
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS),
        help=f"comma-separated subset of {','.join(BENCHMARKS)} (train gives rows a, e, f)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, help="timed repeats (median reported); default from the config")
    parser.add_argument("--warmup", type=int, help="untimed warm-up iterations; default from the config")
    parser.add_argument(
        "--channels-last", choices=("auto", "on", "off"), default="auto",
        help="caef's memory format (auto: on for CUDA, with a fallback if it fails; off on CPU)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--peak-tflops", type=float, help="device peak (bf16 dense TFLOP/s) for MFU, if not in table")
    parser.add_argument("--out", type=Path, help="results JSON (default: benchmarks/results/<device-slug>.json)")
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(BENCHMARKS))
    if unknown or not args.only:
        parser.error(f"--only takes names from {','.join(BENCHMARKS)}, got {unknown or 'nothing'}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to torch")
    return args


def environment(device: torch.device) -> dict[str, Any]:
    import lightning

    info: dict[str, Any] = {
        "device": device.type,
        "device_name": device_name(device),
        "cpu": device_name(torch.device("cpu")),
        "cpu_cores": cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "torch_cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            cudnn=torch.backends.cudnn.version(),
            gpu_memory_gib=props.total_memory / 2**30,
            gpu_count=torch.cuda.device_count(),
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
    return info


# -- the table -------------------------------------------------------------------------------------------------
def _rate(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def _flops(value: float) -> str:
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} FLOP"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def table_rows(results: dict[str, Any], errors: dict[str, str], env: dict[str, Any], config) -> list[list[str]]:
    rows: list[list[str]] = []
    cuda = env["device"] == "cuda"
    if "train" in results:
        r = results["train"]
        c, ref = r["caef"], r["reference"]
        caef_how = f"{'bf16' if c['bf16_autocast'] else 'fp32'}{', channels_last' if c['channels_last'] else ''}"
        rows.append([
            "(a) CGNet train step", _rate(c["images_per_s"]), _rate(ref["images_per_s"]), _ratio(r["speedup"]),
            f"batch {r['batch']}, crop {r['crop']}, width {r['width']:g}; caef {caef_how}, frozen OC; "
            f"reference fp32, per-image loop, OC param grads" + (f"; {c['note']}" if c.get("note") else ""),
        ])  # fmt: skip
    elif "train" in errors:
        rows.append(["(a) CGNet train step", "error", "error", "", errors["train"]])
    if "msf" in results:
        r = results["msf"]
        for key, label in (("caef_fp32", "fp32"), ("caef_bf16", "bf16 autocast")):
            v = r[key]
            extra = ", channels_last" if v.get("channels_last") else ""
            if key == "caef_bf16" and not cuda:
                extra += " (not timed on CPU: caef infers in fp32 there)"
            rows.append([
                f"(b) MSF+flip CAMs, {label}", _rate(v["images_per_s"]), _rate(r["reference"]["images_per_s"]),
                _ratio(v["speedup"]),
                f"{r['images']}x {r['width']}x{r['height']}, {r['forwards_per_batch']['caef']} vs "
                f"{r['forwards_per_batch']['reference']} forwards{extra}; max|diff| vs loop fp32 "
                f"{v['max_abs_diff_vs_reference_fp32']:.1e}, vs PIL-resized loop "
                f"{v['max_abs_diff_vs_pil_reference_fp32']:.1e}" + (f"; {v['note']}" if v.get("note") else ""),
            ])  # fmt: skip
    elif "msf" in errors:
        rows.append(["(b) MSF+flip CAMs", "error", "error", "", errors["msf"]])
    if "crf" in results:
        r = results["crf"]
        serial = r["workers"]["1"]["images_per_s"]
        for workers, v in r["workers"].items():
            label = f"{workers} process{'es' if workers != '1' else ''}"
            if int(workers) == r["cores"] and workers != "1":
                label += " (all cores)"
            rows.append([
                f"(c) dense CRF seeds, {label}", _rate(v["images_per_s"]), _rate(serial), _ratio(v["speedup_vs_1"]),
                f"{v['images']} images {r['width']}x{r['height']}, 3-4 classes, 2 CRFs/img; reference = serial",
            ])  # fmt: skip
    elif "crf" in errors:
        rows.append(["(c) dense CRF seeds", "error", "error", "", errors["crf"]])
    if "rw" in results:
        r = results["rw"]
        rows.append([
            "(d) random walk", _rate(r["caef"]["images_per_s"]), _rate(r["reference"]["images_per_s"]),
            _ratio(r["speedup"]),
            f"{r['grid'][1]}x{r['grid'][0]} grid ({r['nodes']} nodes), beta 8, t=256; reference: PSA sparse->dense "
            f"on CPU; labels agree {100 * r['label_agreement_with_reference']:.2f}%",
        ])  # fmt: skip
    elif "rw" in errors:
        rows.append(["(d) random walk", "error", "error", "", errors["rw"]])
    if "aff" in results:
        r = results["aff"]
        rows.append([
            "(g) AffinityNet loss step", _rate(r["caef"]["images_per_s"]), _rate(r["reference"]["images_per_s"]),
            _ratio(r["speedup"]),
            f"batch {r['batch']}, {r['grid'][1]}x{r['grid'][0]}x{r['channels']} features, radius {r['radius']}, "
            f"forward + backward; reference: all pairs gathered first (PSA); "
            f"max|grad diff| {r['max_abs_grad_diff']:.1e}",
        ])  # fmt: skip
    elif "aff" in errors:
        rows.append(["(g) AffinityNet loss step", "error", "error", "", errors["aff"]])
    if "train" in results:
        r = results["train"]
        c, ref = r["caef"], r["reference"]
        if cuda:
            rows.append([
                "(e) peak GPU memory of (a)", f"{c['peak_memory_gib']:.2f} GiB", f"{ref['peak_memory_gib']:.2f} GiB",
                _ratio(c["peak_memory_gib"] / ref["peak_memory_gib"]), "torch.cuda.max_memory_allocated, per step",
            ])  # fmt: skip
        else:
            rows.append(["(e) peak GPU memory of (a)", "n/a", "n/a", "n/a", "CPU run"])
        peak = r.get("peak_tflops")
        mfu = f", MFU {100 * r['mfu']:.1f}%" if r.get("mfu") is not None else ", MFU n/a"
        unit, scale = ("TFLOP/s", 1.0) if cuda else ("GFLOP/s", 1e3)
        rows.append([
            "(f) model FLOPs utilisation of (a)", f"{c['achieved_tflops'] * scale:.1f} {unit}{mfu}",
            f"{ref['achieved_tflops'] * scale:.1f} {unit}", _ratio(c["achieved_tflops"] / ref["achieved_tflops"]),
            f"FlopCounterMode, one step: caef {_flops(c['flops_per_step'])}, reference "
            f"{_flops(ref['flops_per_step'])}; peak " + (f"{peak:g} TFLOP/s bf16 dense" if peak else "n/a"),
        ])  # fmt: skip
    return rows


def format_table(rows: list[list[str]]) -> str:
    header = ["benchmark", "caef img/s", "reference img/s", "ratio", "notes"]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = []
    for row in [header, None, *rows]:
        if row is None:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 5)
            continue
        cells = [row[0].ljust(widths[0])] + [row[i].rjust(widths[i]) for i in range(1, 4)]
        lines.append("  ".join(cells) + "  " + row[4])
    return "\n".join(lines)


# -- running ---------------------------------------------------------------------------------------------------
def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def run_benchmarks(
    names: Sequence[str],
    config,
    device: torch.device,
    channels_last: str = "auto",
    peak: float | None = None,
    before: Callable[[str], bool] | None = None,
    after: Callable[[str, dict, dict, dict], None] | None = None,
) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """Run the benchmarks ``names`` (crf first: its pool forks, so before CUDA is initialised); returns results,
    errors (one line each) and the environment. ``before(name)`` may veto a benchmark (a time budget);
    ``after(name, results, errors, env)`` sees each one as it finishes (to save incrementally)."""
    from benchmarks import inference, refinement, training

    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    env: dict[str, Any] = {}

    def attempt(name: str, fn) -> None:
        if name not in names or (before is not None and not before(name)):
            return
        print(f"  running {name} ...", flush=True)
        try:
            results[name] = fn()
        except Exception as exc:  # one failing benchmark (OOM, missing library) must not lose the others
            traceback.print_exc()
            errors[name] = error_text(exc)
        if after is not None:
            after(name, results, errors, env)

    attempt("crf", lambda: refinement.run_crf(config))
    env.update(environment(device))
    print(f"  device: {env['device_name']}", flush=True)
    attempt("train", lambda: training.run(config, device, channels_last))
    if "train" in results:
        peak = peak or (peak_tflops(env["device_name"]) if device.type == "cuda" else None)
        results["train"]["peak_tflops"] = peak
        achieved = results["train"]["caef"]["achieved_tflops"]
        results["train"]["mfu"] = achieved / peak if peak else None
        if after is not None:
            after("train", results, errors, env)
    attempt("msf", lambda: inference.run(config, device, channels_last))
    attempt("rw", lambda: refinement.run_random_walk(config, device))
    attempt("aff", lambda: refinement.run_affinity_loss(config, device))
    return results, errors, env


# -- main ------------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    default_config = "full" if device.type == "cuda" else "small"
    config_name = args.config or default_config
    config = CONFIGS[config_name]
    overrides = {k: v for k, v in (("repeats", args.repeats), ("warmup", args.warmup)) if v is not None}
    if overrides:
        from dataclasses import replace

        config = replace(config, **overrides)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = " ".join(shlex.quote(a) for a in getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    print(f"caef bench: {device.type}, config {config_name}, torch {torch.__version__}, {cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads", flush=True)  # fmt: skip

    results, errors, env = run_benchmarks(args.only, config, device, args.channels_last, args.peak_tflops)
    rows = table_rows(results, errors, env, config)
    print()
    print(format_table(rows))
    record = {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "cwd": os.getcwd(),
        "environment": env,
        "config": config_dict(config),
        "benchmarks": args.only,
        "results": results,
        "errors": errors,
        "table": rows,
    }
    if not args.no_save:
        out = args.out
        if out is None:
            slug = f"{device.type}-{slugify(env['device_name'])}"
            if device.type == "cuda":  # cuda-<gpu>.json is `make gpu-check`'s record, a superset of this one
                slug += "-bench"
            if config_name != default_config:
                slug += f"-{config_name}"
            if set(args.only) != set(BENCHMARKS):
                slug += "-" + "-".join(sorted(args.only))
            out = RESULTS_DIR / f"{slug}.json"
        from caef.io import write_json

        write_json(out, record)
        print(f"\nresults: {out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
