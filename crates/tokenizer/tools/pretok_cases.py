#!/usr/bin/env python3
"""Writes random pre-tokenization cases computed with the `regex` module from the original
(tokenizer.json) patterns, one JSON object per line: {"pre": NAME, "text": ..., "pieces": [...]}.

Stages are applied in order; each splits the pieces of the previous one into matches and the
gaps between them. Check with:
    LATENT_PRETOK_CASES=cases.jsonl cargo test -p latent-tokenizer --release --test pretok_cases

Usage: pip install regex && python3 tools/pretok_cases.py [N] > cases.jsonl
"""
import json
import random
import sys

import regex

GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN2 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
DS3 = [
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
]

PRES = {
    "gpt-2": [GPT2],
    "smollm": [r"\p{N}", GPT2],
    "llama-bpe": [LLAMA3],
    "qwen2": [QWEN2],
    "deepseek-v3": DS3,
}

ALPHABET = (
    list("aAbBzZsStTmMdDlLrReEvV") + list("0123456789") + list(" " * 8) + list("\n\r\t")
    + list("'.,!?-_()[]{}<>:;\"/\\@#%&*+=$^`|")
    + ["é", "Ü", "ß", "ñ", "д", "Ж", "λ", "中", "文", "日", "ひ", "カ", "가", "한", "٣", "½", "²",
       "\u0301", "\u0308", "—", "“", "”", "’", "€", "©", "😀", "🦀", "\u00a0", "\u3000", "\u2009"]
)


def split(patterns, text):
    pieces = [text]
    for p in patterns:
        rx = regex.compile(p)
        out = []
        for piece in pieces:
            pos = 0
            for m in rx.finditer(piece):
                if m.start() > pos:
                    out.append(piece[pos:m.start()])
                if m.end() > m.start():
                    out.append(m.group())
                pos = m.end()
            if pos < len(piece):
                out.append(piece[pos:])
        pieces = out
    return pieces


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    rng = random.Random(1234)
    for pre, patterns in PRES.items():
        for _ in range(n):
            k = rng.randint(1, 24)
            text = "".join(rng.choice(ALPHABET) for _ in range(k))
            if pre == "deepseek-v3":
                # The reference rewrites \p{S} for ASCII without '~'.
                text = text.replace("~", "")
            print(json.dumps({"pre": pre, "text": text, "pieces": split(patterns, text)}, ensure_ascii=False))


if __name__ == "__main__":
    main()
