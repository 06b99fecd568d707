"""util/download.py: cached, SHA-256-checked, atomic downloads over a loopback HTTP server; the mirror."""
import os

import pytest
import torch

import clip_vit as cv
from util import download


@pytest.fixture
def payload():
    import hashlib
    data = os.urandom(3 << 20)
    return data, hashlib.sha256(data).hexdigest()


def test_download_caches_and_verifies(tmp_path, payload, capsys, serve):
    data, sha = payload
    server = serve({"weights.pt": data})
    try:
        path = download.download(f"{server.url}/x/weights.pt", tmp_path, sha256=sha)
        assert path.read_bytes() == data and "weights.pt" in capsys.readouterr().err  # tqdm bar
        assert download.download(f"{server.url}/x/weights.pt", tmp_path, sha256=sha) == path
        assert server.requests == 1  # second call hit the cache
        path.write_bytes(b"corrupt")  # a damaged cache is fetched again
        assert download.download(f"{server.url}/x/weights.pt", tmp_path, sha256=sha).read_bytes() == data
        assert server.requests == 2
    finally:
        server.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.pt"]


def test_download_wrong_hash_and_truncation_leave_nothing(tmp_path, payload, serve):
    data, sha = payload
    server = serve({"weights.pt": data, "cut.pt": data}, truncate={"cut.pt"})
    try:
        with pytest.raises(download.DownloadError, match="SHA-256"):
            download.download(f"{server.url}/weights.pt", tmp_path, sha256="0" * 64)
        with pytest.raises(download.DownloadError, match="could not download"):
            download.download(f"{server.url}/cut.pt", tmp_path, sha256=sha)
    finally:
        server.close()
    assert list(tmp_path.iterdir()) == []


def test_named_model_downloads_through_mirror_and_offline_error(tmp_path, monkeypatch, serve):
    model = cv.tiny_clip(seed=4)
    buffer = tmp_path / "src.pt"
    torch.save(model.state_dict(), buffer)
    data = buffer.read_bytes()
    server = serve({"ViT-B-32.pt": data})
    monkeypatch.setenv("CLIP_MIRROR", server.url)
    try:  # the published SHA-256 does not match our tiny file: refused, nothing cached
        with pytest.raises(download.DownloadError, match="expected 40d36571"):
            cv.load("ViT-B/32", download_root=tmp_path / "cache")
    finally:
        server.close()
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setenv("CLIP_MIRROR", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(download.DownloadError, match=r"could not download http://127.0.0.1:9/ViT-L-14.pt .*by hand"):
        cv.load("ViT-L/14", download_root=tmp_path / "cache")


def test_xdg_cache_home_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert download.cache_dir() == tmp_path / "clip"
    assert download.cache_dir(tmp_path / "mine") == tmp_path / "mine"
