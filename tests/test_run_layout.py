"""The run layout is declared once: callbacks say which arguments take which run-folder path (``run_paths``), so
any spelling of their class path, and any subclass, gets the same places; the pipeline and the stage graph read
the same paths."""

from __future__ import annotations

from pathlib import Path

from jsonargparse import Namespace

from caef.run_layout import fill_run_layout


def _config(run_dir: Path, callbacks: list[tuple[str, dict]]) -> Namespace:
    return Namespace(
        run_dir=str(run_dir),
        trainer=Namespace(
            default_root_dir=None,
            callbacks=[Namespace(class_path=path, init_args=Namespace(**args)) for path, args in callbacks],
            logger=False,
        ),
        data=Namespace(),
        model=Namespace(ordinary_classifier=None),
    )


def test_callbacks_get_their_declared_paths_under_any_class_path(tmp_path):
    run = tmp_path / "run"
    config = _config(
        run,
        [
            ("caef.callbacks.cam_miou.CAMScore", {"summary_file": None}),  # the module path, not the re-export
            ("caef.callbacks.CAMWriter", {"output_dir": None}),
            ("caef.callbacks.pseudo_label_score.PseudoLabelScore", {"pseudo_dir": None, "cam_dir": None,
                                                                     "seed_dir": None, "summary_file": "mine.json"}),
            ("lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint", {"dirpath": None}),
        ],
    )  # fmt: skip
    fill_run_layout(config, "cgnet")
    score, writer, pseudo, checkpoint = (c.init_args for c in config.trainer.callbacks)
    assert score.summary_file == str(run / "summary.json")
    assert writer.output_dir == str(run / "cams" / "cgnet")
    assert pseudo.pseudo_dir == str(run / "pseudo") and pseudo.cam_dir == str(run / "cams" / "cgnet")
    assert pseudo.seed_dir == str(run / "seeds") and pseudo.summary_file == "mine.json"  # a set value is kept
    assert checkpoint.dirpath == str(run / "cgnet") and config.trainer.default_root_dir == str(run / "cgnet")
    assert config.model.ordinary_classifier == str(run / "classifier" / "last.ckpt")


def test_the_pipeline_passes_the_paths_the_stages_write(tmp_path):
    from caef.pipeline import Pipeline, PipelineConfig

    config = PipelineConfig.load(Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml")
    config.runs_root = str(tmp_path)
    pipeline = Pipeline(config)
    run = pipeline.run_dir
    assert f"--ckpt_path={run / 'cgnet' / 'last.ckpt'}" in pipeline.argv("cams")
    assert f"--cam-dir={run / 'cams' / 'cgnet'}" in pipeline.argv("crf")
    assert f"--out-dir={run / 'seeds'}" in pipeline.argv("crf")
    assert f"--ckpt_path={run / 'affinity' / 'last.ckpt'}" in pipeline.argv("pseudo")
    assert f"--data.label_dir={run / 'pseudo'}" in pipeline.argv("deeplab")
