"""Uploads (app/inputs.py): a checkpoint folder as a .zip and a labelled dataset as CSV/TSV.

Every refusal is checked word for word: the message is what the user reads in the app, so
it must say what is wrong and what to do. All archives and tables are built here, in memory
(nothing binary is committed), and the size limits are the real ones, not lowered for the
test: the zip bomb is 401 MiB of zeros that deflate to under 2 MB.
"""

from __future__ import annotations

import io
import random
import re
import stat
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app import inputs
from dasg_moe import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_checkpoints" / "mrpc-dasg-small"
NEEDS = "config.json, model.safetensors, tokenizer.json"
MRPC_IDS = "0 (not_equivalent), 1 (equivalent)"


def make_zip(entries: dict[str, bytes], symlinks: tuple[str, ...] = (),
             level: int = 6) -> bytes:
    """A deflated zip of `entries`, plus symbolic-link entries named `symlinks`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def patch_central(data: bytes, name: str, offset: int, value: bytes) -> bytes:
    """Overwrite bytes of `name`'s central-directory record (offsets of the zip spec:
    8 flags, 10 method, 24 uncompressed size), as a hostile archiver would write it."""
    out = bytearray(data)
    end = out.rfind(b"PK\x05\x06")
    pos = int.from_bytes(out[end + 16:end + 20], "little")  # start of the central directory
    while out[pos:pos + 4] == b"PK\x01\x02":
        n, extra, comment = (int.from_bytes(out[pos + i:pos + i + 2], "little")
                             for i in (28, 30, 32))
        if out[pos + 46:pos + 46 + n] == name.encode():
            out[pos + offset:pos + offset + len(value)] = value
            return bytes(out)
        pos += 46 + n + extra + comment
    raise KeyError(name)


def refused(data: bytes, root: Path, message: str) -> None:
    """Extraction fails with exactly `message` and leaves nothing under `root`."""
    with pytest.raises(inputs.InputError) as err:
        inputs.extract_checkpoint_zip(data, root)
    assert str(err.value) == message
    assert not root.exists() or not any(root.iterdir())


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    """The files of a shipped checkpoint."""
    return {p.name: p.read_bytes() for p in SAMPLE.iterdir() if p.is_file()}


# ---------------------------------------------------------------------------------------
# Checkpoint .zip: what is accepted
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "my-checkpoint/"])
def test_zip_of_a_checkpoint_extracts_and_loads(files, tmp_path, prefix):
    data = make_zip({prefix + name: blob for name, blob in files.items()}
                    | {prefix + "notes.txt": b"ignored", "other/readme.txt": b"ignored"})
    folder = inputs.extract_checkpoint_zip(data, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)
    assert load_checkpoint(folder).config.task == "mrpc"
    assert inputs.extract_checkpoint_zip(data, tmp_path) == folder  # same upload, same folder
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no staging folder left


def test_the_same_upload_from_concurrent_sessions_is_extracted_once(files, tmp_path):
    data = make_zip(files)
    with ThreadPoolExecutor(max_workers=6) as pool:
        folders = list(pool.map(lambda _: inputs.extract_checkpoint_zip(data, tmp_path),
                                range(12)))
    assert len(set(folders)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [folders[0].name]
    assert {p.name: p.read_bytes() for p in folders[0].iterdir()} == files


# ---------------------------------------------------------------------------------------
# Checkpoint .zip: sizes
# ---------------------------------------------------------------------------------------


def test_zip_over_the_upload_limit_is_refused_unread(tmp_path):
    data = bytes(inputs.MAX_ZIP_BYTES + 1)  # 200 MiB + 1 byte: refused before parsing
    refused(data, tmp_path / "out", "The zip is 200.1 MB; the limit is 200 MB. Zip only the "
                                    f"checkpoint files ({NEEDS}).")


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A 1.8 MB zip whose model.safetensors unpacks to 401 MiB (the limit is 400 MiB)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("config.json", b"{}")
        archive.writestr("tokenizer.json", b"{}")
        with archive.open("model.safetensors", "w") as f:
            zeros = bytes(2**20)
            for _ in range(inputs.MAX_UNZIPPED_BYTES // 2**20 + 1):
                f.write(zeros)
    data = buffer.getvalue()
    assert len(data) < 2 * 2**20
    return data


def test_zip_bomb_is_refused_before_anything_is_unpacked(bomb, tmp_path):
    refused(bomb, tmp_path / "out",
            "The checkpoint files unpack to 401.1 MB; the limit is 400 MB.")


def test_zip_whose_headers_understate_the_size_is_stopped_as_corrupt(bomb, tmp_path):
    # The central directory claims model.safetensors unpacks to 1 KiB: reading stops there
    # and the checksum of what was read does not match.
    lying = patch_central(bomb, "model.safetensors", 24, (1024).to_bytes(4, "little"))
    refused(lying, tmp_path / "out",
            "The zip is corrupt: Bad CRC-32 for file 'model.safetensors'")


def test_zip_with_too_many_entries_is_refused(files, tmp_path):
    entries = {**files, **{f"extra/{i}.txt": b"x" for i in range(60)}}
    assert len(entries) == inputs.MAX_ZIP_ENTRIES + 1
    refused(make_zip(entries), tmp_path / "out",
            "The zip has 65 entries; a checkpoint needs at most 5 files (limit 64).")


# ---------------------------------------------------------------------------------------
# Checkpoint .zip: entries that could escape the extraction folder
# ---------------------------------------------------------------------------------------

TRAVERSAL = "'..' points outside the archive (path traversal)."
BACKSLASH = ("backslashes are not allowed in zip paths (on Windows they are folder separators "
             "and can point outside the archive).")


@pytest.mark.parametrize("name, reason", [
    ("../evil.json", TRAVERSAL),
    ("a/../../evil.json", TRAVERSAL),
    ("my-checkpoint/../../evil.json", TRAVERSAL),
    ("/etc/evil.json", "absolute paths are not allowed (path traversal)."),
    ("/config.json", "absolute paths are not allowed (path traversal)."),
    ("..\\evil.json", BACKSLASH),
    ("a\\..\\..\\evil.json", BACKSLASH),
    ("C:\\evil.json", BACKSLASH),
    ("C:/evil.json", "drive letters and colons are not allowed in zip paths."),
])
def test_zip_entries_pointing_outside_are_refused(files, tmp_path, name, reason):
    out = tmp_path / "deep" / "out"
    refused(make_zip({**files, name: b"x"}), out, f"Refused zip entry {name!r}: {reason}")
    assert not list(tmp_path.rglob("evil.json"))


@pytest.mark.parametrize("link", ["link", "config.json", "my-checkpoint/model.safetensors"])
def test_zip_symlinks_are_refused(files, tmp_path, link):
    entries = {k: v for k, v in files.items() if k != link}
    refused(make_zip(entries, symlinks=(link,)), tmp_path / "out",
            f"Refused zip entry {link!r}: symbolic links are not allowed.")


# ---------------------------------------------------------------------------------------
# Checkpoint .zip: contents that are not a checkpoint
# ---------------------------------------------------------------------------------------


def test_zip_without_config_json_is_refused(files, tmp_path):
    no_config = {k: v for k, v in files.items() if k != "config.json"}
    refused(make_zip(no_config), tmp_path / "out",
            f"The zip holds no config.json. Zip one checkpoint folder ({NEEDS}).")


def test_zip_with_two_checkpoints_is_refused(files, tmp_path):
    two = {**{f"a/{k}": v for k, v in files.items()}, **{f"b/{k}": v for k, v in files.items()}}
    refused(make_zip(two), tmp_path / "out",
            "The zip holds 2 config.json files (a/config.json, b/config.json); it must hold "
            "exactly one checkpoint folder.")


def test_zip_with_pickle_weights_is_refused_with_the_reason(files, tmp_path):
    pickled = {"config.json": files["config.json"], "tokenizer.json": files["tokenizer.json"],
               "pytorch_model.bin": b"\x80\x04."}
    refused(make_zip(pickled), tmp_path / "out",
            "The zip holds pytorch_model.bin but no model.safetensors. Pickle weights are "
            "refused: unpickling can run arbitrary code.")


def test_zip_missing_a_required_file_is_refused(files, tmp_path):
    partial = {k: v for k, v in files.items() if k != "tokenizer.json"}
    refused(make_zip(partial), tmp_path / "out",
            f"The checkpoint folder in the zip lacks tokenizer.json; a checkpoint needs {NEEDS}.")


@pytest.mark.parametrize("data", [b"", b"not a zip", b"PK\x05\x06" + bytes(10)])
def test_non_zip_upload_is_refused(data, tmp_path):
    refused(data, tmp_path / "out", "The upload is not a readable .zip archive.")


def test_encrypted_and_unsupported_entries_are_refused(files, tmp_path):
    data = make_zip(files)
    encrypted = patch_central(data, "model.safetensors", 8, (1).to_bytes(2, "little"))
    refused(encrypted, tmp_path / "out", "Refused zip entry 'model.safetensors': it is "
                                         "encrypted. Upload a zip without a password.")
    aes = patch_central(data, "tokenizer.json", 10, (99).to_bytes(2, "little"))
    refused(aes, tmp_path / "out",
            "Refused zip entry 'tokenizer.json': compression method 99 is not supported; use "
            "stored or deflate, as a plain .zip does.")


def test_damaged_zips_give_an_input_error_and_leave_nothing_behind(tmp_path):
    """Truncated archives and flipped bytes: either a clean extraction or an InputError,
    never another exception and never a half-written folder."""
    entries = {"config.json": b'{"a": 1}' * 50, "model.safetensors": bytes(range(256)) * 40,
               "tokenizer.json": b'{"t": 2}' * 50}
    data = make_zip(entries)
    rng = random.Random(0)
    damaged = [data[:cut] for cut in range(0, len(data), 97)]
    for _ in range(400):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        damaged.append(bytes(mutated))
    outcomes = {"extracted": 0, "refused": 0}
    for blob in damaged:
        try:
            folder = inputs.extract_checkpoint_zip(blob, tmp_path)
        except inputs.InputError as err:
            assert str(err)
            outcomes["refused"] += 1
        else:
            assert sorted(p.name for p in folder.iterdir()) == sorted(entries)
            outcomes["extracted"] += 1
    assert outcomes["refused"] > 50
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


# ---------------------------------------------------------------------------------------
# Dataset CSV / TSV
# ---------------------------------------------------------------------------------------

MRPC_CSV = ("sentence1,sentence2,label\n"
            "\"A man, a plan.\",A plan.,1\n"
            "Shares fell.,Stocks dropped.,equivalent\n"
            "It rained.,It was sunny.,0\n")


def read(text: str | bytes, name: str = "x.csv", task: str = "mrpc"):
    data = text.encode() if isinstance(text, str) else text
    return inputs.read_table_upload(data, name, task,
                                    {0: "not_equivalent", 1: "equivalent"}
                                    if task == "mrpc" else None)


def table_refused(text: str | bytes, message: str, name: str = "x.csv",
                  task: str = "mrpc") -> None:
    with pytest.raises(inputs.InputError) as err:
        read(text, name, task)
    assert str(err.value) == message


def test_csv_and_tsv_uploads_are_parsed_with_ids_or_label_names():
    frame = read(MRPC_CSV)
    assert frame.columns.tolist() == ["sentence1", "sentence2", "label"]
    assert frame["label"].tolist() == [1, 1, 0]
    assert frame["sentence1"][0] == "A man, a plan."
    tsv = "sentence1\tsentence2\tlabel\textra\nA man.\tA plan.\tNOT_EQUIVALENT\tx\n"
    assert read(tsv, "data.tsv")["label"].tolist() == [0]
    assert read("\ufeff" + MRPC_CSV)["label"].tolist() == [1, 1, 0]  # a spreadsheet's BOM
    assert read("sentence,label\nGreat film.,positive\nDull.,0\n", task="sst2")[
        "label"].tolist() == [1, 0]


@pytest.mark.parametrize("text, name, task, message", [
    ("sentence,label\nhi,1\n", "x.csv", "mrpc",
     "'x.csv' lacks column(s) sentence1, sentence2. Task mrpc needs sentence1, sentence2, "
     "label; the file has sentence, label."),
    ("sentence1,sentence2,gold\na,b,1\n", "x.csv", "mrpc",
     "'x.csv' lacks column(s) label. Task mrpc needs sentence1, sentence2, label; the file "
     "has sentence1, sentence2, gold."),
    ("text,label\nhi,1\n", "x.csv", "sst2",
     "'x.csv' lacks column(s) sentence. Task sst2 needs sentence, label; the file has text, "
     "label."),
    ("sentence1,sentence2,label\na,b,1\n", "x.tsv", "mrpc",
     "'x.tsv' lacks column(s) sentence1, sentence2, label. Task mrpc needs sentence1, "
     "sentence2, label; the file has sentence1,sentence2,label. The header looks "
     "comma-separated: name the file .csv."),
    ("sentence1\tsentence2\tlabel\na\tb\t1\n", "x.csv", "mrpc",
     "'x.csv' lacks column(s) sentence1, sentence2, label. Task mrpc needs sentence1, "
     "sentence2, label; the file has sentence1\tsentence2\tlabel. The header looks "
     "tab-separated: name the file .tsv."),
])
def test_wrong_or_missing_columns_are_named(text, name, task, message):
    table_refused(text, message, name, task)


@pytest.mark.parametrize("label", ["7", "-1", "1.5", "2", "maybe", "", "nan"])
def test_wrong_label_values_are_refused(label):
    table_refused(f"sentence1,sentence2,label\na,b,1\nc,d,{label}\n",
                  f"Label(s) not understood in row(s) 2: {label!r}. Use one of {MRPC_IDS}.")


def test_many_wrong_labels_are_summarised():
    rows = "".join(f"s{i},t{i},x{i}\n" for i in range(7))
    table_refused("sentence1,sentence2,label\n" + rows,
                  f"Label(s) not understood in row(s) 1, 2, 3, 4, 5 ...: 'x0'. Use one of "
                  f"{MRPC_IDS}.")


@pytest.mark.parametrize("data", [b"", b"\n", b"  \r\n\t\n"])
def test_empty_file_is_refused(data):
    table_refused(data, "'x.csv' is empty. It needs a header row (sentence1, sentence2, "
                        "label) and at least one example.")


def test_header_without_rows_and_empty_cells_are_refused():
    table_refused("sentence1,sentence2,label\n", "'x.csv' has no rows.")
    table_refused("sentence1,sentence2,label\na,b,1\nc,  ,0\n",
                  "Column 'sentence2' is empty in row(s) 2; every example needs text.")


@pytest.mark.parametrize("data", [
    b"sentence1,sentence2,label\n\xff\xfe,b,1\n",  # Latin-1 bytes
    "sentence1,sentence2,label\ncaf\u00e9,b,1\n".encode("latin-1"),
    MRPC_CSV.encode("utf-16"),  # a spreadsheet's "Unicode text"
])
def test_non_utf8_bytes_are_refused(data):
    table_refused(data, "'x.csv' is not UTF-8 text. Save it as UTF-8 (in a spreadsheet: "
                        "\"CSV UTF-8\") and upload it again.")


def test_oversized_file_is_refused_unread():
    data = b"sentence1,sentence2,label\n" + b"a" * inputs.MAX_TABLE_BYTES
    table_refused(data, "'x.csv' is 20.1 MB; the limit is 20 MB. Upload a sample of at most "
                        "20,000 rows.")


def test_row_limit_is_exact():
    header = "sentence1,sentence2,label\n"
    rows = [f"s{i},t{i},{i % 2}\n" for i in range(inputs.MAX_TABLE_ROWS + 1)]
    assert len(read(header + "".join(rows[:-1]))) == inputs.MAX_TABLE_ROWS
    table_refused(header + "".join(rows),
                  "'x.csv' has more than 20,000 rows; upload a sample of at most 20,000.")


def test_unparseable_and_wrong_kind_of_file_are_refused():
    table_refused("sentence1,sentence2,label\na,b,1\nc,d,0,extra\n",
                  "Could not parse 'x.csv' as CSV: Error tokenizing data. C error: Expected 3 "
                  "fields in line 3, saw 4")
    table_refused(MRPC_CSV, "Upload a .csv or .tsv file (got 'x.json').", name="x.json")
    table_refused(MRPC_CSV, "Upload a .csv or .tsv file (got 'data').", name="data")


def test_messages_never_show_a_traceback_or_a_path_of_this_server():
    """Refusals name the upload by the user's file name, nothing of the server's disk."""
    for text, name in [("sentence,label\nhi,1\n", "mine.csv"), ("", "mine.csv"),
                       ("a,b\n", "mine.tsv")]:
        with pytest.raises(inputs.InputError) as err:
            read(text, name)
        assert "mine." in str(err.value)
        assert not re.search(r"/(tmp|home|work|usr)/|Traceback", str(err.value))
