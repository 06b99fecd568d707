"""util/tokenizer.py against OpenAI's own tokenizer, and clip_vit.tokenize's layout."""
import pytest

import clip_vit as cv
from util import download
from util.tokenizer import Tokenizer


def test_tokenizer_equals_openai_on_its_vocabulary(openai_clip):
    tok = Tokenizer(openai_clip.bpe)
    ref = openai_clip.simple_tokenizer.SimpleTokenizer(str(openai_clip.bpe))
    assert tok.encoder == ref.encoder
    texts = ["a photo of a real face", "deepfake" * 9, "Hello,   WORLD!! naïve café &amp; 日本語 don't"]
    for text in texts:
        assert tok.encode(text) == ref.encode(text)
    assert download.sha256_of(openai_clip.bpe) == download.BPE_SHA256  # the file the tokenizer downloads
    ids = tok.encode("hello world")
    tokens = cv.tokenize(["hello world", "hello"], context_length=6, tokenizer=tok)
    assert tokens[0].tolist() == [tok.sot, *ids, tok.eot, 0, 0]
    assert tokens.argmax(-1).tolist() == [3, 2]  # encode_text reads the feature at the end-of-text token
    with pytest.raises(ValueError):
        cv.tokenize("hello world", context_length=3, tokenizer=tok)
