"""FID Inception weights fetched into the cache from a real local HTTP server, checked by SHA-256."""

import hashlib
import http.server
import pathlib
import threading

import pytest

from conftest import free_port
from score_jax.errors import InvalidInputError, MissingFileError
from score_jax.metrics import inception_weights as iw
from score_jax.metrics import weights_cache

WEIGHTS = (pathlib.Path(__file__).parent / "fixtures" / "fid_inception_reference"
           / "torch_small_state_dict_zip.pth").read_bytes()
SHA = hashlib.sha256(WEIGHTS).hexdigest()


@pytest.fixture
def server():
    """A real HTTP server on 127.0.0.1 serving {path: bytes}; counts the requests."""
    files, hits = {}, []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            hits.append(self.path)
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", files, hits
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCORE_JAX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_good_download_is_cached_atomically_and_reused(server, cache, capsys):
    url, files, hits = server
    files["/w.pth"] = WEIGHTS
    path = iw.weights_file("", url + "/w.pth", SHA)
    assert pathlib.Path(path) == cache / iw.PTH_NAME
    assert pathlib.Path(path).read_bytes() == WEIGHTS
    assert sorted(p.name for p in cache.iterdir()) == [iw.PTH_NAME]  # no temporary file left
    assert "downloading" in capsys.readouterr().err  # the progress bar
    assert iw.load_pth(path).keys()  # a weights file that reads
    assert iw.weights_file("", url + "/w.pth", SHA) == path and len(hits) == 1  # from the cache
    assert iw.weights_file("/my/own.pth", url + "/w.pth", SHA) == "/my/own.pth"


def test_corrupted_download_is_deleted_with_one_line(server, cache):
    url, files, _ = server
    files["/w.pth"] = WEIGHTS[:-100] + bytes(100)
    with pytest.raises(InvalidInputError) as err:
        iw.weights_file("", url + "/w.pth", SHA)
    assert f"not the expected {SHA}" in str(err.value) and "\n" not in str(err.value)
    assert list(cache.iterdir()) == []


def test_a_cached_copy_damaged_on_disk_is_fetched_again(server, cache):
    url, files, hits = server
    files["/w.pth"] = WEIGHTS
    path = pathlib.Path(iw.weights_file("", url + "/w.pth", SHA))
    path.write_bytes(b"damaged")
    assert pathlib.Path(iw.weights_file("", url + "/w.pth", SHA)).read_bytes() == WEIGHTS
    assert len(hits) == 2


def test_dead_server_or_missing_file_gives_the_offline_paragraph(server, cache):
    url, _, _ = server
    for dead in (f"http://127.0.0.1:{free_port()}/w.pth", url + "/missing.pth"):
        with pytest.raises(MissingFileError) as err:
            iw.weights_file("", dead, SHA)
        text = str(err.value)
        assert "eval.inception_weights" in text and iw.PTH_URL in text and dead in text
        assert "\n" not in text
        assert not cache.exists() or list(cache.iterdir()) == []


def test_the_default_hash_is_the_one_the_release_file_name_carries():
    # torch hub's convention: the file name carries the first 8 hex digits of its SHA-256.
    assert iw.PTH_NAME.rsplit("-", 1)[1].split(".")[0] == iw.PTH_SHA256[:8]
    assert weights_cache.cache_dir().name == "cache"  # $SCORE_JAX_CACHE is honoured
