"""``python -m bench.tokenizer_compare``: cl100k_base counters compared, for docs/design.md.

Counts the lines of samples/texts.txt and 3,210 random mixed-script, emoji and digit texts
with each candidate that is installed: tiktoken (built from worker/tokens' shipped file, as
the worker does), bpe-openai (its own bundled copy), HF tokenizers (a tokenizer.json made
from the same ranks, as transformers' TikTokenConverter does) and the estimate. Prints the
load time, the mismatches against tiktoken, and µs per text (best of 7 passes, one text per
call, as the budget counts). Only tiktoken is a project dependency; install the others in a
scratch venv to compare (docs/design.md gives the commands).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from importlib import import_module
from pathlib import Path

from devstack import REPO_ROOT
from worker.tokens import CL100K_BASE, estimate_tokens, token_counter

SAMPLES = REPO_ROOT / "samples" / "texts.txt"
_ALPHABET = (
    "abcdefghijklmnopqrstuvwxyz ABCXYZ 0123456789 \n\t  .,;:!?'\"()[]{}<>/\\|@#$%^&*-_=+~`"
    "éüñßøçЖжЯ中文日本語한국어😀🚀👍🏽∑∂√ \u00a0\u200b"
)


def _timed(build: Callable[[], Callable[[str], int]]) -> tuple[Callable[[str], int], float]:
    started = time.perf_counter()
    counter = build()
    return counter, time.perf_counter() - started


def _tiktoken() -> Callable[[str], int]:
    return token_counter(CL100K_BASE)


def _bpe_openai() -> Callable[[str], int]:
    bindings = import_module("bpe_openai._bindings")
    tokenizer = bindings.tokenizer_for_encoding("cl100k_base")
    count: Callable[[str], int] = tokenizer.count
    return count


def _hf_tokenizers() -> Callable[[str], int]:
    tk = import_module("tokenizers")
    tiktoken_load = import_module("tiktoken.load")
    ranks = tiktoken_load.load_tiktoken_bpe(str(REPO_ROOT / "worker/tokens/cl100k_base.tiktoken"))
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = dict(zip(printable, map(chr, printable), strict=True))
    chars.update({b: chr(256 + i) for i, b in enumerate(b for b in range(256) if b not in chars)})

    def name(token: bytes) -> str:
        return "".join(chars[b] for b in token)

    merges = []
    for token, rank in ranks.items():
        pairs = [(token[:i], token[i:]) for i in range(1, len(token))]
        found = sorted(
            ((a, b) for a, b in pairs if a in ranks and b in ranks),
            key=lambda pair: (ranks[pair[0]], ranks[pair[1]]),
        )
        merges += [(rank, name(a), name(b)) for a, b in found]
    merges.sort(key=lambda merge: merge[0])
    vocab = {name(token): rank for token, rank in ranks.items()}
    model = tk.models.BPE(vocab, [(a, b) for _, a, b in merges], ignore_merges=True)
    tokenizer = tk.Tokenizer(model)
    pattern = import_module("worker.tokens")._CL100K_PATTERN
    tokenizer.pre_tokenizer = tk.pre_tokenizers.Sequence(
        [
            tk.pre_tokenizers.Split(tk.Regex(pattern), behavior="isolated"),
            tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def _random_texts() -> list[str]:
    rng = random.Random(23)
    texts = ["hello world", " ", "1234567890" * 50, "😀" * 100, "a" * 5000, "I'm you're"]
    texts += ["".join(rng.choices(_ALPHABET, k=rng.randint(1, 400))) for _ in range(3000)]
    texts += [
        " ".join(str(rng.randint(0, 10**9)) for _ in range(rng.randint(1, 300))) for _ in range(204)
    ]
    return texts


def main() -> None:
    candidates = {"tiktoken": _tiktoken, "bpe-openai": _bpe_openai, "tokenizers": _hf_tokenizers}
    counters: dict[str, Callable[[str], int]] = {}
    for label, build in candidates.items():
        try:
            counters[label], load_s = _timed(build)
        except ImportError:
            print(f"{label}: not installed, skipped")
            continue
        print(f"{label}: ready in {load_s * 1000:.0f} ms")
    counters["estimate"] = estimate_tokens
    samples = Path(SAMPLES).read_text(encoding="utf-8").splitlines()
    reference = counters["tiktoken"]
    for title, texts in (("samples/texts.txt", samples), ("random", _random_texts())):
        expected = [reference(t) for t in texts]
        print(f"\n{title}: {len(texts)} texts, {sum(expected):,} tiktoken tokens")
        for label, count in counters.items():
            got = [count(t) for t in texts]
            wrong = sum(a != b for a, b in zip(got, expected, strict=True))
            print(f"  {label:12s} {wrong:5d} differ, {sum(got) / sum(expected):.3f}× the tokens")
    print("\nµs per text, samples/texts.txt, one text per call (best of 7 passes)")
    for label, count in counters.items():
        best = min(_pass_s(count, samples) for _ in range(7))
        print(f"  {label:12s} {best / len(samples) * 1e6:7.2f}")


def _pass_s(count: Callable[[str], int], texts: list[str]) -> float:
    started = time.perf_counter()
    for text in texts:
        count(text)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
