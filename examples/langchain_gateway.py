"""LangChain's ``OpenAIEmbeddings``, at its defaults, against the embedding gateway.

    embedding-gateway                                    # GATEWAY_API_KEYS=… ; workers running
    python -m examples.langchain_gateway --base-url http://127.0.0.1:8080/v1 --api-key KEY

At its defaults (``check_embedding_ctx_length=True``) LangChain tokenizes every text with
tiktoken and sends token arrays, up to 1,000 a request, each text cut every 8,191 tokens;
the gateway decodes them with the model's encoding (docs/gateway.md, "Token arrays"). Nothing
here is gateway-specific but ``base_url``.

Offline: ``tiktoken.encoding_for_model`` downloads the cl100k_base file unless it is in
tiktoken's cache. ``seed_tiktoken_cache`` puts the copy this project ships
(``worker/tokens/cl100k_base.tiktoken``, checked against the same SHA-256 tiktoken pins) where
tiktoken looks first, so LangChain runs with no network. With a network it is not needed.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from langchain_openai import OpenAIEmbeddings
from pydantic import SecretStr

__all__ = ["CL100K_BASE_URL", "DOCUMENTS", "embeddings_for", "main", "seed_tiktoken_cache"]

# Where tiktoken_ext/openai_public.py loads cl100k_base from; tiktoken caches a download
# under the SHA-1 of this address, in $TIKTOKEN_CACHE_DIR.
CL100K_BASE_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"

DOCUMENTS = (
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar.",
    "The French Revolution began in 1789 with the storming of the Bastille.",
    "A hash table finds a key in constant expected time.",
)


def seed_tiktoken_cache(cache_dir: Path) -> Path:
    """Put the project's cl100k_base file in ``cache_dir`` as tiktoken's cached download,
    and point ``TIKTOKEN_CACHE_DIR`` there (for this process). Returns the file's path."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / hashlib.sha1(CL100K_BASE_URL.encode(), usedforsecurity=False).hexdigest()
    if not target.exists():
        data = resources.files("worker.tokens").joinpath("cl100k_base.tiktoken").read_bytes()
        target.write_bytes(data)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
    return target


def embeddings_for(base_url: str, api_key: str, model: str, **options: Any) -> OpenAIEmbeddings:
    """``OpenAIEmbeddings`` at its defaults but for the gateway's address and key (and any
    further ``options`` of its own, such as ``http_client``)."""
    return OpenAIEmbeddings(model=model, base_url=base_url, api_key=SecretStr(api_key), **options)


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.hypot(*a) * math.hypot(*b))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    parser.add_argument("--api-key", default=os.environ.get("GATEWAY_API_KEY", ""))
    parser.add_argument("--model", default="text-embedding-3-small")
    parser.add_argument("--query", default="How do plants make food?")
    parser.add_argument(
        "--tiktoken-cache", type=Path, help="seed this tiktoken cache first (offline runs)"
    )
    args = parser.parse_args(argv)
    if args.tiktoken_cache is not None:
        seed_tiktoken_cache(args.tiktoken_cache)
    with httpx.Client() as http:  # closed on the way out: LangChain never closes its own
        embeddings = embeddings_for(args.base_url, args.api_key, args.model, http_client=http)
        vectors = embeddings.embed_documents(list(DOCUMENTS))
        query = embeddings.embed_query(args.query)
    ranked = sorted(zip(DOCUMENTS, vectors, strict=True), key=lambda dv: -_cosine(query, dv[1]))
    print(f"{len(vectors)} documents, {len(query)} dimensions; nearest to {args.query!r}:")
    for document, vector in ranked:
        print(f"  {_cosine(query, vector):+.3f}  {document}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
