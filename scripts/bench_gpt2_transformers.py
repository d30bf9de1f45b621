#!/usr/bin/env python3
"""The transformers side of `cargo bench --bench generate`: GPT-2 124M (random weights, the
real gpt2 shape), batch 1, an 8-token prompt, 64 greedy new tokens; prints tokens/s.

Run: python scripts/bench_gpt2_transformers.py   (versions: scripts/requirements.txt)
"""

import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

NEW_TOKENS = 64
RUNS = 5


def main():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    prompt = torch.tensor([[15496, 11, 616, 3290, 318, 13779, 290, 340]])
    settings = dict(
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        pad_token_id=50256,
    )
    with torch.inference_mode():
        mask = torch.ones_like(prompt)
        model.generate(prompt, attention_mask=mask, **settings)  # warm-up
        times = []
        for _ in range(RUNS):
            start = time.perf_counter()
            model.generate(prompt, attention_mask=mask, **settings)
            times.append(time.perf_counter() - start)
    best, mean = min(times), sum(times) / len(times)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{NEW_TOKENS / mean:.1f} tokens/s mean, {NEW_TOKENS / best:.1f} best ({RUNS} runs)")


if __name__ == "__main__":
    main()
