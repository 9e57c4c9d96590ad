"""Makes the PEFT interoperability fixtures in sdk/tests/data/peft/ with the real `peft`.

1. Loads SmolLM2-135M-Instruct from the cached GGUF with transformers (dequantized to f32,
   q/k rows un-permuted back to the Hugging Face order).
2. Makes a LoRA adapter with PEFT (rank 2 on all seven projections of six layers, random
   A and B drawn with a fixed seed) and saves it with `save_pretrained` -> `peft_made/`.
3. Has Tailor re-save it (`tailor adapter merge peft_made --out tailor_saved`: loaded by our
   PEFT reader, refactored by our SVD, written by our atomic PEFT writer) -> `tailor_saved/`,
   loads that in PEFT (`PeftModel.from_pretrained`) and checks its logits equal the original's.
4. Writes `expected.safetensors`: the prompt's token ids, a fixed set of vocabulary ids, and
   PEFT's logits at every position for those ids: the base (adapter disabled), with
   `peft_made`, and with `tailor_saved`; plus `versions.json`.

Run:  bash scripts/peft_golden.sh   (makes the venv with scripts/torch-venv.sh first)
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.numpy import save_file
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "sdk" / "tests" / "data" / "peft"
HOME = Path(os.environ.get("TAILOR_HOME", Path.home() / ".cache" / "tailor"))
GGUF_DIR = HOME / "models" / "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LAYERS = [0, 1, 2, 14, 28, 29]
# `tailor tokenize` of a short chat turn (template tokens included).
TOKENS = [1, 4093, 198, 5965, 1686, 6612, 3008, 284, 260, 3985, 436, 7824, 30, 1812, 868, 339, 536, 47, 2, 198, 1, 520, 9531, 198, 57, 5248, 22657]


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def main():
    torch.manual_seed(20261121)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    base = AutoModelForCausalLM.from_pretrained(str(GGUF_DIR), gguf_file=GGUF_NAME, torch_dtype=torch.float32)
    base.eval()
    cfg = LoraConfig(
        r=2,
        lora_alpha=4,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        layers_to_transform=LAYERS,
        lora_dropout=0.0,
        init_lora_weights=True,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, cfg)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            elif "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.eval()
    peft_dir = OUT / "peft_made"
    model.save_pretrained(str(peft_dir))

    with model.disable_adapter():
        base_logits = logits(model, TOKENS)
    lora_logits = logits(model, TOKENS)

    tailor_dir = OUT / "tailor_saved"
    subprocess.run(
        ["cargo", "run", "--release", "-q", "-p", "tailor-cli", "--", "adapter", "merge", str(peft_dir), "--out", str(tailor_dir), "--rank", "2"],
        cwd=ROOT, check=True,
    )
    base2 = AutoModelForCausalLM.from_pretrained(str(GGUF_DIR), gguf_file=GGUF_NAME, torch_dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base2, str(tailor_dir))
    reloaded.eval()
    tailor_logits = logits(reloaded, TOKENS)
    diff = np.abs(tailor_logits - lora_logits).max()
    effect = np.abs(lora_logits - base_logits).max()
    print(f"adapter effect max |dlogit| {effect:.4f}; Tailor-saved vs PEFT-made in PEFT: max |d| {diff:.2e}")
    assert diff < 1e-3 * max(effect, 1.0), "the Tailor-saved adapter does not reproduce the PEFT one in PEFT"

    # A fixed set of vocabulary ids: each position's top 32 (base and adapted) plus 256 spread ids.
    ids = set(range(0, base_logits.shape[1], base_logits.shape[1] // 256))
    for arr in (base_logits, lora_logits):
        for row in arr:
            ids.update(np.argsort(-row)[:32].tolist())
    ids = np.array(sorted(ids), dtype=np.int64)
    save_file(
        {
            "tokens": np.array(TOKENS, dtype=np.int64),
            "ids": ids,
            "base": base_logits[:, ids].astype(np.float32, order="C").copy(order="C"),
            "peft_made": lora_logits[:, ids].astype(np.float32, order="C").copy(order="C"),
            "tailor_saved": tailor_logits[:, ids].astype(np.float32, order="C").copy(order="C"),
        },
        str(OUT / "expected.safetensors"),
    )
    import peft, transformers, gguf  # noqa: E401

    (OUT / "versions.json").write_text(json.dumps({
        "python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__, "gguf": getattr(gguf, "__version__", "0.19.0"), "model": GGUF_NAME,
    }, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
