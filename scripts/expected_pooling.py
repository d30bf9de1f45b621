#!/usr/bin/env python3
"""Expected `llmx embed --pooling ...` vectors for plain (non-sentence-transformers)
checkpoints: the base model's last hidden states from transformers, pooled the way
sentence-transformers' Pooling module defines each mode (cls; max over real tokens; mean over
real tokens; sum over real tokens / sqrt(count)), with and without L2 normalisation.

Run with scripts/requirements.txt installed:  python scripts/expected_pooling.py
Writes tests/fixtures/pooling-expected.json from the committed bert-cls3 and roberta-cls3
fixtures (their encoders; the classification heads are ignored, as AutoModel ignores them).
"""

import json
import pathlib

import torch
import transformers
from transformers import AutoModel, AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests/fixtures"
TEXTS = ["Hello, my dog is cute", "", "A somewhat longer sentence about the café in Zürich."]


def pool(hidden, mask, mode):
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return torch.where(mask.bool(), hidden, torch.full_like(hidden, -1e9)).max(1).values
    summed = (hidden * mask).sum(1)
    count = mask.sum(1).clamp(min=1e-9)
    return summed / count if mode == "mean" else summed / count.sqrt()


def main():
    out = {"transformers_version": transformers.__version__, "torch_version": torch.__version__, "cases": []}
    for name in ["bert-cls3", "roberta-cls3"]:
        folder = FIXTURES / name
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
        batch = tokenizer(TEXTS, padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state
        for mode in ["cls", "max", "mean", "mean-sqrt-len"]:
            pooled = pool(hidden, batch["attention_mask"], mode.replace("-sqrt-len", "_sqrt_len"))
            for normalize in [False, True]:
                vectors = torch.nn.functional.normalize(pooled, p=2, dim=1) if normalize else pooled
                out["cases"].append(
                    {
                        "fixture": name,
                        "pooling": mode,
                        "normalize": normalize,
                        "texts": TEXTS,
                        "embeddings": [[round(x, 7) for x in v.tolist()] for v in vectors],
                    }
                )
    (FIXTURES / "pooling-expected.json").write_text(json.dumps(out, ensure_ascii=False) + "\n")
    print("wrote tests/fixtures/pooling-expected.json")


if __name__ == "__main__":
    main()
