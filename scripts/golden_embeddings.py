#!/usr/bin/env python3
"""Writes memory/tests/data/minilm_golden.json: sentence-transformers' embeddings of a fixed
list of sentences for the all-MiniLM-L6-v2 folder in Tailor's model cache.

The Rust golden test (memory/tests/memory/embedder.rs) embeds the same sentences with
candle and requires cosine >= 0.999 for each. CI does not run this script (torch is too big);
it only reads the file. Run it offline against the cached folder:

    HF_HUB_OFFLINE=1 /work/venv-torch/bin/python scripts/golden_embeddings.py
"""
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import sentence_transformers  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

SENTENCES = [
    "My sister Anna lives in Lisbon with her two cats.",
    "I am allergic to peanuts.",
    "The quarterly report is due next Thursday at noon.",
    "Je préfère le café noir, sans sucre.",
    "Mein Lieblingsbuch ist „Der Zauberberg“ von Thomas Mann.",
    "私は毎朝六時に起きてジョギングをします。",
    "Я учу испанский язык уже три года.",
    "Emoji test: I love hiking 🏔️ and coffee ☕!",
    "",
    "a",
    "   Leading and trailing spaces, UPPER and lower CASE, punctuation?!;:   ",
    # Longer than 256 word pieces: sentence-transformers truncates at max_seq_length.
    " ".join(
        f"Sentence number {i} talks about gardening, tomatoes, basil and the weather in spring."
        for i in range(40)
    ),
    "Short one after a long one, to check batch padding does not change results.",
]


def main() -> int:
    home = Path(os.environ.get("TAILOR_HOME", Path.home() / ".cache" / "tailor"))
    folder = home / "models" / "all-minilm-l6-v2"
    if not (folder / "model.safetensors").exists():
        print(f"model folder missing: {folder} (run `tailor models fetch`)", file=sys.stderr)
        return 1
    model = SentenceTransformer(str(folder), device="cpu")
    emb = model.encode(SENTENCES, batch_size=len(SENTENCES), normalize_embeddings=True,
                       convert_to_numpy=True)
    tok = model.tokenizer
    n_tokens = [len(tok(s, truncation=True, max_length=model.max_seq_length)["input_ids"])
                for s in SENTENCES]
    out = {
        "model": "all-MiniLM-L6-v2 (Tailor cache folder models/all-minilm-l6-v2)",
        "max_seq_length": model.max_seq_length,
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
        "script": "scripts/golden_embeddings.py",
        "items": [
            {"text": s, "tokens": n, "embedding": [round(float(x), 7) for x in e]}
            for s, n, e in zip(SENTENCES, n_tokens, emb)
        ],
    }
    dest = Path(__file__).resolve().parent.parent / "memory" / "tests" / "data" / "minilm_golden.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {dest} ({len(SENTENCES)} sentences, tokens {n_tokens})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
