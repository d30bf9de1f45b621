#!/usr/bin/env python3
"""Tiny random-weight BERT-family checkpoints for fill-mask, NER and extractive QA,
plus what transformers' own pipelines answer on them.

What it makes
-------------
Nine folders under ``tests/fixtures/`` in the normal Hugging Face hub layout
(config.json, model.safetensors, tokenizer.json (compact), tokenizer_config.json,
special_tokens_map.json, vocab.txt or vocab.json + merges.txt), each with an
``expected.json``:

    bert-mlm         BertForMaskedLM                   pipeline("fill-mask")
    distilbert-mlm   DistilBertForMaskedLM             pipeline("fill-mask")
    roberta-mlm      RobertaForMaskedLM                pipeline("fill-mask")
    bert-ner         BertForTokenClassification        pipeline("token-classification")
    distilbert-ner   DistilBertForTokenClassification  pipeline("token-classification")
    roberta-ner      RobertaForTokenClassification     pipeline("token-classification")
    bert-qa          BertForQuestionAnswering          pipeline("question-answering")
    distilbert-qa    DistilBertForQuestionAnswering    pipeline("question-answering")
    roberta-qa       RobertaForQuestionAnswering       pipeline("question-answering")

Models, tokenizers and weight randomisation are those of scripts/make_fixtures.py
(imported from it): hidden 32, 2 layers, 4 heads, intermediate 64, a 64-token
window (RoBERTa: 66 positions), the uncased WordPiece tokenizer (600 tokens) for
BERT and DistilBERT and the byte-level BPE tokenizer (800 tokens) for RoBERTa,
and make_fixtures.randomize_weights.  The MLM heads are transform dense -> gelu
-> LayerNorm -> decoder, the decoder weight tied to the word embeddings (stored
once in model.safetensors) plus its own bias.  The NER models use
dslim/bert-base-NER's labels in its id order (0 O, 1 B-MISC, 2 I-MISC, 3 B-PER,
4 I-PER, 5 B-ORG, 6 I-ORG, 7 B-LOC, 8 I-LOC); after randomisation the
classifier bias of O is raised by O_BIAS (so that, as with a real NER model,
many tokens are O and entities come in runs).  Nothing is downloaded.

Every expected output is the pipeline's own answer on the folder reloaded with
from_pretrained (the reloaded model gives bit-identical logits; checked).  The
script also re-derives every output with its own implementation of the
pipeline's algorithm (fill_mask_reference, ner_reference, qa_reference) and
asserts the two agree, so those functions document what a reimplementation
must do.

Seeds
-----
Fixture k (1..9, in the order above) tries seeds 20000 + 1000*k, +1, ... and
keeps the first whose outputs are worth testing against (see check_mlm,
check_ner, check_qa): top-k orders and label decisions are never near-ties
(gaps >= 1e-4 relative for probabilities that get sorted, >= 1e-4 absolute for
argmax decisions), predictions vary from input to input, NER outputs mix entity
types, merged and unmerged B-/I- runs and words whose sub-tokens disagree (so
first / average / max / simple all differ), and QA answers are non-empty,
differ between questions and one of the long-context answers lies beyond the
first window.

expected.json layout
--------------------
All: transformers_version, torch_version, weight_seed.  Scores are the float32
values the pipeline returns, written as JSON doubles.

fill-mask (*-mlm)
    mask_token        "[MASK]" or "<mask>"
    logits_check      text, input_ids, mask_index, logits_head (the first 16
                      logits at the mask), logsumexp and argmax of that row
    cases             text (the mask token already substituted), input_ids,
                      mask_positions, outputs: {"5": pipeline(text) (default
                      top_k 5), "3": pipeline(text, top_k=3)}.  One mask: a list
                      of {score, token, token_str, sequence}; several masks: one
                      such list per mask, in position order
    targets           text, targets, target_ids (pipeline.get_target_ids, in
                      its order: a Python set turned into a list), warnings
                      (the logger warnings get_target_ids emits), output
                      (pipeline(text, targets=targets), default top_k, capped
                      at the number of distinct target ids)

token classification (*-ner)
    id2label
    logits_check      text, input_ids, logits (every position, 9 labels)
    cases             text, input_ids, tokens, offsets (as the pipeline's
                      tokenizer call returns them; truncation=True), outputs
                      per aggregation strategy ("none", "simple", "first",
                      "average", "max"): the list the pipeline returns
                      (entity/entity_group, score, index (none only), word,
                      start, end), and warnings per strategy (UserWarnings the
                      pipeline issued)
    long              text (more than 64 tokens), n_tokens (untruncated, with
                      specials), input_ids (what the model saw: truncated to
                      64), outputs per strategy (default: silently truncated),
                      stride: {stride 16, windows (input_ids of each
                      overflowing window, unpadded), outputs per strategy,
                      "none" being {"error": message}}

question answering (*-qa)
    defaults          the pipeline's effective max_seq_len / doc_stride /
                      max_answer_len / top_k / handle_impossible_answer when
                      not given (model_max_length is 64)
    settings          the keyword sets every case is run with
    logits_check      question, context, input_ids, token_type_ids,
                      start_logits, end_logits (window 0 of case 0)
    cases             question, context, windows: {"64/32": [...], "64/16":
                      [...]} (input_ids of each window the pipeline builds for
                      max_seq_len 64 and doc_stride 32 / 16), outputs: one per
                      setting, the pipeline's answer (a dict, or a list when
                      top_k > 1)

How to run
----------
From the repository root, with scripts/requirements.txt installed::

    python scripts/fixtures_encoder_tasks.py

It takes a minute or two and rewrites the nine folders.  It is deterministic
(fixed seeds, one CPU thread, the deterministic tokenizers of make_fixtures),
so re-running it rewrites byte-identical files.
"""

import json
import logging
import os
import shutil
import sys
import tempfile
import warnings

import numpy as np
import torch
import transformers
from transformers import (
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForTokenClassification,
    BertTokenizerFast,
    DistilBertForMaskedLM,
    DistilBertForQuestionAnswering,
    DistilBertForTokenClassification,
    DistilBertTokenizerFast,
    pipeline,
    RobertaForMaskedLM,
    RobertaForQuestionAnswering,
    RobertaForTokenClassification,
    RobertaTokenizerFast,
)

SCRIPTS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, SCRIPTS_DIR)
import make_fixtures as mf  # noqa: E402
from fixtures_gpt2 import compact_json  # noqa: E402

OUT_DIR = mf.OUT_DIR

BASE_SEED = 20000  # make_fixtures, gpt2 and t5 use lower ranges
SEED_ATTEMPTS = 400

# Added to the O logit's bias of the NER classifiers after randomisation.
O_BIAS = 2.0

NER_ID2LABEL = {
    0: "O",
    1: "B-MISC",
    2: "I-MISC",
    3: "B-PER",
    4: "I-PER",
    5: "B-ORG",
    6: "I-ORG",
    7: "B-LOC",
    8: "I-LOC",
}
DEFAULT_ID2LABEL = {0: "LABEL_0", 1: "LABEL_1"}

# ---------------------------------------------------------------- fill-mask inputs
# "{mask}" becomes the tokenizer's mask token.
FILL_MASK_TEXTS = [
    "Hello, my dog is {mask}.",
    "The soup was {mask}, but the dessert was {mask}.",  # two masks
    "Nobody told me anything{mask}",  # glued to a word, at the end
    "Wait... {mask}? Did you really say that?",  # between punctuation
    "{mask} is important, and small mistakes can cost a lot.",  # first word
    "We drank coffee in a small café near the {mask} in Zürich.",  # accents
    "Le {mask} était naïf à Zürich.",  # accents
    "My {mask} likes to run in the {mask} every {mask}.",  # three masks
]
FILL_MASK_TOP_KS = [None, 3]  # None: the pipeline default (5)

# Per tokenizer: (text index, targets).  The last target of each first list is
# not in the vocabulary (the pipeline then uses its first sub-token).
TARGETS = {
    "wordpiece": [
        (0, ["cute", "coffee", "train", "cake", "elephant"]),
        (0, ["dog", "Dog", "cold"]),  # "Dog" is not a vocab key; it tokenizes to "dog"
        (1, ["cold", "delicious", "hard", "elephant"]),  # two masks
    ],
    "bpe": [
        (0, ["Ġcake", "Ġtrain", "Ġcold", "Ġdinner", "elephant"]),
        (0, [" cake", "cake", " lake"]),  # with a space, as users write them
        (1, ["Ġcold", "Ġhard", "Ġgood", "elephant"]),  # two masks
    ],
}
TARGETS_IN_VOCAB = {
    "wordpiece": ["cute", "coffee", "train", "cake", "dog", "cold", "delicious", "hard"],
    "bpe": ["Ġcake", "Ġtrain", "Ġcold", "Ġdinner", "Ġhard", "Ġgood"],
}
LOGITS_CHECK_TEXT = 0

# ---------------------------------------------------------------- NER inputs
NER_TEXTS = [
    "My name is Wolfgang and I live in Berlin",
    "Hugging Face Inc. is a company based in New York City.",
    "Zoë Müller visited Zürich and São Paulo.",
    "I met Sarah 👋 at the café in Paris",
    "  Angela   Merkel met  Emmanuel Macron\tin   Paris .  ",
]
NER_LONG_TEXT = (
    "Last summer Maria Schmidt and her brother Thomas travelled from Hamburg to "
    "Zürich by train to visit the offices of Siemens, Nestlé and the Red Cross. "
    "In the evening they met John Smith from Microsoft at a small café near Lake "
    "Geneva, and they talked about the European Union, the Olympic Games in Paris "
    "and the new museum of modern art in New York City."
)
NER_STRATEGIES = ["none", "simple", "first", "average", "max"]
NER_STRIDE = 16

# ---------------------------------------------------------------- QA inputs
QA_CONTEXT_BERLIN = "My name is Wolfgang and I live in Berlin."
QA_CONTEXT_HF = (
    "Hugging Face Inc. is a company based in New York City. Its headquarters are "
    "in DUMBO, therefore very close to the Manhattan Bridge."
)
QA_CONTEXT_ACCENTS = (
    "Zoë Müller 👋 visited Zürich and São Paulo last summer, and drank coffee in a small café."
)
QA_CASES = [
    ("What is my name?", QA_CONTEXT_BERLIN),
    ("Where do I live?", QA_CONTEXT_BERLIN),
    ("Where is Hugging Face based?", QA_CONTEXT_HF),
    ("Which bridge is close to the headquarters?", QA_CONTEXT_HF),
    ("Who visited Zürich?", QA_CONTEXT_ACCENTS),
    ("What did Zoë drink?", QA_CONTEXT_ACCENTS),
    ("When did the sun come out?", mf.LONG_TEXT),  # much longer than the window
    ("What did we order at the café?", mf.LONG_TEXT),
]
QA_LONG_CASES = [6, 7]
QA_SETTINGS = [
    {},
    {"max_seq_len": 64, "doc_stride": 16, "max_answer_len": 15},
    {"max_seq_len": 64, "doc_stride": 16, "max_answer_len": 5},
    {"top_k": 3},
    {"max_seq_len": 64, "doc_stride": 16, "top_k": 3},
    {"handle_impossible_answer": True},
]
QA_WINDOWINGS = [(64, 32), (64, 16)]

# Margins (see the check_* functions).
REL_GAP = 1e-4
ABS_GAP = 1e-4


# ---------------------------------------------------------------- helpers


def plain(x):
    """Pipeline output -> plain JSON-able values (numpy / torch scalars unwrapped)."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.ndarray):
        return plain(x.tolist())
    if isinstance(x, torch.Tensor):
        return plain(x.tolist())
    return x


def error_text(exc):
    return f"{type(exc).__name__}: {exc}"


def rel_gaps_ok(values, gap=REL_GAP):
    """Sorted-descending values differ consecutively by more than gap (relative)."""
    v = sorted((float(x) for x in values), reverse=True)
    return all(a - b > gap * max(abs(a), 1e-30) for a, b in zip(v, v[1:]))


def softmax32(x):
    """Softmax along the last axis in float32, as the pipelines compute it with numpy."""
    x = np.asarray(x, dtype=np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def same_floats(a, b, tol=1e-6):
    return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(a)))


def assert_same(ours, theirs, path="$"):
    """Structural equality, floats within 1e-6 relative."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and set(ours) == set(theirs), (path, ours, theirs)
        for k in theirs:
            assert_same(ours[k], theirs[k], f"{path}.{k}")
    elif isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs), (path, ours, theirs)
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, f"{path}[{i}]")
    elif isinstance(theirs, float):
        assert same_floats(ours, theirs), (path, ours, theirs)
    else:
        assert ours == theirs, (path, ours, theirs)


def forward_logits(model, enc_ids, token_type_ids=None, field="logits", attention_mask=None):
    ids = torch.tensor([enc_ids])
    mask = torch.ones_like(ids) if attention_mask is None else torch.tensor([attention_mask])
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if token_type_ids is not None:
        kwargs["token_type_ids"] = torch.tensor([token_type_ids])
    with torch.no_grad():
        out = model(**kwargs)
    if field == "qa":
        return out.start_logits[0].numpy(), out.end_logits[0].numpy()
    return out.logits[0]


class LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


# ---------------------------------------------------------------- fill-mask


def mask_texts(tokenizer):
    return [t.replace("{mask}", tokenizer.mask_token) for t in FILL_MASK_TEXTS]


def resolve_targets(tokenizer, targets):
    """Target words -> ids as FillMaskPipeline.get_target_ids does: a vocab key is
    taken as is; anything else is tokenized without special tokens and its first
    token used (with a warning); duplicates collapse."""
    vocab = tokenizer.get_vocab()
    ids = []
    for t in targets:
        if t in vocab:
            ids.append(vocab[t])
        else:
            pieces = tokenizer(t, add_special_tokens=False)["input_ids"]
            if pieces:
                ids.append(pieces[0])
    return sorted(set(ids))


def fill_mask_reference(model, tokenizer, text, top_k=5, targets=None):
    enc = tokenizer(text)
    ids = enc["input_ids"]
    logits = forward_logits(model, ids, enc.get("token_type_ids"))
    positions = [i for i, t in enumerate(ids) if t == tokenizer.mask_token_id]
    probs = torch.softmax(logits[positions], dim=-1)
    candidates = list(range(probs.shape[-1]))
    if targets is not None:
        candidates = resolve_targets(tokenizer, targets)
        top_k = min(top_k, len(candidates))
    single = len(positions) == 1
    rows = []
    for row, pos in zip(probs, positions):
        scored = sorted(((float(row[c]), c) for c in candidates), key=lambda sc: -sc[0])[:top_k]
        out = []
        for score, tok in scored:
            filled = list(ids)
            filled[pos] = tok
            filled = [t for t in filled if t != tokenizer.pad_token_id]
            out.append(
                {
                    "score": score,
                    "token": tok,
                    "token_str": tokenizer.decode([tok]),
                    # one mask: specials dropped; several: kept (the other masks stay visible)
                    "sequence": tokenizer.decode(filled, skip_special_tokens=single),
                }
            )
        rows.append(out)
    return rows[0] if single else rows


def check_mlm(model, tokenizer, family):
    """Worth testing against: at every mask the 6 best probabilities (and the
    target probabilities) differ consecutively by more than REL_GAP relative, no
    top-1 probability exceeds 0.9, and the top-1 token changes between masks (at
    least half of them, plus 2, distinct)."""
    texts = mask_texts(tokenizer)
    tops = []
    for text in texts:
        enc = tokenizer(text)
        ids = enc["input_ids"]
        logits = forward_logits(model, ids, enc.get("token_type_ids"))
        positions = [i for i, t in enumerate(ids) if t == tokenizer.mask_token_id]
        probs = torch.softmax(logits[positions], dim=-1).numpy()
        for row in probs:
            top = np.sort(row)[::-1][:6]
            if not rel_gaps_ok(top):
                return False
            if top[0] > 0.9:
                return False
            tops.append(int(row.argmax()))
        for ti, targets in TARGETS[family]:
            if texts[ti] != text:
                continue
            tids = resolve_targets(tokenizer, targets)
            for row in probs:
                if not rel_gaps_ok(row[tids]):
                    return False
    return len(set(tops)) >= len(tops) // 2 + 2


def mlm_expected(model, tokenizer, family):
    fill = pipeline("fill-mask", model=model, tokenizer=tokenizer, device="cpu")
    texts = mask_texts(tokenizer)
    cases = []
    for text in texts:
        enc = tokenizer(text)
        ids = enc["input_ids"]
        outputs = {}
        for k in FILL_MASK_TOP_KS:
            out = plain(fill(text) if k is None else fill(text, top_k=k))
            assert_same(fill_mask_reference(model, tokenizer, text, top_k=k or 5), out)
            outputs[str(k or 5)] = out
        cases.append(
            {
                "text": text,
                "input_ids": ids,
                "mask_positions": [i for i, t in enumerate(ids) if t == tokenizer.mask_token_id],
                "outputs": outputs,
            }
        )

    fm_logger = logging.getLogger("transformers.pipelines.fill_mask")
    target_cases = []
    for ti, targets in TARGETS[family]:
        text = texts[ti]
        capture = LogCapture()
        fm_logger.addHandler(capture)
        try:
            target_ids = plain(fill.get_target_ids(targets))
            out = plain(fill(text, targets=targets))
        finally:
            fm_logger.removeHandler(capture)
        assert sorted(target_ids) == resolve_targets(tokenizer, targets)
        assert_same(fill_mask_reference(model, tokenizer, text, targets=targets), out)
        # get_target_ids runs twice (once above, once inside the call): keep one copy
        half = capture.messages[: len(capture.messages) // 2]
        assert capture.messages == half + half, capture.messages
        target_cases.append(
            {"text": text, "targets": targets, "target_ids": target_ids, "warnings": half, "output": out}
        )

    text = texts[LOGITS_CHECK_TEXT]
    enc = tokenizer(text)
    ids = enc["input_ids"]
    logits = forward_logits(model, ids, enc.get("token_type_ids"))
    pos = ids.index(tokenizer.mask_token_id)
    row = logits[pos]
    return {
        "mask_token": tokenizer.mask_token,
        "logits_check": {
            "text": text,
            "input_ids": ids,
            "mask_index": pos,
            "logits_head": [float(v) for v in row[:16].tolist()],
            "logsumexp": float(torch.logsumexp(row, dim=0)),
            "argmax": int(row.argmax()),
        },
        "cases": cases,
        "targets": target_cases,
    }


# ---------------------------------------------------------------- token classification


def ner_encode(tokenizer, text, stride=None):
    """The pipeline's tokenizer call (truncation at model_max_length); with stride,
    the overflowing windows, padded to the longest as the pipeline does (padding
    is masked out of attention and skipped as special, but it changes the float
    rounding of the padded window's logits at the 1e-6 level)."""
    kwargs = {"truncation": True, "return_special_tokens_mask": True, "return_offsets_mapping": True}
    if stride is not None:
        kwargs.update(return_overflowing_tokens=True, stride=stride, padding=True)
        enc = tokenizer(text, **kwargs)
        return [
            (enc["input_ids"][i], enc["offset_mapping"][i], enc["special_tokens_mask"][i], enc["attention_mask"][i])
            for i in range(len(enc["input_ids"]))
        ]
    enc = tokenizer(text, **kwargs)
    return [(enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"], enc["attention_mask"])]


def split_tag(label):
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


def ner_window_tokens(model, tokenizer, text, ids, offsets, special, attention_mask=None):
    """One pre-entity per non-special token: token string, probabilities, offsets,
    position and whether it continues the previous word."""
    probs = softmax32(forward_logits(model, ids, attention_mask=attention_mask).numpy())
    word_aware = bool(getattr(tokenizer.backend_tokenizer.model, "continuing_subword_prefix", None))
    tokens = []
    for i, (tid, (s, e), sp) in enumerate(zip(ids, offsets, special)):
        if sp:
            continue
        word = tokenizer.convert_ids_to_tokens(tid)
        ref = text[s:e]
        if word_aware:  # WordPiece: "##" pieces are longer than the text they cover
            sub = len(word) != len(ref)
        else:  # byte-level BPE: no space just before the token's first character
            sub = s > 0 and " " not in text[s - 1 : s + 1]
        if tid == tokenizer.unk_token_id:
            word, sub = ref, False
        tokens.append({"word": word, "probs": probs[i], "start": s, "end": e, "index": i, "sub": sub})
    return tokens


def ner_entities(tokenizer, tokens, strategy):
    """Token or word entities (before grouping), each with its label and score."""
    if strategy in ("none", "simple"):
        out = []
        for t in tokens:
            j = int(t["probs"].argmax())
            out.append(
                {
                    "entity": NER_ID2LABEL[j],
                    "score": t["probs"][j],
                    "index": t["index"],
                    "word": t["word"],
                    "start": t["start"],
                    "end": t["end"],
                    "_n": 1,
                }
            )
        return out
    words = []
    for t in tokens:
        if words and t["sub"]:
            words[-1].append(t)
        else:
            words.append([t])
    out = []
    for w in words:
        if strategy == "first":
            p = w[0]["probs"]
        elif strategy == "max":
            best = 0
            for k, t in enumerate(w):  # first token with the highest max probability
                if t["probs"].max() > w[best]["probs"].max():
                    best = k
            p = w[best]["probs"]
        else:  # average of the probability vectors
            p = np.stack([t["probs"] for t in w]).mean(axis=0)
        j = int(p.argmax())
        out.append(
            {
                "entity": NER_ID2LABEL[j],
                "score": p[j],
                "word": tokenizer.convert_tokens_to_string([t["word"] for t in w]),
                "start": w[0]["start"],
                "end": w[-1]["end"],
                "_n": len(w),
            }
        )
    return out


def ner_group(tokenizer, entities):
    """Adjacent entities of the same type merge unless the newcomer is B-."""
    groups = []
    for ent in entities:
        bi, tag = split_tag(ent["entity"])
        if groups and tag == split_tag(groups[-1][-1]["entity"])[1] and bi != "B":
            groups[-1].append(ent)
        else:
            groups.append([ent])
    out = []
    for g in groups:
        out.append(
            {
                "entity_group": g[0]["entity"].split("-", 1)[-1],
                "score": float(np.mean([e["score"] for e in g])),
                "word": tokenizer.convert_tokens_to_string([e["word"] for e in g]),
                "start": g[0]["start"],
                "end": g[-1]["end"],
                "_parts": len(g),
                "_labels": [e["entity"] for e in g],
            }
        )
    return out


def resolve_overlaps(entities, gaps=None):
    """Entities from overlapping windows: stable-sorted by start; when an entity
    starts inside the one kept before it, the longer one (then the higher score)
    survives.  gaps, when given, collects the score differences that decided."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda x: x["start"])
    kept, prev = [], entities[0]
    for ent in entities:
        if prev["start"] <= ent["start"] < prev["end"]:
            a, b = ent["end"] - ent["start"], prev["end"] - prev["start"]
            if a == b and gaps is not None and ent is not prev:  # the first one meets itself
                gaps.append(abs(float(ent["score"]) - float(prev["score"])))
            if a > b or (a == b and ent["score"] > prev["score"]):
                prev = ent
        else:
            kept.append(prev)
            prev = ent
    kept.append(prev)
    return kept


def ner_reference(model, tokenizer, text, strategy, stride=None, debug=False, gaps=None):
    found = []
    windows = ner_encode(tokenizer, text, stride)
    for ids, offsets, special, mask in windows:
        tokens = ner_window_tokens(model, tokenizer, text, ids, offsets, special, mask)
        ents = ner_entities(tokenizer, tokens, strategy)
        if strategy != "none":
            ents = ner_group(tokenizer, ents)
        key = "entity" if strategy == "none" else "entity_group"
        found.extend(e for e in ents if e[key] != "O")
    if len(windows) > 1:
        found = resolve_overlaps(found, gaps)
    if debug:
        return found
    return [{k: plain(v) for k, v in e.items() if not k.startswith("_")} for e in found]


def ner_words(tokens):
    words = []
    for t in tokens:
        if words and t["sub"]:
            words[-1].append(t)
        else:
            words.append([t])
    return words


def ner_margins_ok(tokens):
    """No label decision of any strategy is a near-tie: each token's best two
    probabilities, each word's best two averaged probabilities and the two
    highest token maxima of a word (max strategy) differ by ABS_GAP or more."""
    for t in tokens:
        top2 = np.sort(t["probs"])[::-1][:2]
        if top2[0] - top2[1] < ABS_GAP:
            return False
    for w in ner_words(tokens):
        if len(w) < 2:
            continue
        avg = np.sort(np.stack([t["probs"] for t in w]).mean(axis=0))[::-1]
        maxes = sorted((float(t["probs"].max()) for t in w), reverse=True)
        if avg[0] - avg[1] < ABS_GAP or maxes[0] - maxes[1] < ABS_GAP:
            return False
    return True


def check_ner(model, tokenizer):
    """Realistic-looking, unambiguous NER outputs: every short text has at least
    one O token and two entity groups (simple), 30-70% of all tokens are O, all
    four entity types occur, some B-X I-X run merges and some B-X B-X pair does
    not, at least 3 words have sub-tokens with different labels, and for every
    pair of simple / first / average / max some text gets different groups.
    No decision is a near-tie (ner_margins_ok, also inside the stride windows,
    and for the score comparisons that resolve overlapping windows)."""
    n_tokens = n_o = 0
    types = set()
    merged_bi = unmerged_bb = False
    split_words = 0
    differs = {("first", "simple"): 0, ("average", "simple"): 0, ("max", "simple"): 0,
               ("first", "average"): 0, ("first", "max"): 0, ("average", "max"): 0}
    for text in NER_TEXTS + [NER_LONG_TEXT]:
        ((ids, offsets, special, _),) = ner_encode(tokenizer, text)
        tokens = ner_window_tokens(model, tokenizer, text, ids, offsets, special)
        if not ner_margins_ok(tokens):
            return False
        labels = [NER_ID2LABEL[int(t["probs"].argmax())] for t in tokens]
        n_tokens += len(labels)
        n_o += labels.count("O")
        for w in ner_words(tokens):
            if len({int(t["probs"].argmax()) for t in w}) > 1:
                split_words += 1
        simple = ner_reference(model, tokenizer, text, "simple", debug=True)
        if text != NER_LONG_TEXT and ("O" not in labels or len(simple) < 2):
            return False
        for g in simple:
            types.add(g["entity_group"])
            labs = g["_labels"]
            if len(labs) >= 2 and labs[0].startswith("B-") and any(x.startswith("I-") for x in labs[1:]):
                merged_bi = True
        for a, b in zip(labels, labels[1:]):
            if a.startswith("B-") and a == b:
                unmerged_bb = True
        shapes = {
            s: [(g["entity_group"], g["start"], g["end"]) for g in ner_reference(model, tokenizer, text, s, debug=True)]
            for s in ("simple", "first", "average", "max")
        }
        for a, b in differs:
            if shapes[a] != shapes[b]:
                differs[(a, b)] += 1
    for ids, offsets, special, mask in ner_encode(tokenizer, NER_LONG_TEXT, NER_STRIDE):
        tokens = ner_window_tokens(model, tokenizer, NER_LONG_TEXT, ids, offsets, special, mask)
        if not ner_margins_ok(tokens):
            return False
    gaps = []
    for s in ("simple", "first", "average", "max"):
        ner_reference(model, tokenizer, NER_LONG_TEXT, s, stride=NER_STRIDE, gaps=gaps)
    if gaps and min(gaps) < ABS_GAP:
        return False
    return (
        0.3 <= n_o / n_tokens <= 0.7
        and types >= {"PER", "ORG", "LOC", "MISC"}
        and merged_bi
        and unmerged_bb
        and split_words >= 3
        and all(v >= 1 for v in differs.values())
    )


def ner_expected(model, tokenizer):
    ner = pipeline("token-classification", model=model, tokenizer=tokenizer, device="cpu")

    def run(text, strategy, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                out = plain(ner(text, aggregation_strategy=strategy, **kwargs))
            except Exception as exc:  # recorded, not fatal
                out = {"error": error_text(exc)}
        msgs = []
        for w in caught:
            m = str(w.message)
            if m not in msgs:
                msgs.append(m)
        return out, msgs

    cases = []
    for text in NER_TEXTS:
        enc = tokenizer(text, truncation=True, return_offsets_mapping=True)
        outputs, warns = {}, {}
        for s in NER_STRATEGIES:
            outputs[s], warns[s] = run(text, s)
            assert_same(ner_reference(model, tokenizer, text, s), outputs[s])
        cases.append(
            {
                "text": text,
                "input_ids": enc["input_ids"],
                "tokens": tokenizer.convert_ids_to_tokens(enc["input_ids"]),
                "offsets": [list(o) for o in enc["offset_mapping"]],
                "outputs": outputs,
                "warnings": warns,
            }
        )

    long_ids = tokenizer(NER_LONG_TEXT, truncation=True)["input_ids"]
    n_full = len(tokenizer(NER_LONG_TEXT, verbose=False)["input_ids"])
    assert len(long_ids) == mf.WINDOW < n_full
    long_out = {}
    for s in NER_STRATEGIES:
        long_out[s], _ = run(NER_LONG_TEXT, s)
        assert_same(ner_reference(model, tokenizer, NER_LONG_TEXT, s), long_out[s])
    stride_out = {}
    for s in NER_STRATEGIES:
        stride_out[s], _ = run(NER_LONG_TEXT, s, stride=NER_STRIDE)
        if s != "none":
            assert_same(ner_reference(model, tokenizer, NER_LONG_TEXT, s, stride=NER_STRIDE), stride_out[s])
    assert "error" in stride_out["none"]
    windows = [
        [t for t, m in zip(w[0], w[3]) if m]  # without the padding
        for w in ner_encode(tokenizer, NER_LONG_TEXT, NER_STRIDE)
    ]

    text = NER_TEXTS[0]
    ids = tokenizer(text)["input_ids"]
    logits = forward_logits(model, ids)
    return {
        "id2label": {str(k): v for k, v in NER_ID2LABEL.items()},
        "logits_check": {"text": text, "input_ids": ids, "logits": [[float(v) for v in r] for r in logits.tolist()]},
        "cases": cases,
        "long": {
            "text": NER_LONG_TEXT,
            "n_tokens": n_full,
            "input_ids": long_ids,
            "outputs": long_out,
            "stride": {"stride": NER_STRIDE, "windows": windows, "outputs": stride_out},
        },
    }


# ---------------------------------------------------------------- question answering


def qa_windows(tokenizer, question, context, max_seq_len, doc_stride):
    """The pipeline's tokenizer call for a fast tokenizer with right padding side."""
    return tokenizer(
        text=question,
        text_pair=context,
        padding="do_not_pad",
        truncation="only_second",
        max_length=max_seq_len,
        stride=doc_stride,
        return_token_type_ids=True,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )


def qa_window_scores(model, tokenizer, enc, i):
    """Start/end probabilities of window i after the pipeline's masking: only context
    tokens and CLS compete (others get logit -10000); then CLS is zeroed."""
    ids = enc["input_ids"][i]
    tt = enc["token_type_ids"][i] if "token_type_ids" in tokenizer.model_input_names else None
    start, end = forward_logits(model, ids, tt, field="qa")
    seq = enc.sequence_ids(i)
    allowed = np.array([s == 1 or t == tokenizer.cls_token_id for s, t in zip(seq, ids)])
    ps = softmax32(np.where(allowed, start, np.float32(-10000.0)))
    pe = softmax32(np.where(allowed, end, np.float32(-10000.0)))
    null = float(ps[0] * pe[0])
    ps[0] = pe[0] = 0.0
    return ps, pe, allowed, null


def qa_candidates(ps, pe, max_answer_len):
    """All (start, end) with start <= end < start + max_answer_len, best first."""
    outer = ps[:, None] * pe[None, :]
    n = len(ps)
    s_idx, e_idx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    valid = (e_idx >= s_idx) & (e_idx - s_idx <= max_answer_len - 1)
    flat = np.where(valid, outer, np.float32(0.0)).ravel()
    order = np.argsort(-flat, kind="stable")
    return [(int(k // n), int(k % n), flat[k]) for k in order]


def qa_reference(model, tokenizer, question, context, settings, debug=False):
    max_seq_len = settings.get("max_seq_len", min(tokenizer.model_max_length, 384))
    doc_stride = settings.get("doc_stride", min(max_seq_len // 2, 128))
    top_k = settings.get("top_k", 1)
    max_answer_len = settings.get("max_answer_len", 15)
    impossible = settings.get("handle_impossible_answer", False)
    pre_topk = top_k * 2 + 10
    enc = qa_windows(tokenizer, question, context, max_seq_len, doc_stride)
    answers = []
    min_null = 1000000.0
    margins = []
    for i in range(len(enc["input_ids"])):
        ps, pe, allowed, null = qa_window_scores(model, tokenizer, enc, i)
        min_null = min(min_null, null)
        cands = qa_candidates(ps, pe, max_answer_len)
        margins.append([float(c[2]) for c in cands[: pre_topk + 1]])
        encoding = enc.encodings[i]
        for s, e, score in cands[:pre_topk]:
            if not (allowed[s] and allowed[e]):
                continue
            ws, we = encoding.token_to_word(s), encoding.token_to_word(e)
            if ws is None or we is None:  # CLS: plain token offsets
                a, b = encoding.offsets[s][0], encoding.offsets[e][1]
            else:  # widen to whole words
                a = encoding.word_to_chars(ws, sequence_index=1)[0]
                b = encoding.word_to_chars(we, sequence_index=1)[1]
            text = context[a:b]
            same = [x for x in answers if x["answer"].lower() == text.lower()]
            if same:
                same[0]["score"] += float(score)
                same[0]["_window"].append(i)
            else:
                answers.append({"score": float(score), "start": a, "end": b, "answer": text, "_window": [i]})
    if impossible:
        answers.append({"score": min_null, "start": 0, "end": 0, "answer": "", "_window": []})
    answers = sorted(answers, key=lambda x: x["score"], reverse=True)
    if debug:
        return answers, margins, enc
    answers = [{k: v for k, v in a.items() if not k.startswith("_")} for a in answers[:top_k]]
    return answers[0] if len(answers) == 1 else answers


def check_qa(model, tokenizer):
    best = []
    for qi, (q, c) in enumerate(QA_CASES):
        for settings in QA_SETTINGS:
            top_k = settings.get("top_k", 1)
            answers, margins, _ = qa_reference(model, tokenizer, q, c, settings, debug=True)
            for m in margins:
                # the pre-top-k cut and the order inside it must be robust
                if not rel_gaps_ok(m) or m[-1] <= 0:
                    return False
            if not rel_gaps_ok([a["score"] for a in answers[: top_k + 1]]):
                return False
            if any(not a["answer"].strip() for a in answers[:top_k] if a["_window"]):
                return False
            if not settings:
                best.append(answers[0])
    spans = [(a["start"], a["end"]) for a in best]
    for i in range(0, len(spans), 2):  # two questions per context
        if spans[i] == spans[i + 1]:
            return False
    # one long-context answer lies beyond the first window
    enc = qa_windows(tokenizer, *QA_CASES[QA_LONG_CASES[0]], 64, 32)
    first_end = max(o[1] for o, s in zip(enc["offset_mapping"][0], enc.sequence_ids(0)) if s == 1)
    return any(best[i]["start"] >= first_end for i in QA_LONG_CASES) and len(set(spans)) == len(spans)


def qa_expected(model, tokenizer):
    qa = pipeline("question-answering", model=model, tokenizer=tokenizer, device="cpu")
    cases = []
    for q, c in QA_CASES:
        windows = {}
        for L, S in QA_WINDOWINGS:
            enc = qa_windows(tokenizer, q, c, L, S)
            windows[f"{L}/{S}"] = enc["input_ids"]
        # the windows the pipeline itself builds with its defaults
        feats = list(qa.preprocess({"question": q, "context": c}))
        assert [f["input_ids"][0].tolist() for f in feats] == windows["64/32"]
        outputs = []
        for settings in QA_SETTINGS:
            out = plain(qa(question=q, context=c, **settings))
            assert_same(qa_reference(model, tokenizer, q, c, settings), out)
            outputs.append(out)
        cases.append({"question": q, "context": c, "windows": windows, "outputs": outputs})

    q, c = QA_CASES[0]
    enc = qa_windows(tokenizer, q, c, 64, 32)
    tt = enc["token_type_ids"][0] if "token_type_ids" in tokenizer.model_input_names else None
    start, end = forward_logits(model, enc["input_ids"][0], tt, field="qa")
    max_seq_len = min(tokenizer.model_max_length, 384)
    return {
        "defaults": {
            "max_seq_len": max_seq_len,
            "doc_stride": min(max_seq_len // 2, 128),
            "max_answer_len": 15,
            "top_k": 1,
            "handle_impossible_answer": False,
        },
        "settings": QA_SETTINGS,
        "logits_check": {
            "question": q,
            "context": c,
            "input_ids": enc["input_ids"][0],
            "token_type_ids": enc["token_type_ids"][0],
            "start_logits": [float(v) for v in start.tolist()],
            "end_logits": [float(v) for v in end.tolist()],
        },
        "cases": cases,
    }


# ---------------------------------------------------------------- fixtures


def randomize(model, seed, task):
    mf.randomize_weights(model, seed)
    if task == "ner":
        with torch.no_grad():
            model.classifier.bias[0] += O_BIAS
    model.eval()


def choose_seed(model, tokenizer, task, family, base):
    for seed in range(base, base + SEED_ATTEMPTS):
        randomize(model, seed, task)
        if task == "mlm":
            ok = check_mlm(model, tokenizer, family)
        elif task == "ner":
            ok = check_ner(model, tokenizer)
        else:
            ok = check_qa(model, tokenizer)
        if ok:
            return seed
    raise RuntimeError(f"no informative seed in [{base}, {base + SEED_ATTEMPTS})")


def reload_matches(model, reloaded, tokenizer):
    """The saved folder gives back exactly the in-memory model."""
    for text in ["Hello, my dog is cute.", mf.LONG_TEXT]:
        enc = tokenizer(text, truncation=True, return_tensors="pt")
        with torch.no_grad():
            a, b = model(**enc), reloaded(**enc)
        for key in ("logits", "start_logits", "end_logits"):
            if key in a:
                assert torch.equal(a[key], b[key]), key


def same_by_path(target, task, expected):
    """pipeline(task, model=folder) (AutoModel / AutoTokenizer from the folder's
    config) answers the first case as recorded."""
    name = {"mlm": "fill-mask", "ner": "token-classification", "qa": "question-answering"}[task]
    pipe = pipeline(name, model=target, tokenizer=target, device="cpu")
    case = expected["cases"][0]
    if task == "mlm":
        assert_same(plain(pipe(case["text"])), case["outputs"]["5"])
    elif task == "ner":
        assert_same(plain(pipe(case["text"], aggregation_strategy="simple")), case["outputs"]["simple"])
    else:
        assert_same(plain(pipe(question=case["question"], context=case["context"])), case["outputs"][0])


def write_fixture(name, model_cls, config, make_tokenizer, task, family, base):
    model = model_cls(config)
    if task == "mlm":
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    seed = choose_seed(model, make_tokenizer(), task, family, base)
    randomize(model, seed, task)
    target = os.path.join(OUT_DIR, name)
    if os.path.isdir(target):
        shutil.rmtree(target)
    os.makedirs(target)
    model.save_pretrained(target, safe_serialization=True)
    make_tokenizer().save_pretrained(target)  # a fresh wrapper: no truncation state saved
    compact_json(os.path.join(target, "tokenizer.json"))

    reloaded = model_cls.from_pretrained(target).eval()
    tokenizer = type(make_tokenizer()).from_pretrained(target)
    reload_matches(model, reloaded, tokenizer)
    if task == "mlm":
        expected = mlm_expected(reloaded, tokenizer, family)
    elif task == "ner":
        expected = ner_expected(reloaded, tokenizer)
    else:
        expected = qa_expected(reloaded, tokenizer)
    same_by_path(target, task, expected)
    expected = {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "weight_seed": seed,
        **expected,
    }
    with open(os.path.join(target, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False, allow_nan=False)
        f.write("\n")
    print(f"wrote {os.path.relpath(target, mf.REPO_ROOT)} (seed {seed})")


def main():
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(1)
    os.makedirs(OUT_DIR, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wordpiece = mf.train_wordpiece()
        bpe = mf.train_byte_bpe()
        assert mf.train_byte_bpe().to_str() == bpe.to_str()
        assert mf.train_wordpiece().to_str() == wordpiece.to_str()

        def bert_tok():
            return mf.wrap_bert_tokenizer(wordpiece, BertTokenizerFast, tmp)

        def distil_tok():
            return mf.wrap_bert_tokenizer(wordpiece, DistilBertTokenizerFast, tmp)

        def roberta_tok():
            return mf.wrap_roberta_tokenizer(bpe, tmp)

        for family, tok in (("wordpiece", bert_tok()), ("bpe", roberta_tok())):
            vocab = tok.get_vocab()
            assert all(t in vocab for t in TARGETS_IN_VOCAB[family]), family
            assert "elephant" not in vocab

        wp = wordpiece.get_vocab_size()
        bp = bpe.get_vocab_size()
        fixtures = [
            ("bert-mlm", BertForMaskedLM, mf.bert_config(wp, 2, DEFAULT_ID2LABEL), bert_tok, "mlm", "wordpiece"),
            ("distilbert-mlm", DistilBertForMaskedLM, mf.distilbert_config(wp, 2, DEFAULT_ID2LABEL), distil_tok, "mlm", "wordpiece"),
            ("roberta-mlm", RobertaForMaskedLM, mf.roberta_config(bp, 2, DEFAULT_ID2LABEL), roberta_tok, "mlm", "bpe"),
            ("bert-ner", BertForTokenClassification, mf.bert_config(wp, 9, NER_ID2LABEL), bert_tok, "ner", "wordpiece"),
            ("distilbert-ner", DistilBertForTokenClassification, mf.distilbert_config(wp, 9, NER_ID2LABEL), distil_tok, "ner", "wordpiece"),
            ("roberta-ner", RobertaForTokenClassification, mf.roberta_config(bp, 9, NER_ID2LABEL), roberta_tok, "ner", "bpe"),
            ("bert-qa", BertForQuestionAnswering, mf.bert_config(wp, 2, DEFAULT_ID2LABEL), bert_tok, "qa", "wordpiece"),
            ("distilbert-qa", DistilBertForQuestionAnswering, mf.distilbert_config(wp, 2, DEFAULT_ID2LABEL), distil_tok, "qa", "wordpiece"),
            ("roberta-qa", RobertaForQuestionAnswering, mf.roberta_config(bp, 2, DEFAULT_ID2LABEL), roberta_tok, "qa", "bpe"),
        ]
        only = set(sys.argv[1:])
        for k, (name, cls, config, make_tok, task, family) in enumerate(fixtures, start=1):
            if only and name not in only:
                continue
            write_fixture(name, cls, config, make_tok, task, family, BASE_SEED + 1000 * k)
    return 0


if __name__ == "__main__":
    sys.exit(main())
