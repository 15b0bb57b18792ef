"""Loading a bundle is bounded and strict; replacing one is atomic under concurrency (issue 12)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from sccsa_infer import bundle as bundle_module
from sccsa_infer.atomic import TEMP_MARK
from sccsa_infer.bundle import METADATA_FILE, METADATA_KEY, MODEL_FILE, load_bundle, write_bundle
from sccsa_infer.cli import main as infer_main
from sccsa_infer.errors import BundleError, SccsaWarning
from sccsa_infer.predictor import Predictor
from sccsa_infer.selftest import run_selftest


def _copy(bundle_dir, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(bundle_dir, target)
    return target


def _zip(folder, archive, *, prefix="", extra=()):
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(folder.iterdir()):
            z.write(path, prefix + path.name)
        for name, data in extra:
            z.writestr(name, data)
    return archive


@pytest.fixture
def reads(monkeypatch):
    """The names of the bundle members that loading actually reads."""
    seen: list[str] = []
    for cls in (bundle_module._FolderMembers, bundle_module._ZipMembers):
        original = cls.read

        def spy(self, name, _original=original):
            seen.append(name)
            return _original(self, name)

        monkeypatch.setattr(cls, "read", spy)
    return seen


def test_zip_with_an_unlisted_huge_member_is_refused_without_inflating(bundle_dir, tmp_path, reads):
    huge = tmp_path / "bomb.zip"
    with zipfile.ZipFile(huge, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(bundle_dir.iterdir()):
            z.write(path, path.name)
        with z.open("padding.bin", "w", force_zip64=True) as member:  # 1 GiB of zeros, ~1 MB compressed
            block = b"\0" * 2**24
            for _ in range(64):
                member.write(block)
    assert huge.stat().st_size < 8 * 2**20
    with pytest.raises(BundleError, match="does not list.*padding.bin"):
        load_bundle(huge)
    assert "padding.bin" not in reads and MODEL_FILE not in reads  # bundle.json only


def test_oversized_listed_member_is_refused_before_reading(bundle_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_module, "MAX_MEMBER_BYTES", 1000)
    archive = _zip(bundle_dir, tmp_path / "m.zip")
    with pytest.raises(BundleError, match="more than any sccsa bundle holds"):
        load_bundle(archive)
    with pytest.raises(BundleError, match="more than any sccsa bundle holds"):
        load_bundle(bundle_dir)


def test_a_data_folder_is_refused_without_reading_its_files(tmp_path, reads):
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(3):
        (folder / f"part{i}.h5ad").write_bytes(b"\0" * 2**20)
    result = CliRunner().invoke(infer_main, ["info", str(folder)])
    assert result.exit_code != 0 and "not an sccsa model bundle" in result.output
    assert reads == []


def test_zip_paths_must_be_flat_or_one_folder(bundle_dir, tmp_path):
    shadow = _zip(bundle_dir, tmp_path / "shadow.zip", extra=[("a/model.onnx", b"not the model")])
    with pytest.raises(BundleError, match="nested or unsafe paths"):
        load_bundle(shadow)
    escape = _zip(bundle_dir, tmp_path / "escape.zip", extra=[("../model.onnx", b"x")])
    with pytest.raises(BundleError, match="nested or unsafe paths"):
        load_bundle(escape)
    folder_zip = _zip(bundle_dir, tmp_path / "folder.zip", prefix="model/")  # what `zip -r m.zip model/` gives
    assert load_bundle(folder_zip).model_bytes == (bundle_dir / MODEL_FILE).read_bytes()


def test_symlinks_may_not_leave_the_bundle(bundle_dir, tmp_path):
    copy = _copy(bundle_dir, tmp_path)
    outside = tmp_path / "outside.onnx"
    shutil.move(copy / MODEL_FILE, outside)
    (copy / MODEL_FILE).symlink_to(outside)
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(copy)
    inside = _copy(bundle_dir, tmp_path, "inside")
    shutil.move(inside / MODEL_FILE, inside / "real.onnx")
    (inside / MODEL_FILE).symlink_to("real.onnx")
    with pytest.warns(SccsaWarning, match="real.onnx"):  # an unlisted file: named, never read
        assert load_bundle(inside).model_bytes == (bundle_dir / MODEL_FILE).read_bytes()


def test_unlisted_files_in_a_folder_are_ignored_with_a_warning(bundle_dir, tmp_path):
    copy = _copy(bundle_dir, tmp_path)
    (copy / "notes.txt").write_text("mine")
    with pytest.warns(SccsaWarning, match="notes.txt"):
        bundle = load_bundle(copy)
    assert "notes.txt" not in bundle.members


@pytest.mark.parametrize("field", ["schema_version", "n_clusters"])
def test_booleans_are_not_integers(bundle_dir, tmp_path, field):
    copy = _copy(bundle_dir, tmp_path)
    meta = json.loads((copy / METADATA_FILE).read_text())
    meta[field] = True
    (copy / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleError):
        load_bundle(copy)


def test_listed_names_must_be_plain_files(bundle_dir, tmp_path):
    copy = _copy(bundle_dir, tmp_path)
    meta = json.loads((copy / METADATA_FILE).read_text())
    meta["files"]["../../etc/passwd"] = "0" * 64
    (copy / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="unusable file names"):
        load_bundle(copy)


def test_verify_checks_the_gene_order(bundle_dir, tmp_path):
    """A consistent edit of the gene order (both metadata copies, hashes updated) fails verify."""
    assert run_selftest(Predictor(bundle_dir))["genes_checked"]
    original = load_bundle(bundle_dir)
    meta = original.embedded_metadata()
    meta["genes"] = list(reversed(meta["genes"]))
    model = onnx.load_from_string(original.model_bytes)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = bundle_module.canonical_json(meta)
    files = {k: v for k, v in original.members.items() if k != METADATA_FILE}
    files[MODEL_FILE] = model.SerializeToString()
    edited = write_bundle(tmp_path / "edited", meta, files)
    predictor = Predictor(edited)  # hashes and the two metadata copies agree
    with pytest.raises(BundleError, match="self-test failed"):
        run_selftest(predictor)
    result = CliRunner().invoke(infer_main, ["verify", str(edited)])
    assert result.exit_code != 0 and "self-test failed" in result.output


def test_a_bundle_replaced_while_being_read_is_read_again(bundle_dir, tmp_path, monkeypatch):
    target = _copy(bundle_dir, tmp_path, "model")
    newer = _copy(bundle_dir, tmp_path, "newer")
    (newer / "report.json").write_text("{}")
    meta = json.loads((newer / METADATA_FILE).read_text())
    meta["files"]["report.json"] = bundle_module.sha256_bytes(b"{}")
    (newer / METADATA_FILE).write_text(json.dumps(meta))
    original = bundle_module._FolderMembers.read
    swapped = []

    def read_then_swap(self, name):
        data = original(self, name)
        if not swapped:  # a writer exchanges the folder and deletes the old one mid-read
            swapped.append(name)
            aside = tmp_path / "aside"
            target.rename(aside)
            newer.rename(target)
            shutil.rmtree(aside)
        return data

    monkeypatch.setattr(bundle_module._FolderMembers, "read", read_then_swap)
    loaded = load_bundle(target)
    assert swapped and loaded.members["report.json"] == b"{}"


WRITER = """
import sys
from pathlib import Path
from sccsa_infer import atomic
from sccsa_infer.bundle import METADATA_FILE, load_bundle, write_bundle
source, target, tag, rounds, exchange = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
if exchange == "no":
    atomic._exchange = lambda a, b: False
bundle = load_bundle(source)
files = {k: v for k, v in bundle.members.items() if k != METADATA_FILE}
for i in range(rounds):
    files["report.json"] = f'{{"writer": "{tag}", "round": {i}}}'.encode()
    write_bundle(target, bundle.embedded_metadata(), files, overwrite=True)
"""

READER = """
import sys, time
from pathlib import Path
from sccsa_infer.bundle import load_bundle
target, stop = Path(sys.argv[1]), Path(sys.argv[2])
loads = 0
while not stop.exists():
    bundle = load_bundle(target)  # raises on any missing, partial or mixed bundle
    assert bundle.members["report.json"].startswith(b'{"writer"')
    loads += 1
print(loads)
"""


def _python(script, *args):
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("exchange", ["yes", "no"])
def test_concurrent_overwriting_writers_and_a_reader(bundle_dir, tmp_path, exchange):
    """Two writers replace the same bundle over and over while a reader loads it: no error
    anywhere, the reader never sees a partial bundle, nothing is left behind. Without the
    atomic exchange (file systems that lack it) the writers still never break each other."""
    target = tmp_path / "model"
    write_bundle(target, load_bundle(bundle_dir).embedded_metadata(),
                 {k: (b'{"writer": "first"}' if k == "report.json" else v)
                  for k, v in load_bundle(bundle_dir).members.items() if k != METADATA_FILE})
    stop = tmp_path / "stop"
    reader = _python(READER, target, stop) if exchange == "yes" else None
    writers = [_python(WRITER, bundle_dir, target, tag, 40, exchange) for tag in ("a", "b")]
    outcomes = [w.communicate(timeout=300) + (w.returncode,) for w in writers]
    stop.touch()
    for out, err, code in outcomes:
        assert code == 0, err
    if reader is not None:
        out, err = reader.communicate(timeout=120)
        assert reader.returncode == 0, err
        assert int(out) > 0
    assert json.loads(load_bundle(target).members["report.json"])["round"] == 39
    assert not [p for p in tmp_path.iterdir() if TEMP_MARK in p.name]


def test_served_labels_survive_a_zip_round_trip_through_a_folder_zip(bundle_dir, tmp_path, query_h5ad):
    import anndata as ad

    archive = _zip(bundle_dir, tmp_path / "m.zip", prefix="model/")
    query = ad.read_h5ad(query_h5ad)
    np.testing.assert_array_equal(Predictor(archive).predict(query).cluster, Predictor(bundle_dir).predict(query).cluster)
