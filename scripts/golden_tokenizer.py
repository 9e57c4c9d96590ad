#!/usr/bin/env python3
"""Write sdk/tests/data/tokenizer_golden.json: llama.cpp's token ids for tricky strings.

    python3 scripts/golden_tokenizer.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf [--out FILE]

Runs inside the peer venv (scripts/peer-venv.sh; re-executes itself there if needed).
Ids come from Llama(model, vocab_only=True).tokenize(text.encode("utf-8"),
add_bos=False, special=True) -- the same call llama.cpp uses for a chat prompt, where
control tokens written in the text are parsed. "ids_special_false" is the same with
special=False (control-token text is then tokenized as ordinary text, the safe way to
tokenize user input). "text_roundtrip" is detokenize(ids, special=True), for information.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_common  # noqa: E402

CASES = [
    # spaces and whitespace
    "Hello world",
    " Hello world",
    "Hello world ",
    "Hello   world",
    "   ",
    " ",
    "a\tb\t\tc",
    "\tindented with a tab",
    "line one\nline two",
    "para one\n\npara two",
    "windows\r\nline\r\nendings",
    "trailing newline\n",
    "\n\n\n",
    "mixed \t \n whitespace  \n\t end",
    # digits
    "1234567",
    "3.14159",
    "1,000,000",
    "Call 555-0123 before 10:30pm on 2024-12-31.",
    # contractions
    "don't, I'll, we've, she's, they're, can't, I'd, you'RE",
    # accents
    "café naïve Zürich résumé façade",
    "Ångström São Paulo Kraków",
    # CJK
    "中文",
    "日本語のテキスト",
    "한국어",
    "混合 English と日本語 and 中文 text",
    # emoji
    "I love pizza 🍕!",
    "👨‍👩‍👧‍👦 family (ZWJ)",
    "👍🏽 thumbs up, medium skin tone",
    "🇫🇷🇯🇵 flags",
    # other scripts
    "Привет, мир! Γειά σου κόσμε. مرحبا بالعالم. שלום עולם. नमस्ते दुनिया",
    # code
    "fn main() {\n    let x: Vec<u32> = vec![1, 2, 3];\n    println!(\"{:?}\", x);\n}\n",
    "def f(x):\n    if x > 0:\n        return x ** 2\n    return None  # comment\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    # URLs and paths
    "See https://example.com/path/to/page?query=1&lang=en#section for details.",
    "user@example.org /usr/local/bin/python3 C:\\Windows\\System32",
    # long word
    "Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    # chat control tokens
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
    "<|endoftext|>",
    "Hello<|endoftext|>world",
    "text glued<|im_end|>more text",
    " <|im_start|> spaced <|im_end|> ",
    "<|im_start|><|im_end|><|endoftext|>",
    "<|im_start",
    "<|not_a_token|>",
    # punctuation, symbols
    "Wait... what?! (yes) [no] {maybe} \"quoted\" 'single' — em dash – en dash … ellipsis",
    "x² + y² = z²; ∑ ∫ ≤ ≥ ≠ ∞ € £ ¥ ©",
    # empty
    "",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="path to the GGUF")
    ap.add_argument("--out", default=os.path.join(peer_common.REPO_ROOT, "sdk/tests/data/tokenizer_golden.json"))
    ap.add_argument("--sha256", default=peer_common.SMOLLM2_Q4_1_SHA256,
                    help="expected sha256 of the GGUF ('' to skip the check)")
    args = ap.parse_args()

    peer_common.ensure_peer_python()
    from llama_cpp import Llama

    sha = peer_common.check_model(args.model, args.sha256)
    llm = Llama(model_path=args.model, vocab_only=True, verbose=False)
    md = llm.metadata

    cases = []
    for text in CASES:
        b = text.encode("utf-8")
        ids = llm.tokenize(b, add_bos=False, special=True)
        ids_plain = llm.tokenize(b, add_bos=False, special=False)
        rt = llm.detokenize(ids, special=True).decode("utf-8", errors="replace")
        cases.append({
            "text": text,
            "ids": ids,
            "ids_special_false": ids_plain,
            "text_roundtrip": rt,
        })

    out = {
        "generator": "scripts/golden_tokenizer.py",
        "llama_cpp_python": peer_common.llama_cpp_version(),
        "model_file": os.path.basename(args.model),
        "model_sha256": sha,
        "tokenizer_ggml_model": md.get("tokenizer.ggml.model"),
        "tokenizer_ggml_pre": md.get("tokenizer.ggml.pre"),
        "call": "Llama(model, vocab_only=True).tokenize(text.encode('utf-8'), add_bos=False, special=True)",
        "call_ids_special_false": "same with special=False",
        "call_text_roundtrip": "detokenize(ids, special=True).decode('utf-8', errors='replace')",
        "cases": cases,
    }
    peer_common.write_json(args.out, out)
    print("wrote %d cases to %s" % (len(cases), peer_common.rel_to_repo(args.out)))


if __name__ == "__main__":
    main()
