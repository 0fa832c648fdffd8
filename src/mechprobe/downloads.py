"""Real datasets from their official archives, checked by sha256 and unpacked into data/ (the
library; `python -m mechprobe.data` is its command line).

This is the only step of the project that uses the network, and only when the user runs it. Each
file is streamed to a temporary name beside its destination while its sha256 is computed; a file
whose sha256 differs from the pinned one is deleted and the download fails with both values; an
archive is unpacked into a temporary folder renamed into place once whole. A dataset already in
place is left alone.
"""

import hashlib
import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import NamedTuple

from .utils import MechprobeError, get_logger

log = get_logger()
DATA_DIR = "data"


class Remote(NamedTuple):
    """One file to fetch: its URL, its sha256, and where it goes (relative to the dataset's folder; an
    archive is unpacked there instead)."""

    url: str
    sha256: str
    path: str
    unpack: bool = False


class Dataset(NamedTuple):
    folder: str  # under DATA_DIR
    files: tuple
    what: str
    licence: str


_EB = "https://raw.githubusercontent.com/allenai/entailment_bank/daac2fdb7ab52ec3ef8f2953f59288c1edd7c2f0/data/public_dataset/entailment_trees_emnlp2021_data_v2/dataset"
_STREET = "https://media.githubusercontent.com/media/amazon-science/street-reasoning/d986b2e0151e792bbd0cf8c6759ca8f7215e67f1/data/arc"

DATASETS = {
    "proofwriter": Dataset(
        "proofwriter",
        (
            Remote(
                "https://aristo-data-public.s3.amazonaws.com/proofwriter/proofwriter-dataset-V2020.12.3.zip",
                "bbc5694901e8306d0bd659aa1ad53ccfd02c201864f4b320ffa3777827d1fc26",
                "proofwriter-dataset-V2020.12.3",
                unpack=True,
            ),
        ),
        "ProofWriter V2020.12.3 (Tafjord et al., 2021): CWA/ and OWA/ depth-N/meta-{train,dev,test}.jsonl",
        "CC BY 4.0 (AI2)",
    ),
    "entailment_bank": Dataset(
        "entailment_bank",
        tuple(
            Remote(f"{_EB}/{task}/{split}.jsonl", sha, f"{task}/{split}.jsonl")
            for task, split, sha in (
                ("task_1", "dev", "a9779787851fcdf2cdd5841520deda73474ebc4915e562225744807b5d8d1f5d"),
                ("task_1", "test", "ae02515bf620f2cc865a4c6ed60adba595aba575e3ab471ecd27d65e6ff9c52f"),
                ("task_2", "dev", "3271adc67c65149780adbd3729f6b19404ff288e1849905fc16c1c22814a28f7"),
                ("task_2", "test", "8bba350ef207f92f9d153e3b1651d90535586a157e444fe037756a8c1cb84f0f"),
            )
        ),
        "EntailmentBank (Dalvi et al., 2021): ARC questions with entailment trees, task_1 and task_2",
        "CC BY 4.0 (AI2); repository Apache-2.0",
    ),
    "street": Dataset(
        "arc",
        tuple(
            Remote(f"{_STREET}/reasoning_annotated_{split}.jsonl", sha, f"reasoning_annotated_{split}.jsonl")
            for split, sha in (
                ("train", "1b6b8d4ee5dcee3ae88ffe0fe3eb73358be1781b14a486a002adaf8c6956a21d"),
                ("dev", "3fe857c128e94fb14a874ef552f458179171b323db17a91521018522d4cf71f2"),
                ("test", "3b0c3c0602d83fb68a409aa48e3354b3a9478cd4f4d6a59cce6b7a13add74d04"),
            )
        ),
        "STREET (Ribeiro et al., 2023): ARC with reasoning graphs",
        "Apache-2.0 (Amazon)",
    ),
}


def command(name):
    """The command that downloads a dataset (for error messages)."""
    return f"python -m mechprobe.data download {name}"


def check_present(path, data_dir=DATA_DIR):
    """A clear error when `path` is missing and lies where a dataset of DATASETS is downloaded to: it
    names the command that fetches it. Other paths pass (their readers say what is missing)."""
    p = Path(path)
    if p.exists():
        return
    for name, ds in DATASETS.items():
        root = Path(data_dir) / ds.folder
        if p == root or root in p.parents:
            raise MechprobeError(f"{path}: not found; download {name} with: {command(name)}")


def _fetch(url, dest, sha256, timeout=60):
    """Stream `url` into a temporary file beside `dest`, check its sha256, rename it onto `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + dest.name + ".", suffix=".part", dir=dest.parent)
    h, n = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as r:
            while chunk := r.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
                n += len(chunk)
        if h.hexdigest() != sha256:
            raise MechprobeError(f"{url}: sha256 {h.hexdigest()} differs from the expected {sha256}; nothing kept")
        os.replace(tmp, dest)
        log.info("%s: %d bytes, sha256 checked", dest, n)
    except OSError as e:
        raise MechprobeError(f"{url}: download failed ({type(e).__name__}: {e})") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _unpack(archive, folder, root):
    """Unpack a zip archive's `root` folder into folder/root, atomically (a temporary folder renamed)."""
    tmp = Path(tempfile.mkdtemp(prefix=".unpack.", dir=folder))
    try:
        with zipfile.ZipFile(archive) as z:
            for m in z.infolist():
                target = (tmp / m.filename).resolve()
                if not str(target).startswith(str(tmp.resolve()) + os.sep):
                    raise MechprobeError(f"{archive}: member {m.filename!r} would land outside {folder}")
            z.extractall(tmp)
        if not (tmp / root).is_dir():
            raise MechprobeError(f"{archive}: no folder {root}/ inside the archive")
        os.replace(tmp / root, folder / root)
    except zipfile.BadZipFile as e:
        raise MechprobeError(f"{archive}: not a readable zip archive ({e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download(name, data_dir=DATA_DIR, datasets=None):
    """Fetch dataset `name` (DATASETS) into data_dir/<its folder>; returns that folder. Files already in
    place are kept (not fetched again)."""
    datasets = DATASETS if datasets is None else datasets
    if name not in datasets:
        raise MechprobeError(f"dataset {name!r}: expected one of {', '.join(datasets)}")
    ds = datasets[name]
    folder = Path(data_dir) / ds.folder
    for f in ds.files:
        target = folder / f.path
        if target.exists():
            log.info("%s: already there", target)
            continue
        if f.unpack:
            folder.mkdir(parents=True, exist_ok=True)
            archive = folder / (Path(f.url).name or "archive.zip")
            _fetch(f.url, archive, f.sha256)
            try:
                _unpack(archive, folder, f.path)
            finally:
                archive.unlink(missing_ok=True)
            log.info("%s: unpacked", target)
        else:
            _fetch(f.url, target, f.sha256)
    return folder
