"""util/download.py over a loopback HTTP server: cached, SHA-256-checked, atomic; the mirror; offline."""
import hashlib
import os

import pytest
import torch

import clip_vit as cv
from util import download

DATA = os.urandom(3 << 20)
SHA = hashlib.sha256(DATA).hexdigest()


def test_download_caches_and_verifies(tmp_path, serve):
    server = serve({"weights.pt": DATA})
    path = download.download(f"{server.url}/x/weights.pt", tmp_path, sha256=SHA)
    assert path.read_bytes() == DATA
    assert download.download(f"{server.url}/x/weights.pt", tmp_path, sha256=SHA) == path
    assert server.requests == 1  # the second call hit the cache
    path.write_bytes(b"corrupt")  # a damaged cache is fetched again
    assert download.download(f"{server.url}/x/weights.pt", tmp_path, sha256=SHA).read_bytes() == DATA
    assert server.requests == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["weights.pt"]


@pytest.mark.parametrize("name, sha", [("weights.pt", "0" * 64), ("cut.pt", None), ("missing.pt", SHA)])
def test_a_failed_download_leaves_nothing(tmp_path, serve, name, sha):
    server = serve({"weights.pt": DATA, "cut.pt": DATA}, truncate={"cut.pt"})
    with pytest.raises(download.DownloadError) as e:  # an OSError: every script's main says it in one line
        download.download(f"{server.url}/{name}", tmp_path, sha256=sha)
    assert isinstance(e.value, OSError) and name in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_named_model_through_the_mirror_and_offline(tmp_path, monkeypatch, serve):
    torch.save(cv.tiny_clip(seed=4).state_dict(), tmp_path / "src.pt")
    server = serve({"ViT-B-32.pt": (tmp_path / "src.pt").read_bytes()})
    monkeypatch.setenv("CLIP_MIRROR", server.url)
    with pytest.raises(download.DownloadError):  # the published SHA-256 is not our tiny file's
        cv.load("ViT-B/32", download_root=tmp_path / "cache")
    assert server.requests == 1 and list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setenv("CLIP_MIRROR", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(download.DownloadError, match="ViT-L-14.pt"):
        cv.build_detector("ViT-L/14", download_root=tmp_path / "cache")
