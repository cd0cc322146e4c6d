"""Everything the app accepts from outside, checked before use (DESIGN.md §6, issue 7).

Plain functions, no Streamlit: where checkpoints are found, a checkpoint folder uploaded as
a .zip (size limits, path-traversal-safe extraction), a labelled dataset uploaded as CSV/TSV
(columns and labels validated), and thresholds or other values read from the URL. Every
problem is raised as `InputError` with a message meant for the user, which the pages show
with `st.error`.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import datasets
import pandas as pd

from dasg_moe.checkpoint import PICKLE_SUFFIXES
from dasg_moe.data import DATA_DIR_ENV, get_task, load_glue

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_DIR_ENV = "DASG_CHECKPOINT_DIR"

# The files a checkpoint folder may hold (DESIGN.md §4); anything else in a zip is skipped.
CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "metrics.json",
                    "README.md")
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
MAX_ZIP_BYTES = 200 * 2**20  # the upload itself (matches server.maxUploadSize)
MAX_UNZIPPED_BYTES = 400 * 2**20  # all extracted files together (zip-bomb guard)
MAX_ZIP_ENTRIES = 64
# What zip tools write by default; others (AES, deflate64, ...) are refused up front.
ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
# A dataset upload is a labelled sample, not a corpus: a sweep runs every row once per pair.
MAX_TABLE_BYTES = 20 * 2**20
MAX_TABLE_ROWS = 20_000


class InputError(ValueError):
    """Input the app cannot use; the message says why and what to do."""


def _megabytes(n_bytes: int) -> str:
    """`n_bytes` in MB with one decimal, rounded up, so a size just over a limit never
    reads as equal to it (20 MB + 1 byte is "20.1 MB")."""
    return f"{math.ceil(n_bytes / 2**20 * 10) / 10:.1f} MB"


# ---------------------------------------------------------------------------------------
# Where checkpoints and data live
# ---------------------------------------------------------------------------------------


def checkpoint_root() -> Path:
    """Folder of the listed checkpoints: $DASG_CHECKPOINT_DIR, else `sample_checkpoints/`."""
    return Path(os.environ.get(CHECKPOINT_DIR_ENV) or REPO_ROOT / "sample_checkpoints")


def list_checkpoints(root: Path | None = None) -> list[str]:
    """Names of the sub-folders of `root` that hold a config.json, sorted."""
    root = checkpoint_root() if root is None else root
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "config.json").is_file())


def glue_dir() -> Path:
    """Local GLUE Parquet folder: $DASG_DATA_DIR, else `../shared/data/glue` beside the repo."""
    return Path(os.environ.get(DATA_DIR_ENV) or REPO_ROOT.parent / "shared" / "data" / "glue")


def glue_file(task: str, split: str = "validation") -> Path:
    """The Parquet file of one GLUE split; InputError when it is not there."""
    path = glue_dir() / get_task(task).name / f"{split}.parquet"
    if not path.is_file():
        raise InputError(f"No local GLUE data for {task}/{split}: {path} does not exist. Set "
                         f"{DATA_DIR_ENV} to a folder of GLUE Parquet files, or upload a "
                         f"CSV/TSV instead.")
    return path


def glue_examples(task: str, n: int | None, split: str = "validation") -> datasets.Dataset:
    """The first `n` rows (all for None) of a local GLUE split, as `analysis` takes them
    (`--max-examples n`), so the app's numbers match the command line's."""
    glue_file(task, split)  # a clear message when the file is missing
    dataset = load_glue(task, split, str(glue_dir()))
    if all(label < 0 for label in dataset["label"][:50]):
        raise InputError(f"{task}/{split} has no labels (GLUE hides test labels); use the "
                         f"validation split.")
    return dataset if n is None else dataset.select(range(min(n, len(dataset))))


def fingerprint(path: Path) -> str:
    """Size and modification time of a checkpoint's files: a changed file changes it, so a
    rebuilt checkpoint is reloaded instead of served stale from the cache."""
    parts = []
    for name in CHECKPOINT_FILES:
        file = path / name
        if file.is_file():
            info = file.stat()
            parts.append(f"{name}:{info.st_size}:{info.st_mtime_ns}")
    return "|".join(parts)


# ---------------------------------------------------------------------------------------
# A checkpoint folder uploaded as a zip
# ---------------------------------------------------------------------------------------


def _safe_member(name: str) -> PurePosixPath:
    """The member's path inside the archive, or InputError for anything that could escape
    the extraction folder or mean something else on another system."""
    refused = f"Refused zip entry {name!r}:"
    if "\x00" in name:
        raise InputError(f"{refused} its name contains a NUL character.")
    if "\\" in name:
        raise InputError(f"{refused} backslashes are not allowed in zip paths (on Windows "
                         f"they are folder separators and can point outside the archive).")
    if ":" in name:
        raise InputError(f"{refused} drive letters and colons are not allowed in zip paths.")
    path = PurePosixPath(name)
    if path.is_absolute():
        raise InputError(f"{refused} absolute paths are not allowed (path traversal).")
    if ".." in path.parts:
        raise InputError(f"{refused} '..' points outside the archive (path traversal).")
    return path


def _check_readable(info: zipfile.ZipInfo) -> None:
    """InputError for a checkpoint file this extractor cannot read without a password or an
    unsupported codec, said before anything is written."""
    if info.flag_bits & 0x1:
        raise InputError(f"Refused zip entry {info.filename!r}: it is encrypted. Upload a zip "
                         f"without a password.")
    if info.compress_type not in ZIP_METHODS:
        raise InputError(f"Refused zip entry {info.filename!r}: compression method "
                         f"{info.compress_type} is not supported; use "
                         f"{' or '.join(ZIP_METHODS.values())}, as a plain .zip does.")


def extract_checkpoint_zip(data: bytes, dest_root: Path | None = None) -> Path:
    """Check an uploaded checkpoint .zip and extract its checkpoint files; return the folder.

    Accepted layouts: the files at the top of the archive, or inside one folder. Every entry
    is checked (no path traversal, no symbolic links, at most MAX_ZIP_ENTRIES); only the
    files of DESIGN.md §4 are extracted, flat, by their base name; pickle weights are refused
    with the reason. Sizes are checked twice: the declared sizes before anything is written,
    and the bytes actually decompressed while writing (headers may lie). The destination is
    named by the archive's hash, so the same upload is extracted once; files are unpacked in
    a staging folder renamed into place, so a failed upload leaves nothing behind.
    """
    if len(data) > MAX_ZIP_BYTES:
        raise InputError(f"The zip is {_megabytes(len(data))}; the limit is "
                         f"{MAX_ZIP_BYTES // 2**20} MB. Zip only the checkpoint files "
                         f"({', '.join(REQUIRED_FILES)}).")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, NotImplementedError, EOFError, OSError, ValueError):
        raise InputError("The upload is not a readable .zip archive.") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ZIP_ENTRIES:
            raise InputError(f"The zip has {len(infos)} entries; a checkpoint needs at most "
                             f"{len(CHECKPOINT_FILES)} files (limit {MAX_ZIP_ENTRIES}).")
        files: dict[PurePosixPath, zipfile.ZipInfo] = {}
        for info in infos:
            path = _safe_member(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise InputError(f"Refused zip entry {info.filename!r}: symbolic links are "
                                 f"not allowed.")
            if not info.is_dir():
                files[path] = info
        configs = [p for p in files if p.name == "config.json"]
        if not configs:
            raise InputError(f"The zip holds no config.json. Zip one checkpoint folder "
                             f"({', '.join(REQUIRED_FILES)}).")
        if len(configs) > 1:
            raise InputError(f"The zip holds {len(configs)} config.json files "
                             f"({', '.join(sorted(str(p) for p in configs))}); it must hold "
                             f"exactly one checkpoint folder.")
        folder = configs[0].parent
        inside = {p.name: info for p, info in files.items() if p.parent == folder}
        pickles = sorted(n for n in inside if n.endswith(PICKLE_SUFFIXES))
        if pickles and "model.safetensors" not in inside:
            raise InputError(f"The zip holds {', '.join(pickles)} but no model.safetensors. "
                             f"Pickle weights are refused: unpickling can run arbitrary code.")
        missing = [n for n in REQUIRED_FILES if n not in inside]
        if missing:
            raise InputError(f"The checkpoint folder in the zip lacks {', '.join(missing)}; "
                             f"a checkpoint needs {', '.join(REQUIRED_FILES)}.")
        wanted = [inside[n] for n in CHECKPOINT_FILES if n in inside]
        for info in wanted:
            _check_readable(info)
        total = sum(info.file_size for info in wanted)
        if total > MAX_UNZIPPED_BYTES:
            raise InputError(f"The checkpoint files unpack to {_megabytes(total)}; the limit "
                             f"is {MAX_UNZIPPED_BYTES // 2**20} MB.")
        digest = hashlib.sha256(data).hexdigest()[:16]
        root = dest_root or Path(tempfile.gettempdir()) / "dasg-moe-uploads"
        dest = root / digest
        if dest.is_dir():
            return dest
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{digest}."))
        try:
            written = 0
            for info in wanted:
                name = PurePosixPath(info.filename).name  # flat: never a path from the zip
                with archive.open(info) as src, open(staging / name, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)  # count real bytes: headers may lie
                        if written > MAX_UNZIPPED_BYTES:
                            raise InputError(f"The checkpoint files unpack to more than "
                                             f"{MAX_UNZIPPED_BYTES // 2**20} MB.")
                        out.write(chunk)
            try:
                os.replace(staging, dest)
            except OSError:
                # Another session extracted the same upload meanwhile: use its folder.
                if not dest.is_dir():
                    raise
        except InputError:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError,
                ValueError) as err:  # ValueError: bad offsets, undecodable names
            detail = str(err) or type(err).__name__
            raise InputError(f"The zip is corrupt: {detail}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return dest


# ---------------------------------------------------------------------------------------
# A labelled dataset uploaded as CSV / TSV
# ---------------------------------------------------------------------------------------


def read_table_upload(data: bytes, file_name: str, task: str,
                      id2label: dict[int, str] | None = None) -> pd.DataFrame:
    """Parse an uploaded CSV/TSV into the task's GLUE columns (text column(s) + int label).

    Labels may be ids (0, 1, ...) or label names (`id2label` of the checkpoint, else the
    task's GLUE names). Raises
    InputError naming what is wrong: size, format, missing columns, empty cells, bad labels.
    """
    spec = get_task(task)
    suffix = Path(file_name).suffix.lower()
    if suffix not in (".csv", ".tsv", ".txt"):
        raise InputError(f"Upload a .csv or .tsv file (got {file_name!r}).")
    if len(data) > MAX_TABLE_BYTES:
        raise InputError(f"{file_name!r} is {_megabytes(len(data))}; the limit is "
                         f"{MAX_TABLE_BYTES // 2**20} MB. Upload a sample of at most "
                         f"{MAX_TABLE_ROWS:,} rows.")
    if not data.strip():
        raise InputError(f"{file_name!r} is empty. It needs a header row "
                         f"({', '.join([*spec.text_columns, 'label'])}) and at least one "
                         f"example.")
    sep, kind = ("," if suffix == ".csv" else "\t"), ("CSV" if suffix == ".csv" else "TSV")
    try:
        frame = pd.read_csv(io.BytesIO(data), sep=sep, dtype=str, keep_default_na=False,
                            nrows=MAX_TABLE_ROWS + 1, encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{file_name!r} is not UTF-8 text. Save it as UTF-8 (in a "
                         f"spreadsheet: \"CSV UTF-8\") and upload it again.") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        raise InputError(f"Could not parse {file_name!r} as {kind}: "
                         f"{str(err).strip()}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    needed = [*spec.text_columns, "label"]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        hint = ""
        if len(frame.columns) == 1 and ("\t" if sep == "," else ",") in frame.columns[0]:
            hint = (" The header looks tab-separated: name the file .tsv." if sep == ","
                    else " The header looks comma-separated: name the file .csv.")
        raise InputError(f"{file_name!r} lacks column(s) {', '.join(missing)}. Task "
                         f"{spec.name} needs {', '.join(needed)}; the file has "
                         f"{', '.join(frame.columns) or 'no columns'}.{hint}")
    if len(frame) > MAX_TABLE_ROWS:
        raise InputError(f"{file_name!r} has more than {MAX_TABLE_ROWS:,} rows; upload a "
                         f"sample of at most {MAX_TABLE_ROWS:,}.")
    if frame.empty:
        raise InputError(f"{file_name!r} has no rows.")
    frame = frame[needed].copy()
    for column in spec.text_columns:
        empty = frame[column].str.strip() == ""
        if empty.any():
            raise InputError(f"Column {column!r} is empty in row(s) "
                             f"{_rows(empty)}; every example needs text.")
    names = id2label or dict(enumerate(spec.label_names))
    frame["label"] = _parse_labels(frame["label"], spec.num_labels, names)
    return frame.reset_index(drop=True)


def _rows(flags: pd.Series) -> str:
    """First few 1-based data row numbers where `flags` is True."""
    rows = [str(i + 1) for i in flags[flags].index[:5]]
    return ", ".join(rows) + (" ..." if int(flags.sum()) > 5 else "")


def _parse_labels(labels: pd.Series, num_labels: int, id2label: dict[int, str]) -> pd.Series:
    by_name = {name.lower(): i for i, name in id2label.items()}
    parsed = []
    bad = []
    for row, value in enumerate(labels.str.strip()):
        if value.lower() in by_name:
            parsed.append(by_name[value.lower()])
            continue
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if number.is_integer() and 0 <= number < num_labels:
            parsed.append(int(number))
        else:
            parsed.append(-1)
            bad.append(row)
    if bad:
        names = ", ".join(f"{i} ({n})" for i, n in sorted(id2label.items()))
        raise InputError(f"Label(s) not understood in row(s) "
                         f"{', '.join(str(r + 1) for r in bad[:5])}"
                         f"{' ...' if len(bad) > 5 else ''}: "
                         f"{labels.iloc[bad[0]]!r}. Use one of {names}.")
    return pd.Series(parsed, index=labels.index, dtype="int64")


# ---------------------------------------------------------------------------------------
# Values from the URL or widgets
# ---------------------------------------------------------------------------------------


def parse_threshold(value: str | float, name: str) -> float:
    """A threshold in [0, 1] from a URL parameter or widget; InputError otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number between 0 and 1, got {value!r}.") from None
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise InputError(f"{name} must be between 0 and 1, got {value!r}.")
    return number


def check_thresholds(theta_s: float, theta_d: float) -> None:
    """The order the routers need: theta_s <= theta_d (DESIGN.md §2.3)."""
    if theta_s > theta_d:
        raise InputError(f"theta_s ({theta_s:.2f}) is above theta_d ({theta_d:.2f}). Scores "
                         f"below theta_s go shallow and above theta_d go deep, so theta_s "
                         f"must not exceed theta_d.")


def check_text(text: str, what: str = "The text") -> str:
    """Non-empty text, or InputError."""
    if not text or not text.strip():
        raise InputError(f"{what} is empty. Type or paste a sentence.")
    return text
