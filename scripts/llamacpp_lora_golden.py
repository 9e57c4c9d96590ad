#!/usr/bin/env python3
"""Write sdk/tests/data/peft/llamacpp.safetensors: llama.cpp's logits with our GGUF LoRA export.

    python3 scripts/llamacpp_lora_golden.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf

Runs inside the peer venv (scripts/peer-venv.sh; re-executes itself there if needed).
Exports sdk/tests/data/peft/peft_made (the adapter PEFT made) with
`tailor adapter export ... --out peft_made.gguf` (llama.cpp's LoRA layout), loads the base
with it in llama.cpp (`lora_path`, scale 1; the same loader as `llama-cli --lora`), and
records the logits of every position of the fixture's prompt, for the fixture's vocabulary
ids, with and without the adapter. Tokens are evaluated one at a time (n_batch = n_ubatch =
1; see golden_greedy.py for why).
"""

import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_common  # noqa: E402


def main():
    model = sys.argv[1]
    peer_common.ensure_peer_python()
    import llama_cpp
    import numpy as np
    from llama_cpp import Llama
    from safetensors.numpy import load_file, save_file

    peer_common.check_model(model, peer_common.SMOLLM2_Q4_1_SHA256)
    data = os.path.join(peer_common.REPO_ROOT, "sdk/tests/data/peft")
    exp = load_file(os.path.join(data, "expected.safetensors"))
    tokens, ids = exp["tokens"].tolist(), exp["ids"]
    with tempfile.TemporaryDirectory() as tmp:
        lora = os.path.join(tmp, "peft_made.gguf")
        subprocess.run(["cargo", "run", "--release", "-q", "-p", "tailor-cli", "--", "adapter", "export",
                        os.path.join(data, "peft_made"), "--out", lora, "--model", model],
                       cwd=peer_common.REPO_ROOT, check=True)
        out = {}
        for name, path in (("base", None), ("lora", lora)):
            kw = {"lora_path": path, "lora_scale": 1.0} if path else {}
            llm = Llama(model_path=model, n_threads=2, n_ctx=256, n_batch=1, n_ubatch=1, seed=0, verbose=False, **kw)
            n_vocab = llm.n_vocab()
            rows = []
            for t in tokens:
                llm.eval([t])
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
                rows.append(logits[ids].copy())
            out[name] = np.ascontiguousarray(np.stack(rows).astype(np.float32))
            del llm
    save_file(out, os.path.join(data, "llamacpp.safetensors"), metadata={"llama_cpp_python": peer_common.llama_cpp_version()})
    print("llama.cpp adapter effect max |dlogit| %.4f" % np.abs(out["lora"] - out["base"]).max())


if __name__ == "__main__":
    main()
