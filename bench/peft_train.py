"""PEFT's side of the training benchmark (bench/peft_train.sh): LoRA r=8 on all seven
projections of SmolLM2-135M-Instruct dequantized to f32 by transformers from the same GGUF,
torch CPU, AdamW, one sequence of SEQ tokens (labels = input ids), batch 1, gradient clipping
at 1.0 as Tailor does. The first step is a warm-up and is not timed. Prints one JSON line.

Versions used for the figures in the report: torch 2.15, transformers 5.23, peft 0.21
(scripts/torch-venv.sh).
"""
import argparse
import json
import os
import resource
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="path of the GGUF file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--prompt", default=os.path.join(os.path.dirname(__file__), "prompt.txt"))
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = os.path.split(os.path.abspath(a.model))
    t_load = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    load_s = time.perf_counter() - t_load
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)

    text = open(a.prompt).read()
    ids = []
    while len(ids) < a.seq:
        ids += tok(text, add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids[: a.seq]])

    losses = []
    t0 = None
    for step in range(a.steps + 1):
        if step == 1:
            t0 = time.perf_counter()
            r0 = resource.getrusage(resource.RUSAGE_SELF)
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
    timed = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / a.steps
    print(json.dumps({
        "engine": "peft",
        "threads": a.threads,
        "seq": a.seq,
        "timed_steps": a.steps,
        "s_per_step": timed / a.steps,
        "cpu_s_per_step": cpu,
        "tokens_per_s": a.steps * a.seq / timed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "losses": losses,
        "load_s": load_s,
        "lora_params": sum(p.numel() for p in params),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__, "peft": __import__("peft").__version__},
    }))


if __name__ == "__main__":
    main()
