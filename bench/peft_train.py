"""PEFT's side of the training benchmark (bench/peft_train.sh): LoRA r=8 on all seven
projections of SmolLM2-135M-Instruct dequantized to f32 by transformers from the same GGUF,
torch CPU, AdamW, one sequence of SEQ tokens (labels = input ids), batch 1, gradient clipping
at 1.0 as Tailor does. The first step is a warm-up and is not timed. Prints one JSON line.

--examples FILE (a TrainData JSON written by Tailor's bench with --dump-examples): the short
feedback case instead: --batch examples per step, right-padded to the longest of the batch
(attention mask; labels -100 on prompts and padding, so the loss is the mean over answer
tokens as Tailor's), taken in file order; tokens/s counts the examples' tokens, not padding.

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
    ap.add_argument("--examples", help="TrainData JSON of short SFT examples (Tailor's --dump-examples)")
    ap.add_argument("--batch", type=int, default=16)
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

    if a.examples:
        sft = json.load(open(a.examples))["sft"]
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0

        def batch(step):
            ex = [sft[(step * a.batch + i) % len(sft)] for i in range(a.batch)]
            width = max(len(e["prompt_tokens"]) + len(e["answer_tokens"]) for e in ex)
            ids, mask, labels = [], [], []
            for e in ex:
                p, r = e["prompt_tokens"], e["answer_tokens"]
                fill = width - len(p) - len(r)
                ids.append(p + r + [pad] * fill)
                mask.append([1] * (len(p) + len(r)) + [0] * fill)
                labels.append([-100] * len(p) + r + [-100] * fill)
            n = sum(len(e["prompt_tokens"]) + len(e["answer_tokens"]) for e in ex)
            return dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels)), n
    else:
        text = open(a.prompt).read()
        ids = []
        while len(ids) < a.seq:
            ids += tok(text, add_special_tokens=False)["input_ids"]
        x = torch.tensor([ids[: a.seq]])

        def batch(step):
            return dict(input_ids=x, labels=x), a.seq

    losses = []
    t0 = None
    timed_tokens = 0
    for step in range(a.steps + 1):
        if step == 1:
            t0 = time.perf_counter()
            r0 = resource.getrusage(resource.RUSAGE_SELF)
        inputs, n = batch(step)
        if step >= 1:
            timed_tokens += n
        out = model(**inputs)
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
        "seq": None if a.examples else a.seq,
        "short_examples": len(sft) if a.examples else 0,
        "batch": a.batch if a.examples else 1,
        "timed_tokens": timed_tokens,
        "timed_steps": a.steps,
        "s_per_step": timed / a.steps,
        "cpu_s_per_step": cpu,
        "tokens_per_s": timed_tokens / timed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "losses": losses,
        "load_s": load_s,
        "lora_params": sum(p.numel() for p in params),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__, "peft": __import__("peft").__version__},
    }))


if __name__ == "__main__":
    main()
