"""OpenAI's CLIP tokenizer: byte-level BPE over OpenAI's vocabulary (text -> token ids)."""
import gzip
import html
import os
from functools import lru_cache

import ftfy
import regex

from util.download import BPE_SHA256, BPE_URL, download


@lru_cache()
def _byte_alphabet() -> dict[int, str]:
    """Maps each of the 256 bytes to a printable unicode character, so BPE never sees whitespace
    or control bytes: printable Latin-1 bytes stand for themselves, the rest for chr(256 + n)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    extra = (b for b in range(256) if b not in keep)
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


def _clean(text: str) -> str:
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class Tokenizer:
    """OpenAI's CLIP tokenizer: cleaned, lower-cased text, split by a regex, each piece BPE-merged.
    Vocabulary: 256 byte symbols, the same with an end-of-word mark, the merges, two specials."""

    PATTERN = regex.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"
                            r"|[^\s\p{L}\p{N}]+", regex.IGNORECASE)
    N_MERGES = 49152 - 256 - 2  # OpenAI uses the first 48,894 merges of the file: vocabulary of 49,408

    def __init__(self, bpe_path: str | os.PathLike | None = None):
        path = bpe_path or download(BPE_URL, sha256=BPE_SHA256)
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")[1:self.N_MERGES + 1]
        merges = [tuple(line.split()) for line in lines if line.strip()]
        symbols = list(_byte_alphabet().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.ranks = {merge: i for i, merge in enumerate(merges)}
        self.sot, self.eot = self.encoder["<|startoftext|>"], self.encoder["<|endoftext|>"]
        self._cache = {"<|startoftext|>": ["<|startoftext|>"], "<|endoftext|>": ["<|endoftext|>"]}

    def bpe(self, piece: str) -> list[str]:
        """Repeatedly merges the adjacent pair with the lowest merge rank."""
        if piece in self._cache:
            return self._cache[piece]
        word = [*piece[:-1], piece[-1] + "</w>"]
        while len(word) > 1:
            best = min(zip(word, word[1:]), key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):  # every occurrence of the pair, left to right
                pair = tuple(word[i:i + 2])
                merged.append("".join(pair) if pair == best else word[i])
                i += 2 if pair == best else 1
            word = merged
        self._cache[piece] = word
        return word

    def encode(self, text: str) -> list[int]:
        alphabet = _byte_alphabet()
        ids = []
        for piece in self.PATTERN.findall(_clean(text)):
            piece = "".join(alphabet[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self.bpe(piece))
        return ids


def load_tokenizer(bpe: str | None) -> Tokenizer:
    """The tokenizer from evaluate.py's --bpe file (None: downloaded once); one ValueError naming it."""
    try:
        return Tokenizer(bpe)
    except (ValueError, OSError, EOFError) as e:  # missing, not gzip, cut short, offline
        what = f"--bpe {bpe}" if bpe else "CLIP's BPE vocabulary"
        raise ValueError(f"cannot read {what} (expected CLIP's bpe_simple_vocab_16e6.txt.gz): {e}") from None
