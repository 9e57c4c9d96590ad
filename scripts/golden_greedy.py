#!/usr/bin/env python3
"""Write sdk/tests/data/greedy_golden.json: llama.cpp's greedy continuations of chat prompts.

    python3 scripts/golden_greedy.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf [--out FILE]

Runs inside the peer venv (scripts/peer-venv.sh; re-executes itself there if needed).

For each conversation: the prompt text is rendered from the GGUF's own
`tokenizer.chat_template` with jinja2 (as transformers renders it: sandboxed,
trim_blocks, lstrip_blocks, add_generation_prompt=True), tokenized with
tokenize(add_bos=False, special=True) (llama.cpp's own add-BOS flag for the model is
recorded as "add_bos"; when true the BOS id is prepended), then decoded greedily with the
low-level loop: eval(prompt_ids), then argmax of the last logits row
(llama_get_logits_ith(ctx, -1)), eval([tok]), ... until
an end-of-generation token (llama_vocab_is_eog) or n_predict tokens. n_threads=2,
n_ctx=512. The stopping EOG token, if any, is the last entry of output_ids (it is not
evaluated). top5[i] holds the five highest (id, logit) pairs of the logits that produced
output_ids[i], so a test can tell a near-tie divergence from a bug.
"""

import argparse
import hashlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_common  # noqa: E402

N_PREDICT = 48
N_THREADS = 2
N_CTX = 512

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [
        {"role": "system", "content": "You are a concise assistant. Answer in as few words as possible."},
        {"role": "user", "content": "List three prime numbers."},
    ],
    [{"role": "user", "content": "Explain what a CPU does in one sentence."}],
    [
        {"role": "user", "content": "Hi! My name is Ada and I live in Lisbon."},
        {"role": "assistant", "content": "Nice to meet you, Ada! How can I help you today?"},
        {"role": "user", "content": "Which city do I live in?"},
    ],
]


def render(template, messages, bos_token, eos_token):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="path to the GGUF")
    ap.add_argument("--out", default=os.path.join(peer_common.REPO_ROOT, "sdk/tests/data/greedy_golden.json"))
    ap.add_argument("--sha256", default=peer_common.SMOLLM2_Q4_1_SHA256,
                    help="expected sha256 of the GGUF ('' to skip the check)")
    args = ap.parse_args()

    peer_common.ensure_peer_python()
    import importlib.metadata as md_

    import llama_cpp
    import numpy as np
    from llama_cpp import Llama

    sha = peer_common.check_model(args.model, args.sha256)
    # Token by token (n_ubatch=1): with micro-batches of 32 tokens or more, llama.cpp 0.3.16 built
    # natively on this Xeon (AMX_INT8, llamafile sgemm, repack all enabled) returns logits far
    # from a dense f64 recomputation (e.g. top logit 31.2 instead of 25.0 after a 37-token chat
    # prompt; n_ubatch <= 16 and single-token evals agree with it). The golden file must not
    # depend on that path, so every token is evaluated on its own, as during decoding.
    llm = Llama(model_path=args.model, n_threads=N_THREADS, n_threads_batch=N_THREADS, n_ctx=N_CTX,
                n_batch=1, n_ubatch=1, seed=0, verbose=False)
    md = llm.metadata
    template = md["tokenizer.chat_template"]
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n_vocab = llm.n_vocab()
    eog_ids = [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))

    def piece(t):
        return llm.detokenize([t], special=True).decode("utf-8", errors="replace")

    bos_id, eos_id = llm.token_bos(), llm.token_eos()
    bos_tok, eos_tok = piece(bos_id), piece(eos_id)

    cases = []
    for messages in CONVERSATIONS:
        prompt = render(template, messages, bos_tok, eos_tok)
        prompt_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        if add_bos:
            prompt_ids = [bos_id] + prompt_ids
        llm.reset()
        llm.eval(prompt_ids)
        out_ids, top5, stop = [], [], "length"
        for _ in range(N_PREDICT):
            # llama-cpp-python 0.3.16 no longer copies logits into llm.scores unless
            # logits_all=True; read the last row straight from the context.
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)).copy()
            order = np.argsort(-logits, kind="stable")[:5]
            top5.append([[int(i), float(logits[i])] for i in order])
            tok = int(order[0])
            out_ids.append(tok)
            if tok in eog_ids:
                stop = "eog"
                break
            llm.eval([tok])
        text_ids = out_ids[:-1] if stop == "eog" else out_ids
        cases.append({
            "messages": messages,
            "prompt": prompt,
            "prompt_ids": prompt_ids,
            "output_ids": out_ids,
            "output_text": llm.detokenize(text_ids).decode("utf-8", errors="replace"),
            "stop": stop,
            "top5": top5,
        })
        print("%-60r -> %r" % (messages[-1]["content"][:60], cases[-1]["output_text"][:70]))

    out = {
        "generator": "scripts/golden_greedy.py",
        "llama_cpp_python": peer_common.llama_cpp_version(),
        "jinja2": md_.version("jinja2"),
        "numpy": md_.version("numpy"),
        "model_file": os.path.basename(args.model),
        "model_sha256": sha,
        "n_predict": N_PREDICT,
        "n_threads": N_THREADS,
        "n_ctx": N_CTX,
        "bos_id": bos_id,
        "eos_id": eos_id,
        "eos_ids": eog_ids,
        "eos_ids_note": "every id llama_vocab_is_eog() accepts; pieces: "
                        + ", ".join("%d=%s" % (t, piece(t)) for t in eog_ids),
        "add_bos": add_bos,
        "add_bos_metadata": md.get("tokenizer.ggml.add_bos_token"),
        "template_sha256": hashlib.sha256(template.encode("utf-8")).hexdigest(),
        "template_render": "jinja2 ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True), "
                           "add_generation_prompt=True, bos_token/eos_token = their pieces",
        "tokenize_call": "tokenize(prompt.encode('utf-8'), add_bos=False, special=True), BOS prepended iff add_bos",
        "decode_loop": "eval(prompt_ids); repeat: tok = argmax(last logits) (lowest id on ties); "
                       "stop if tok is EOG (kept as last output id, not evaluated); eval([tok])",
        "cases": cases,
    }
    peer_common.write_json(args.out, out)
    print("wrote %d cases to %s" % (len(cases), peer_common.rel_to_repo(args.out)))


if __name__ == "__main__":
    main()
