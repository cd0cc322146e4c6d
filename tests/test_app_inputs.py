"""What the app accepts from outside (app/inputs.py): checkpoint zips, CSV/TSV uploads,
thresholds and text. Each refusal must say why."""

from __future__ import annotations

import io
import shutil
import stat
import zipfile
from pathlib import Path

import pytest
from app_support import tiny_checkpoint_root  # noqa: F401

from app import inputs
from dasg_moe import load_checkpoint

CHECKPOINT = "mrpc-tiny-dasg"


def make_zip(entries: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


@pytest.fixture()
def files(tiny_checkpoint_root) -> dict[str, bytes]:  # noqa: F811
    folder = tiny_checkpoint_root / CHECKPOINT
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("prefix", ["", "my-checkpoint/"])
def test_zip_of_a_checkpoint_extracts_and_loads(files, tmp_path, prefix):
    data = make_zip({prefix + name: blob for name, blob in files.items()}
                    | {prefix + "notes.txt": b"ignored"})
    folder = inputs.extract_checkpoint_zip(data, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)
    load_checkpoint(folder)
    assert inputs.extract_checkpoint_zip(data, tmp_path) == folder  # same upload, same folder


@pytest.mark.parametrize("name", ["../evil.json", "a/../../evil.json", "/etc/evil.json",
                                  "C:\\evil.json", "a\\..\\evil.json"])
def test_zip_path_traversal_is_refused(files, tmp_path, name):
    with pytest.raises(inputs.InputError, match="Refused zip entry"):
        inputs.extract_checkpoint_zip(make_zip({**files, name: b"x"}), tmp_path / "out")
    assert not (tmp_path / "evil.json").exists()


def test_zip_symlink_is_refused(files, tmp_path):
    with pytest.raises(inputs.InputError, match="symbolic links"):
        inputs.extract_checkpoint_zip(make_zip(files, symlinks=("link",)), tmp_path)


def test_zip_problems_are_explained(files, tmp_path, monkeypatch):
    with pytest.raises(inputs.InputError, match="not a readable .zip"):
        inputs.extract_checkpoint_zip(b"not a zip", tmp_path)
    no_config = {k: v for k, v in files.items() if k != "config.json"}
    with pytest.raises(inputs.InputError, match="exactly one checkpoint folder"):
        inputs.extract_checkpoint_zip(make_zip(no_config), tmp_path)
    two = {**files, **{f"b/{k}": v for k, v in files.items()}}
    with pytest.raises(inputs.InputError, match="found 2"):
        inputs.extract_checkpoint_zip(make_zip(two), tmp_path)
    pickled = {"config.json": files["config.json"], "pytorch_model.bin": b"\x80\x04."}
    with pytest.raises(inputs.InputError, match="Pickle weights are refused"):
        inputs.extract_checkpoint_zip(make_zip(pickled), tmp_path)
    monkeypatch.setattr(inputs, "MAX_UNZIPPED_BYTES", 1000)
    with pytest.raises(inputs.InputError, match="unpack to"):
        inputs.extract_checkpoint_zip(make_zip(files), tmp_path)
    monkeypatch.setattr(inputs, "MAX_ZIP_BYTES", 10)
    with pytest.raises(inputs.InputError, match="limit is"):
        inputs.extract_checkpoint_zip(make_zip(files), tmp_path)


def test_zip_bomb_with_lying_headers_is_stopped(files, tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "MAX_UNZIPPED_BYTES", 50_000)
    data = bytearray(make_zip({**files, "README.md": b"a" * 60_000}))
    # Rewrite the declared size of README.md in the central directory to 1 byte.
    archive = zipfile.ZipFile(io.BytesIO(bytes(data)))
    info = archive.getinfo("README.md")
    assert info.file_size == 60_000
    central = bytes(data).rfind(b"PK\x01\x02", 0, len(data))
    while bytes(data[central + 46:central + 46 + 9]) != b"README.md":
        central = bytes(data).rfind(b"PK\x01\x02", 0, central)
    data[central + 24:central + 28] = (1).to_bytes(4, "little")
    with pytest.raises(inputs.InputError):
        inputs.extract_checkpoint_zip(bytes(data), tmp_path)
    assert not any(p.is_dir() and not p.name.startswith(".") for p in tmp_path.iterdir())


MRPC_CSV = ("sentence1,sentence2,label\n"
            "\"A man, a plan.\",A plan.,1\n"
            "Shares fell.,Stocks dropped.,equivalent\n"
            "It rained.,It was sunny.,0\n")


def test_csv_upload_is_parsed_with_ids_or_label_names():
    frame = inputs.read_table_upload(MRPC_CSV.encode(), "data.csv", "mrpc",
                                     {0: "not_equivalent", 1: "equivalent"})
    assert frame.columns.tolist() == ["sentence1", "sentence2", "label"]
    assert frame["label"].tolist() == [1, 1, 0]
    tsv = MRPC_CSV.replace(",", "\t").replace("\"A man\t a plan.\"", "A man a plan.")
    assert len(inputs.read_table_upload(tsv.encode(), "data.tsv", "mrpc")) == 3


@pytest.mark.parametrize("text, name, message", [
    ("sentence,label\nhi,1\n", "x.csv", "lacks column"),
    ("sentence1,sentence2,label\na,b,7\n", "x.csv", r"Label\(s\) not understood"),
    ("sentence1,sentence2,label\na,,1\n", "x.csv", "is empty in row"),
    ("sentence1,sentence2,label\n", "x.csv", "has no rows"),
    ("a,b", "x.json", "Upload a .csv or .tsv"),
])
def test_csv_upload_problems_are_explained(text, name, message):
    with pytest.raises(inputs.InputError, match=message):
        inputs.read_table_upload(text.encode(), name, "mrpc")


def test_csv_upload_limits(monkeypatch):
    with pytest.raises(inputs.InputError, match="not UTF-8"):
        inputs.read_table_upload(b"sentence1,sentence2,label\n\xff\xfe,b,1\n", "x.csv", "mrpc")
    monkeypatch.setattr(inputs, "MAX_TABLE_ROWS", 2)
    with pytest.raises(inputs.InputError, match="more than 2 rows"):
        inputs.read_table_upload(MRPC_CSV.encode(), "x.csv", "mrpc")


def test_thresholds_and_text_checks():
    assert inputs.parse_threshold("0.25", "theta_s") == 0.25
    for bad in ("abc", "1.5", "-0.1", "nan"):
        with pytest.raises(inputs.InputError, match="theta_s"):
            inputs.parse_threshold(bad, "theta_s")
    inputs.check_thresholds(0.3, 0.3)
    with pytest.raises(inputs.InputError, match="must not exceed"):
        inputs.check_thresholds(0.8, 0.2)
    with pytest.raises(inputs.InputError, match="empty"):
        inputs.check_text(" \n\t")


def test_checkpoint_listing_follows_the_environment(tiny_checkpoint_root, monkeypatch,  # noqa: F811
                                                    tmp_path):
    monkeypatch.setenv(inputs.CHECKPOINT_DIR_ENV, str(tiny_checkpoint_root))
    assert CHECKPOINT in inputs.list_checkpoints()
    (tmp_path / "not-a-checkpoint").mkdir()
    assert inputs.list_checkpoints(tmp_path) == []
    assert inputs.list_checkpoints(tmp_path / "missing") == []
    folder = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint_root / CHECKPOINT, folder)
    stamp = inputs.fingerprint(folder)
    (folder / "README.md").write_text("changed card\n")
    assert inputs.fingerprint(folder) != stamp


def test_glue_sample_is_the_first_rows(monkeypatch):
    monkeypatch.setenv("DASG_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" /
                                            "data" / "glue"))
    data = inputs.glue_examples("mrpc", 5)
    assert len(data) == 5 and data["idx"][:2] == [9, 18]
    monkeypatch.setenv("DASG_DATA_DIR", "/nonexistent")
    with pytest.raises(inputs.InputError, match="No local GLUE data"):
        inputs.glue_examples("mrpc", 5)
