"""The download step (downloads.py) against a tiny archive served on 127.0.0.1 by the test itself."""

import hashlib
import http.server
import threading
import zipfile
from functools import partial

import pytest

from mechprobe import downloads as data
from mechprobe.utils import MechprobeError


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields (base URL, the paths asked for)."""
    www = tmp_path / "www"
    www.mkdir()
    asked = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            asked.append(self.path)
            return super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(www)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www, asked
    httpd.shutdown()
    httpd.server_close()


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_checks_sha256_unpacks_and_keeps_what_is_there(server, tmp_path):
    base, www, asked = server
    with zipfile.ZipFile(www / "release.zip", "w") as z:
        z.writestr("release/CWA/depth-1/meta-test.jsonl", '{"id": "t"}\n')
        z.writestr("release/README", "hello")
    (www / "dev.jsonl").write_text('{"id": "q"}\n')
    sets = {
        "toy": data.Dataset(
            "toy",
            (
                data.Remote(f"{base}/release.zip", sha(www / "release.zip"), "release", unpack=True),
                data.Remote(f"{base}/dev.jsonl", sha(www / "dev.jsonl"), "task_1/dev.jsonl"),
            ),
            "a toy",
            "none",
        )
    }
    folder = data.download("toy", tmp_path / "data", sets)
    assert (folder / "release/CWA/depth-1/meta-test.jsonl").read_text() == '{"id": "t"}\n'
    assert (folder / "task_1/dev.jsonl").read_text() == '{"id": "q"}\n'
    assert sorted(p.name for p in folder.iterdir()) == ["release", "task_1"]  # no archive or part file left
    n = len(asked)
    data.download("toy", tmp_path / "data", sets)
    assert len(asked) == n  # already there: nothing fetched again


def test_a_wrong_sha256_keeps_nothing(server, tmp_path):
    base, www, _ = server
    (www / "dev.jsonl").write_text("tampered\n")
    sets = {"toy": data.Dataset("toy", (data.Remote(f"{base}/dev.jsonl", "0" * 64, "dev.jsonl"),), "a toy", "none")}
    with pytest.raises(MechprobeError, match=r"dev.jsonl: sha256 [0-9a-f]{64} differs from the expected 0{64}"):
        data.download("toy", tmp_path / "data", sets)
    assert not any((tmp_path / "data" / "toy").iterdir())
    sets["toy"] = data.Dataset("toy", (data.Remote(f"{base}/missing.jsonl", "0" * 64, "m.jsonl"),), "a toy", "none")
    with pytest.raises(MechprobeError, match=r"missing.jsonl: download failed \(HTTPError"):
        data.download("toy", tmp_path / "data", sets)


def test_missing_dataset_error_names_the_command(tmp_path):
    with pytest.raises(MechprobeError, match=r"not found; download entailment_bank with: python -m mechprobe.data"):
        data.check_present("data/entailment_bank/task_2/dev.jsonl", "data")
    data.check_present(tmp_path / "elsewhere.jsonl", "data")  # not a dataset's place: the reader says what is missing
    assert set(data.DATASETS) == {"proofwriter", "entailment_bank", "street"}
    assert all(len(f.sha256) == 64 for ds in data.DATASETS.values() for f in ds.files)
