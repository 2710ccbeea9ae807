"""Case 2: fingerprints include caef's own code. After a change of the sources, done stages rerun (saying it is
because the code changed) and no other run's results of the old code are copied; ``--keep_stale_code`` keeps them
and says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from caef import code_fingerprint
from caef.code_fingerprint import code_identity, source_digest
from tests.reliability.pipeline_fixtures import classifier_pipeline, manifest


def test_the_source_digest_follows_every_source_file(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "sub" / "b.py").write_text("y = 2\n")
    first = source_digest(tmp_path / "pkg")
    (tmp_path / "pkg" / "sub" / "b.py").write_text("y = 3\n")
    second = source_digest(tmp_path / "pkg")
    (tmp_path / "pkg" / "sub" / "b.py").rename(tmp_path / "pkg" / "b.py")
    assert len({first, second, source_digest(tmp_path / "pkg")}) == 3
    identity = code_identity()
    assert identity["version"] and len(identity["sources"]) == 16


@pytest.fixture()
def new_code(monkeypatch):
    """From now on, caef's sources are different ones."""
    changed = dict(code_identity(), sources="0123456789abcdef")
    monkeypatch.setattr(code_fingerprint, "code_identity", lambda: changed)
    return changed


def test_a_code_change_reruns_done_stages_and_says_why(tmp_path, tiny_synth, capsys, monkeypatch):
    old = classifier_pipeline(tmp_path, tiny_synth)
    old.run()
    before = manifest(old.run_dir)["stages"]["classifier"]
    assert before["code"] == code_identity()["sources"] and manifest(old.run_dir)["code"] == code_identity()
    changed = dict(code_identity(), sources="0123456789abcdef")
    monkeypatch.setattr(code_fingerprint, "code_identity", lambda: changed)

    kept = classifier_pipeline(tmp_path, tiny_synth, keep_stale_code=True)
    capsys.readouterr()
    kept.run()
    assert f"kept, computed by older code (sources {before['code']}; --keep_stale_code)" in capsys.readouterr().out
    assert manifest(kept.run_dir)["stages"]["classifier"]["finished"] == before["finished"]

    other = classifier_pipeline(tmp_path, tiny_synth, name="other")  # same settings, new code: not copied
    other.run()
    out = capsys.readouterr().out
    assert "copied" not in out and "not run yet" in out

    rerun = classifier_pipeline(tmp_path, tiny_synth)
    rerun.run()
    out = capsys.readouterr().out
    assert f"the code changed (caef sources {before['code']} -> 0123456789abcdef)" in out
    after = manifest(rerun.run_dir)["stages"]["classifier"]
    assert after["code"] == "0123456789abcdef" and after["fingerprint"] != before["fingerprint"]
    assert Path(rerun.run_dir / "classifier" / "last.ckpt").is_file()


def test_summary_names_the_caef_version_that_ran() -> None:
    """An editable install's metadata keeps the version it was installed at; the summary must name the code's."""
    import caef
    from caef.run_facts import versions

    assert versions()["caef"] == caef.__version__
