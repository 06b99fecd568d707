"""Downloads: fetched once into a cache, checked against their SHA-256, never left half-written;
and the addresses of the files this project downloads."""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

# The path segment of each URL is the file's SHA-256: it doubles as the checksum.
OPENAI_URL = "https://openaipublic.azureedge.net/clip/models"
MODELS = {
    "ViT-B/32": "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-B/16": "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px": "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}
BPE_URL = "https://github.com/openai/CLIP/raw/main/clip/bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
AUTHORS_URL = "https://huggingface.co/yermandy/deepfake-detection/resolve/main/model.ckpt"
MIRROR_ENV = "CLIP_MIRROR"  # a URL serving the files by name: <mirror>/ViT-L-14.pt, <mirror>/model.ckpt


class DownloadError(RuntimeError):
    pass


def cache_dir(download_root: str | os.PathLike | None = None) -> Path:
    if download_root is not None:
        return Path(download_root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clip"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, root: str | os.PathLike | None = None, sha256: str | None = None) -> Path:
    """Fetch `url` into the cache once; a cached file with a wrong SHA-256 is fetched again.

    Bytes go to a temporary file that is renamed only after the hash matched, so an interrupted
    or corrupt download never leaves a file that looks finished. $CLIP_MIRROR replaces the host:
    the file is then fetched from <mirror>/<file name>."""
    root = cache_dir(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / url.rsplit("/", 1)[-1]
    if target.is_file():
        if sha256 is None or sha256_of(target) == sha256:
            return target
        print(f"{target} has the wrong SHA-256: downloading it again", file=sys.stderr)
    if mirror := os.environ.get(MIRROR_ENV):
        url = f"{mirror.rstrip('/')}/{target.name}"
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{target.name}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=target.name) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if total is not None and bar.n != total:
            raise OSError(f"connection closed after {bar.n} of {total} bytes")
        if sha256 is not None and digest.hexdigest() != sha256:
            raise DownloadError(f"{url} has SHA-256 {digest.hexdigest()}, expected {sha256}: nothing was saved")
        os.replace(tmp, target)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"could not download {url} ({reason}); download it by hand and pass the file's "
                            f"path instead, or put it at {target}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
