"""A stage's fingerprint covers the identity of the dataset tree it reads (split lists, class names, generator
manifest; COCO's annotation files), so a tree regenerated or re-split under the same path reruns the stages instead
of keeping results computed from the old one."""

from __future__ import annotations

import shutil
from pathlib import Path

from caef.data.identity import dataset_identity
from caef.pipeline import Pipeline, PipelineConfig
from tests.reliability.reliability_helpers import EXPERIMENTS

STAGES = f"{{classifier: {{config: {EXPERIMENTS / 'classifier/demo.yaml'}}}}}"


def _fingerprint(tmp_path: Path, root: Path, dataset: str = "voc") -> str:
    path = tmp_path / "e.yaml"
    path.write_text(f"name: e\ndataset: {dataset}\ndata_root: {root}\nstages: {STAGES}\n")
    config = PipelineConfig.load(path)
    config.runs_root = str(tmp_path / "runs")
    return Pipeline(config).fingerprint("classifier", {"stages": {}})


def _copy(tiny_synth: Path, tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "tree"
    shutil.copytree(tiny_synth, root, ignore=shutil.ignore_patterns("caef_cache*"))
    return root, root / "VOCdevkit" / "VOC2012"


def test_a_resplit_tree_changes_the_fingerprint(tmp_path, tiny_synth):
    root, voc = _copy(tiny_synth, tmp_path)
    first = _fingerprint(tmp_path, root)
    assert _fingerprint(tmp_path, root) == first  # stable
    train = voc / "ImageSets" / "Segmentation" / "train_aug.txt"
    train.write_text("".join(train.read_text().splitlines(keepends=True)[1:]))  # one image fewer
    assert _fingerprint(tmp_path, root) != first


def test_renamed_classes_and_a_new_generator_manifest_change_it(tmp_path, tiny_synth):
    root, voc = _copy(tiny_synth, tmp_path)
    first = dataset_identity("voc", root)
    (voc / "classes.txt").write_text("shirt\nsandal\n")
    second = dataset_identity("voc", root)
    (root / "caef_scenes.json").write_text('{"seed": 1}')
    assert len({first, second, dataset_identity("voc", root)}) == 3


def test_the_same_tree_elsewhere_has_the_same_identity_and_images_are_not_read(tmp_path, tiny_synth):
    root, voc = _copy(tiny_synth, tmp_path)
    assert dataset_identity("voc", root) == dataset_identity("voc", tiny_synth)
    image = next((voc / "JPEGImages").iterdir())
    image.write_bytes(b"not read")  # documented: pixels are not part of the identity
    assert dataset_identity("voc", root) == dataset_identity("voc", tiny_synth)


def test_coco_annotations_identify_a_coco_tree(tmp_path):
    annotations = tmp_path / "coco" / "annotations"
    annotations.mkdir(parents=True)
    (annotations / "instances_train2014.json").write_text('{"images": []}')
    first = dataset_identity("coco", tmp_path / "coco")
    (annotations / "instances_train2014.json").write_text('{"images": [1]}')
    assert dataset_identity("coco", tmp_path / "coco") not in (first, "missing", None)


def test_the_generated_dataset_is_identified_by_its_settings_and_a_missing_tree_says_so(tmp_path, tiny_synth):
    assert dataset_identity("synthetic", tiny_synth) is None  # its generator settings are stage flags
    assert dataset_identity("voc", tmp_path / "nowhere") == "missing"
    assert dataset_identity("coco", tmp_path / "nowhere") == "missing"
