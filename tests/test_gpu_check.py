"""``make gpu-check``'s bookkeeping without a GPU: the protocol read from the real YAMLs, the projection
arithmetic, the time budget, the results record (schema, atomic write), the goals and the tables; and the CPU form
end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks import gpu_check_report as report
from benchmarks.bf16_check import verdict
from benchmarks.gpu_check import Budget
from benchmarks.protocol import SPLIT_SIZES, format_duration, load_protocol, project
from benchmarks.stage_throughput import FULL, SMALL, measured_sizes
from caef.errors import CaefError

REPO = Path(__file__).resolve().parent.parent
VOC = REPO / "experiments" / "voc_full.yaml"
COCO = REPO / "experiments" / "coco_full.yaml"


def _yaml(path: str) -> dict:
    return yaml.safe_load((REPO / path).read_text())


def _phases(protocol) -> dict[str, list]:
    return {plan.stage: [(p.kind, p.images) for p in plan.phases] for plan in protocol.stages}


@pytest.mark.parametrize(("experiment", "dataset", "train_split"), [(VOC, "voc", "train_aug"), (COCO, "coco", "train")])
def test_protocol_counts_images_from_the_stage_yamls(experiment, dataset, train_split):
    phases = _phases(load_protocol(experiment))
    n_train = SPLIT_SIZES[dataset][train_split]
    assert list(phases) == list(yaml.safe_load(experiment.read_text())["stages"])
    for stage, kind in (("classifier", "classifier_train"), ("cgnet", "cgnet_train")):
        cfg = _yaml(f"experiments/{stage}/{dataset}.yaml")
        epochs, batch = cfg["trainer"]["max_epochs"], cfg["data"]["batch_size"]
        n_score = min(SPLIT_SIZES[dataset][cfg["data"]["score_split"]], cfg["data"].get("score_limit") or 10**9)
        # drop_last: floor(N / batch) steps per epoch; validation every epoch on the score split
        assert phases[stage] == [(kind, epochs * (n_train // batch) * batch), ("cam_val", epochs * n_score)]
    aff = _yaml(f"experiments/affinity/{dataset}.yaml")
    epochs, batch = aff["trainer"]["max_epochs"], aff["data"]["batch_size"]
    assert phases["affinity"] == [("affinity_train", epochs * (n_train // batch) * batch)]
    dl = _yaml(f"experiments/deeplab/{dataset}.yaml")
    steps, interval = dl["trainer"]["max_steps"], dl["trainer"]["val_check_interval"]
    expected = [("deeplab_train", steps * dl["data"]["batch_size"]),
                ("deeplab_eval", steps // interval * SPLIT_SIZES[dataset]["val"])]  # fmt: skip
    assert phases["deeplab"] == phases["fully_supervised"] == expected
    assert phases["cams"] == [("cam_predict", n_train)] and phases["pseudo"] == [("affinity_predict", n_train)]
    assert phases["crf"] == [("crf", n_train)]


def test_voc_protocol_known_answer():
    """VOC: 10,582 train_aug images; the classifier's 15 epochs x 661 steps x 16, the CGNet's 15 x 1322 x 8."""
    phases = _phases(load_protocol(VOC))
    assert phases["classifier"] == [("classifier_train", 158640), ("cam_val", 15 * 1464)]
    assert phases["cgnet"][0] == ("cgnet_train", 158640)
    assert phases["deeplab"] == [("deeplab_train", 200000), ("deeplab_eval", 4 * 1449)]


def test_protocol_sizes_are_the_configs_and_full_scale_keeps_them():
    protocol = load_protocol(VOC)
    for kind, stage in (("classifier_train", "classifier"), ("cgnet_train", "cgnet"), ("affinity_train", "affinity"),
                        ("deeplab_train", "deeplab")):  # fmt: skip
        cfg = _yaml(f"experiments/{stage}/voc.yaml")
        sizes = measured_sizes(protocol.sizes[kind], protocol.image_size, FULL)
        assert (sizes["batch"], sizes["crop"]) == (cfg["data"]["batch_size"], cfg["data"]["crop_size"])
        assert "width" not in sizes["backbone_options"]  # full width
    assert measured_sizes(protocol.sizes["cam_predict"], protocol.image_size, FULL)["image"] == [375, 500]
    small = measured_sizes(protocol.sizes["classifier_train"], protocol.image_size, SMALL)
    assert small["backbone_options"]["width"] == SMALL.width and small["crop"] < 448 and small["batch"] <= 2


def test_projection_from_fake_throughputs():
    protocol = load_protocol(VOC)
    rates = {kind: 10.0 for kind in protocol.sizes} | {"crf": 5.0}
    result = project(protocol, rates)
    by_stage = {s["stage"]: s for s in result["stages"]}
    assert by_stage["classifier"]["seconds"] == pytest.approx((158640 + 15 * 1464) / 10)
    assert by_stage["crf"]["seconds"] == pytest.approx(10582 / 5)
    images = sum(p.images / (5.0 if p.kind == "crf" else 10.0) for plan in protocol.stages for p in plan.phases)
    assert result["total_seconds"] == pytest.approx(images) and result["missing_kinds"] == []
    # twice the rate, half the time
    assert project(protocol, {k: 2 * v for k, v in rates.items()})["total_seconds"] == pytest.approx(images / 2)


def test_projection_without_a_rate_is_not_a_partial_sum():
    protocol = load_protocol(VOC)
    rates = {kind: 10.0 for kind in protocol.sizes} | {"crf": None, "deeplab_eval": float("nan")}
    result = project(protocol, rates)
    by_stage = {s["stage"]: s for s in result["stages"]}
    assert by_stage["crf"]["seconds"] is None and by_stage["deeplab"]["seconds"] is None
    assert by_stage["classifier"]["seconds"] is not None
    assert result["total_seconds"] is None and result["missing_kinds"] == ["crf", "deeplab_eval"]


def test_protocol_errors_name_the_file_and_key(tmp_path):
    stage_cfg = tmp_path / "cls.yaml"
    stage_cfg.write_text("trainer: {}\ndata: {batch_size: 8, train_split: train_aug}\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"name: x\ndataset: voc\nstages:\n  classifier: {{config: {stage_cfg}}}\n")
    with pytest.raises(CaefError, match=r"cls\.yaml: missing key trainer\.max_epochs"):
        load_protocol(exp)
    exp.write_text(f"name: x\ndataset: voc\nstages:\n  mystery: {{config: {stage_cfg}}}\n")
    with pytest.raises(CaefError, match="stage 'mystery' has no throughput model"):
        load_protocol(exp)
    exp.write_text("name: x\ndataset: cityscapes\nstages: {}\n")
    with pytest.raises(CaefError, match="dataset 'cityscapes' has no known split sizes"):
        load_protocol(exp)


def test_format_duration():
    assert [format_duration(s) for s in (None, 59.4, 600, 3 * 3600)] == ["n/a", "59 s", "10.0 min", "3.0 h"]


def test_budget_skips_work_that_would_pass_the_deadline():
    now = [0.0]
    budget = Budget(100.0, {"a": 0.4, "b": 1.0}, clock=lambda: now[0])
    budget.begin("a")
    assert budget.deadlines == {"a": 40.0, "b": 100.0} and budget.allows()

    def work(seconds):
        now[0] += seconds

    budget.timed(lambda: work(30.0))
    assert budget.left() == pytest.approx(10.0) and not budget.allows()  # the next unit (~30 s) would overrun
    budget.begin("b")  # deadlines are cumulative: what part a left unused carries over
    assert budget.allows() and budget.left() == pytest.approx(70.0)
    budget.timed(lambda: work(69.0))
    assert not budget.allows()


def test_bf16_verdict_against_the_tolerances():
    assert verdict(5e-3, 0.05)[0] is True
    assert verdict(2e-2, 0.0)[0] is False and "NOT within tolerance" in verdict(2e-2, 0.0)[1]
    assert verdict(1e-3, 0.2)[0] is False


# -- the record ----------------------------------------------------------------------------------------------------
def _full_record() -> dict:
    record = report.new_record("make gpu-check", "full", 450.0, {"device_name": "NVIDIA H200"})
    record["parts"]["bench"].update(
        status="done",
        seconds=90.0,
        results={
            "train": {"speedup": 3.4, "mfu": 0.31},
            "msf": {"caef_bf16": {"speedup": 5.0}, "caef_fp32": {"speedup": 2.0}},
        },
    )
    record["parts"]["bf16"].update(
        status="done",
        seconds=20.0,
        result={
            "max_abs_diff": 2e-2,
            "mean_abs_diff": 1e-3,
            "miou_fp32": 50.0,
            "miou_bf16": 50.05,
            "miou_bf16_at_fp32_threshold": 50.01,
            "miou_delta_points": 0.05,
            "verdict": "bf16 CAM inference is NOT ...",
        },
    )
    protocol = load_protocol(VOC)
    measured = {kind: {"sizes": measured_sizes(sizes, protocol.image_size, FULL),
                       "fp32": {"images_per_s": 10.0, "peak_memory_gib": 20.0},
                       "bf16_cl": {"images_per_s": 25.0, "peak_memory_gib": 12.0}}
                for kind, sizes in protocol.sizes.items()}  # fmt: skip
    rates = {v: {k: e[v]["images_per_s"] for k, e in measured.items()} | {"crf": 40.0} for v in ("fp32", "bf16_cl")}
    record["parts"]["voc_stages"].update(status="done", seconds=100.0, measured=measured,
                                         projection={v: project(protocol, r) for v, r in rates.items()})  # fmt: skip
    record["goals"] = report.evaluate_goals(record)
    return record


def test_record_schema_and_atomic_write(tmp_path):
    record = _full_record()
    report.check_record(record)
    out = tmp_path / "results" / "cuda-nvidia-h200.json"
    report.save_record(out, record)
    assert json.loads(out.read_text())["parts"]["voc_stages"]["projection"]["fp32"]["total_seconds"] > 0
    before = out.read_text()
    record["parts"]["bf16"]["result"]["bad"] = object()  # not JSON serialisable: the write fails
    with pytest.raises(TypeError):
        report.save_record(out, record)
    assert out.read_text() == before and sorted(p.name for p in out.parent.iterdir()) == [out.name]
    report.save_record(None, record)  # the CPU form without --out writes nothing


def test_check_record_names_what_is_missing():
    record = report.new_record("cmd", "small", 450.0, {})
    del record["parts"]["bf16"]["notes"]
    with pytest.raises(ValueError, match="part 'bf16' misses key 'notes'"):
        report.check_record(record)
    record = report.new_record("cmd", "small", 450.0, {})
    record["parts"]["bench"]["status"] = "finished"
    with pytest.raises(ValueError, match="status 'finished'"):
        report.check_record(record)
    with pytest.raises(ValueError, match="missing key 'goals'"):
        report.check_record({k: v for k, v in record.items() if k != "goals"})


def test_goals_met_only_in_the_full_form():
    goals = {g["goal"]: g for g in _full_record()["goals"]}
    assert goals["cgnet_step_speedup"]["met"] is True and goals["cgnet_step_mfu"]["met"] is False
    assert goals["msf_speedup"]["measured"] == 5.0 and goals["msf_speedup"]["source"] == "bench (b), bf16"
    assert goals["bf16_max_abs_diff"]["met"] is False and goals["bf16_miou_delta"]["met"] is True
    small = _full_record() | {"form": "small"}
    assert all(g["met"] is None for g in report.evaluate_goals(small))


def test_tables():
    assert (
        report.format_table(["a", "bb", "notes"], [["xyz", "1", "n"]]) == "a    bb  notes\n---  --  -----\nxyz   1  n"
    )
    text = report.render(_full_record())
    assert "classifier_train" in text and "2.50x" in text and "20.00/12.00" in text
    protocol = load_protocol(VOC)
    images = sum(p.images for plan in protocol.stages for p in plan.phases if p.kind != "crf")
    crf = sum(p.images for plan in protocol.stages for p in plan.phases if p.kind == "crf")
    total_fp32 = format_duration(images / 10.0 + crf / 40.0)
    total_fast = format_duration(images / 25.0 + crf / 40.0)
    total_line = next(line for line in text.splitlines() if line.startswith("total"))
    assert total_fp32 in total_line and total_fast in total_line
    assert "NOT met" in text and "31.0 %" in text
    assert "4. coco_full stage throughput and projected time [pending]" in text


def test_full_form_stage_part_with_stubbed_measurements(monkeypatch):
    """The GPU branch of parts 3/4 without a GPU: every kind measured in both variants at the configs' sizes, saved
    after each, projected per variant; a failing measurement leaves its stages and the total n/a."""
    from benchmarks import gpu_check_parts, stage_throughput

    calls = []

    def fake_measure(kind, sizes, num_classes, device, variant, scale):
        calls.append((kind, variant, sizes.get("crop"), sizes["batch"], num_classes))
        if kind == "deeplab_eval" and variant == "bf16_cl":
            raise RuntimeError("CUDA out of memory")
        return {"images_per_s": 20.0 if variant == "fp32" else 40.0, "peak_memory_gib": 1.0}

    monkeypatch.setattr(stage_throughput, "measure", fake_measure)
    saves, part = [], {"status": "pending", "seconds": None, "notes": []}
    budget = Budget(1e6, {"voc_stages": 1.0})
    budget.begin("voc_stages")
    gpu_check_parts.run_stages(part, VOC, "full", torch.device("cpu"), budget, lambda: saves.append(1), crf_rate=10.0,
                               variants=["fp32", "bf16_cl"])  # fmt: skip
    protocol = load_protocol(VOC)
    assert len(calls) == len(saves) == 2 * len(protocol.sizes)
    assert ("classifier_train", "fp32", 448, 16, 21) in calls and ("cgnet_train", "bf16_cl", 384, 8, 21) in calls
    fp32 = part["projection"]["fp32"]
    images = sum(p.images / (10.0 if p.kind == "crf" else 20.0) for plan in protocol.stages for p in plan.phases)
    assert fp32["total_seconds"] == pytest.approx(images)
    fast = part["projection"]["bf16_cl"]
    assert fast["total_seconds"] is None and fast["missing_kinds"] == ["deeplab_eval"]
    assert part["status"] == "partial" and "out of memory" in part["measured"]["deeplab_eval"]["error_bf16_cl"]
    assert any("no rate for deeplab_eval" in note for note in part["notes"])


def test_cuda_branch_orders_parts_saves_each_and_skips_past_the_budget(monkeypatch, tmp_path, capsys):
    """main() as on a GPU machine (parts stubbed): the record lands in cuda-<gpu>.json after each part, and parts
    whose deadline has passed are skipped with a note."""
    from benchmarks import gpu_check, gpu_check_parts

    now = [0.0]

    class FakeBudget(Budget):
        def __init__(self, total_s, deadlines):
            super().__init__(total_s, deadlines, clock=lambda: now[0])

    calls, saved = [], []

    def fake_bench(part, form, device, budget, record, save):
        calls.append(("bench", form, device.type))
        record["environment"]["device_name"] = "NVIDIA H200"
        part["results"] = {"train": {"speedup": 3.5, "mfu": 0.45}}
        now[0] += 447.0  # the bench ran long: 3 s left, less than a unit of the next parts
        save()
        saved.append(json.loads((tmp_path / "cuda-nvidia-h200.json").read_text())["parts"]["bench"]["status"])

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "nvidia_smi", lambda: {"gpu_name": "NVIDIA H200", "driver": "570.1"})
    monkeypatch.setattr(gpu_check, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(gpu_check, "Budget", FakeBudget)
    monkeypatch.setattr(gpu_check_parts, "coco_crf", lambda cuda: calls.append(("coco_crf", cuda)) or {})
    monkeypatch.setattr(gpu_check_parts, "run_bench", fake_bench)
    for name in ("run_bf16", "run_stages"):
        monkeypatch.setattr(gpu_check_parts, name, lambda *a, name=name, **k: calls.append((name,)))
    assert gpu_check.main([]) == 0
    assert calls == [("coco_crf", True), ("bench", "full", "cuda")] and saved == ["pending"]
    record = json.loads((tmp_path / "cuda-nvidia-h200.json").read_text())
    report.check_record(record)
    assert record["environment"]["driver"] == "570.1" and record["form"] == "full"
    statuses = {name: part["status"] for name, part in record["parts"].items()}
    assert statuses == {"bench": "done", "bf16": "skipped", "voc_stages": "skipped", "coco_stages": "skipped"}
    assert "past this part's deadline" in record["parts"]["coco_stages"]["notes"][0]
    goals = {g["goal"]: g["met"] for g in record["goals"]}
    assert goals["cgnet_step_speedup"] is True and goals["cgnet_step_mfu"] is True and goals["msf_speedup"] is None
    assert "cuda-nvidia-h200.json" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU form (a CUDA machine runs the 8-minute full form)")
def test_cpu_form_end_to_end(tmp_path, capsys):
    from benchmarks.gpu_check import main

    out = tmp_path / "cpu.json"
    assert main(["--out", str(out)]) == 0
    record = json.loads(out.read_text())
    report.check_record(record)
    statuses = {name: part["status"] for name, part in record["parts"].items()}
    assert statuses == {"bench": "done", "bf16": "done", "voc_stages": "done", "coco_stages": "skipped"}
    voc = record["parts"]["voc_stages"]
    assert "projection" not in voc and all(math.isfinite(e["fp32"]["images_per_s"]) for e in voc["measured"].values())
    assert set(voc["measured"]) == set(load_protocol(VOC).sizes)
    assert 0 <= record["parts"]["bf16"]["result"]["max_abs_diff"] < 1
    assert all(g["met"] is None for g in record["goals"])
    assert "GPU part" in capsys.readouterr().out
