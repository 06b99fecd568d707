"""util/tokenizer.py: the BPE tokenizer on a small vocabulary and against OpenAI's own."""
import gzip
from pathlib import Path

import pytest

import clip_vit as cv
from util import download
from util.tokenizer import Tokenizer


def small_vocab(path: Path) -> Path:
    merges = ["h e", "l l", "he ll", "hell o</w>", "w o", "wo r", "wor l", "worl d</w>"]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("#version: test\n" + "\n".join(merges) + "\n")
    return path


def test_tokenizer_small_vocabulary(tmp_path):
    tok = Tokenizer(small_vocab(tmp_path / "vocab.txt.gz"))
    assert len(tok.encoder) == 512 + 8 + 2
    hello, world = tok.encoder["hello</w>"], tok.encoder["world</w>"]
    assert tok.encode("  Hello   WORLD ") == [hello, world]
    assert tok.decode([hello, world]) == "hello world "
    assert tok.encode("hi!") == [tok.encoder["h"], tok.encoder["i</w>"], tok.encoder["!</w>"]]
    tokens = cv.tokenize(["hello world", "hello"], context_length=6, tokenizer=tok)
    assert tokens.tolist() == [[tok.sot, hello, world, tok.eot, 0, 0], [tok.sot, hello, tok.eot, 0, 0, 0]]
    assert tokens.argmax(-1).tolist() == [3, 2]  # encode_text reads the feature at the end-of-text token
    with pytest.raises(ValueError, match="more than the context length 3"):
        cv.tokenize("hello world", context_length=3, tokenizer=tok)
    assert cv.tokenize("hello world", context_length=3, truncate=True, tokenizer=tok).tolist() == [
        [tok.sot, hello, tok.eot]]


def test_tokenizer_equals_openai_on_its_vocabulary(openai_clip):
    ours = Tokenizer(openai_clip.bpe)
    ref = openai_clip.simple_tokenizer.SimpleTokenizer(str(openai_clip.bpe))
    assert len(ours.encoder) == 49408
    for text in ["a photo of a real face", "Hello,   WORLD!! naïve café &amp; 日本語 don't", "deepfake" * 9, "3.14"]:
        assert ours.encode(text) == ref.encode(text)
        assert ours.decode(ours.encode(text)) == ref.decode(ref.encode(text))
    assert download.sha256_of(openai_clip.bpe) == download.BPE_SHA256
