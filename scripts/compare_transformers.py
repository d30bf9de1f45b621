#!/usr/bin/env python3
"""Time llmx against transformers on the same checkpoints and inputs, side by side.

Workloads (issue 7):
    classify     distilbert-base shape, 2 labels, 256 varied lines
    embed        the real all-MiniLM-L6-v2 (scripts/fetch_test_models.sh), 256 varied lines
    generate     gpt2 124M shape, batch 1, 128 new tokens (min_new_tokens = max_new_tokens)
    t2t-greedy   t5-small shape, 16 lines x 32 new tokens, greedy
    t2t-beam4    t5-small shape, 16 lines x 32 new tokens, 4 beams

Random weights stand in for trained ones: speed depends on the weights only through how long
inputs and outputs are, and both are fixed here (generation runs exactly N new tokens).  The
checkpoints are written once with transformers' own save_pretrained into --models (the hub
layout).  Tokenizers: MiniLM's (bert-base-uncased's vocabulary) for distilbert, the real
GPT-2 BPE (tests/fixtures/gpt2-tiny) for gpt2, and the fixture Unigram tokenizer for T5 (a
small vocabulary, so lines are a little longer in tokens; both sides see the same ids).

transformers runs in this process (torch.inference_mode, torch's default threads = all
cores, model already loaded), and for each workload in each of the usual ways a user would
call it (pipeline or generate, one input at a time or batched); after a warm-up each way is
timed once and the fastest is kept.  llmx is timed as a whole process
(`target/release/llmx`, model load included), with its peak resident memory from
/usr/bin/time.  Its warm-up fills llmx's packed weight cache (a folder of this run's), which
later runs map instead of packing the weights again, as every run after a checkpoint's
first does; f32 is also timed with the cache off (LLMX_WEIGHT_CACHE=off), packing at every
load.  llmx decodes one greedy prompt speculatively (an int8 copy of the model drafts tokens
that the f32 model checks, so the tokens are the f32 model's own); generate is also timed
without the draft (--draft-tokens 0).  Then --runs rounds each time transformers' fastest way and every llmx variant once,
one after the other, so that both sides meet the machine in the same state (the speed of
this VM drifts by 20-40% within the hour); every figure is the median over the rounds.

Run from the repository root (versions: scripts/requirements.txt):
    cargo build --release && scripts/fetch_test_models.sh
    python scripts/compare_transformers.py            # all workloads, f32 and --quantize q8
    python scripts/compare_transformers.py --only generate --runs 5
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import transformers
from transformers import (
    AutoModel,
    AutoTokenizer,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    T5Config,
    T5ForConditionalGeneration,
    pipeline,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO_ROOT, "tests", "fixtures")
MINILM = os.path.join(REPO_ROOT, "target", "test-models", "all-MiniLM-L6-v2")

ENCODER_LINES = 256
T2T_LINES = 16
T2T_NEW_TOKENS = 32
GENERATE_NEW_TOKENS = 128
GENERATE_PROMPT = "The history of the city begins in the early years of the old kingdom, when"

WORDS = (
    "the of and to in is was for on that with as by at from his her it an were are which "
    "this be or has had not but their one all new first also after two more other been "
    "time people city world year years during most some when would there made only into "
    "over many later such about then them between both through government under high its "
    "state music school history national known team season film company university game "
    "group family river station church war series album village county population village "
    "house water small book music language market system public north south east west "
    "light dark quickly slowly happy strange ancient modern careful sudden quiet loud "
    "river mountain forest garden kitchen window morning evening winter summer journey "
    "question answer problem reason moment story letter friend teacher doctor student"
).split()


def varied_lines(count, seed):
    """Sentences of 3 to 150 words, most short, some long, like a real text file."""
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        roll = rng.random()
        n = rng.randint(3, 20) if roll < 0.6 else rng.randint(20, 60) if roll < 0.9 else rng.randint(60, 150)
        words = [rng.choice(WORDS) for _ in range(n)]
        words[0] = words[0].capitalize()
        lines.append(" ".join(words) + rng.choice([".", ".", "!", "?"]))
    return lines


def copy_tokenizer(src, dst, names, **settings):
    """Copy tokenizer files, then override entries of tokenizer_config.json."""
    for name in names:
        shutil.copy(os.path.join(src, name), os.path.join(dst, name))
    path = os.path.join(dst, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config.update(settings)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


def build_models(root):
    """Write the real-size random-weight checkpoints once; return their folders."""
    folders = {
        "distilbert": os.path.join(root, "distilbert-base-cls2"),
        "gpt2": os.path.join(root, "gpt2-124m"),
        "t5": os.path.join(root, "t5-small"),
        "minilm": MINILM,
    }
    if not os.path.isdir(MINILM):
        raise SystemExit(f"{MINILM} is missing: run scripts/fetch_test_models.sh first")
    torch.manual_seed(0)
    if not os.path.isdir(folders["distilbert"]):
        config = DistilBertConfig(num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"},
                                  label2id={"NEGATIVE": 0, "POSITIVE": 1})
        DistilBertForSequenceClassification(config).eval().save_pretrained(folders["distilbert"])
        copy_tokenizer(MINILM, folders["distilbert"],
                       ["tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"],
                       tokenizer_class="DistilBertTokenizer")
    if not os.path.isdir(folders["gpt2"]):
        GPT2LMHeadModel(GPT2Config()).eval().save_pretrained(folders["gpt2"])
        copy_tokenizer(os.path.join(FIXTURES, "gpt2-tiny"), folders["gpt2"],
                       ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                        "special_tokens_map.json"], model_max_length=1024)
    if not os.path.isdir(folders["t5"]):
        config = T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6,
                          num_heads=8, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
        T5ForConditionalGeneration(config).eval().save_pretrained(folders["t5"])
        copy_tokenizer(os.path.join(FIXTURES, "t5-v1_0"), folders["t5"],
                       ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"])
    return folders


def seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---- transformers, in-process -------------------------------------------------------------
# Each returns {way: a call that runs the whole workload that way}.


def inference(fn, *args, **kwargs):
    def call():
        with torch.inference_mode():
            return fn(*args, **kwargs)

    return call


def hf_classify(folder, lines):
    pipe = pipeline("text-classification", model=folder, device="cpu")
    return {f"pipeline batch_size={bs}": inference(pipe, lines, batch_size=bs) for bs in (1, 32)}


def hf_embed(folder, lines):
    """The model card's recipe: mean pooling over the mask, then L2 normalisation."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()

    def embed(batch_size):
        # sentence-transformers sorts by length so each batch pads little.
        order = sorted(range(len(lines)), key=lambda i: -len(lines[i]))
        out = [None] * len(lines)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer([lines[i] for i in idx], padding=True, truncation=True,
                            max_length=256, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            for row, i in enumerate(idx):
                out[i] = pooled[row].tolist()
        return out

    return {f"sorted batches of {bs}": inference(embed, bs) for bs in (1, 32)}


def hf_generate(folder):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = GPT2LMHeadModel.from_pretrained(folder).eval()

    def run():
        enc = tokenizer(GENERATE_PROMPT, return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=GENERATE_NEW_TOKENS,
                             min_new_tokens=GENERATE_NEW_TOKENS, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
        assert out.shape[1] - enc["input_ids"].shape[1] == GENERATE_NEW_TOKENS
        return out[0, enc["input_ids"].shape[1]:].tolist()

    return {"generate": inference(run)}


def hf_text2text(folder, lines, num_beams):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = T5ForConditionalGeneration.from_pretrained(folder).eval()
    settings = dict(max_new_tokens=T2T_NEW_TOKENS, min_new_tokens=T2T_NEW_TOKENS,
                    num_beams=num_beams, do_sample=False)

    def run(batch_size):
        texts = []
        for start in range(0, len(lines), batch_size):
            enc = tokenizer(lines[start : start + batch_size], padding=True, truncation=True,
                            return_tensors="pt")
            out = model.generate(**enc, **settings)
            texts += tokenizer.batch_decode(out, skip_special_tokens=True)
        return texts

    return {f"generate batch {bs}": inference(run, bs) for bs in (1, T2T_LINES)}


# ---- llmx, whole process ------------------------------------------------------------------


def llmx_once(binary, args, weight_cache):
    """Wall seconds and peak RSS (MiB) of one run."""
    env = dict(os.environ, LLMX_WEIGHT_CACHE=weight_cache)
    with tempfile.NamedTemporaryFile("r", suffix=".time") as rusage:
        command = ["/usr/bin/time", "-o", rusage.name, "-f", "%M", binary, *args]
        start = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"llmx {' '.join(args)} failed:\n{done.stderr}")
        return wall, int(rusage.read().split()[-1]) / 1024


def llmx_token_ids(binary, args, weight_cache):
    """The token ids of a one-prompt generate run."""
    env = dict(os.environ, LLMX_WEIGHT_CACHE=weight_cache)
    done = subprocess.run([binary, *args], capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout)["token_ids"]


def rounds(contenders, runs, warm=()):
    """Warms every contender up (but those named in `warm`), then times each once per round,
    in turn; returns the median seconds and the largest peak RSS (None for in-process runs)
    of each."""
    for name, run in contenders.items():
        if name not in warm:
            run()
    timed = {name: [] for name in contenders}
    for _ in range(runs):
        for name, run in contenders.items():
            timed[name].append(run())
    return {
        name: (statistics.median(wall for wall, _ in results),
               max((peak for _, peak in results if peak is not None), default=None))
        for name, results in timed.items()
    }


def weights_mib(folder):
    return os.path.getsize(os.path.join(folder, "model.safetensors")) / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llmx", default=os.path.join(REPO_ROOT, "target", "release", "llmx"))
    parser.add_argument("--models", default=os.path.join(REPO_ROOT, "target", "bench-models"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", action="append", help="run only this workload (repeatable)")
    parser.add_argument("--no-transformers", action="store_true", help="time llmx only")
    parser.add_argument("--no-quantize", action="store_true", help="skip the --quantize q8 runs")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    if not os.access(args.llmx, os.X_OK):
        raise SystemExit(f"{args.llmx} is missing: run `cargo build --release` first")
    folders = build_models(args.models)
    work = tempfile.mkdtemp(prefix="llmx-compare-")
    lines = varied_lines(ENCODER_LINES, seed=1)
    t2t_lines = varied_lines(T2T_LINES, seed=2)
    for name, content in (("lines.txt", lines), ("t2t.txt", t2t_lines)):
        with open(os.path.join(work, name), "w", encoding="utf-8") as f:
            f.write("\n".join(content) + "\n")
    lines_file, t2t_file = os.path.join(work, "lines.txt"), os.path.join(work, "t2t.txt")
    cache = os.path.join(work, "packed")

    t2t_args = ["--max-new-tokens", str(T2T_NEW_TOKENS), "--min-new-tokens", str(T2T_NEW_TOKENS)]
    workloads = [
        ("classify", "distilbert", lambda: hf_classify(folders["distilbert"], lines),
         ["classify", "--input", lines_file, "--json"]),
        ("embed", "minilm", lambda: hf_embed(folders["minilm"], lines),
         ["embed", "--input", lines_file, "--json"]),
        ("generate", "gpt2", lambda: hf_generate(folders["gpt2"]),
         ["generate", "--greedy", "--max-new-tokens", str(GENERATE_NEW_TOKENS), "--min-new-tokens",
          str(GENERATE_NEW_TOKENS), "--json", GENERATE_PROMPT]),
        ("t2t-greedy", "t5", lambda: hf_text2text(folders["t5"], t2t_lines, 1),
         ["text2text", "--num-beams", "1", *t2t_args, "--input", t2t_file, "--json"]),
        ("t2t-beam4", "t5", lambda: hf_text2text(folders["t5"], t2t_lines, 4),
         ["text2text", "--num-beams", "4", *t2t_args, "--input", t2t_file, "--json"]),
    ]

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers "
          f"{transformers.__version__}; llmx: {args.llmx}; median of {args.runs} rounds\n")
    results = []
    for name, model, hf, llmx_args in workloads:
        if args.only and name not in args.only:
            continue
        folder = folders[model]
        row = {"workload": name, "weights_mib": weights_mib(folder)}
        common = llmx_args + ["--model", folder, "--offline", "--quiet"]
        contenders = {
            "llmx": lambda: llmx_once(args.llmx, common, cache),
            "packing": lambda: llmx_once(args.llmx, common, "off"),
        }
        if name == "generate":
            contenders["plain"] = lambda: llmx_once(args.llmx, common + ["--draft-tokens", "0"], cache)
        if not args.no_quantize:
            contenders["q8"] = lambda: llmx_once(args.llmx, common + ["--quantize", "q8"], cache)
        if not args.no_transformers:
            ways = hf()
            for way in ways.values():
                way()  # warm-up: caches, allocator, lazy init
            row["transformers_all"] = {way: seconds(run) for way, run in ways.items()}
            best = min(row["transformers_all"], key=row["transformers_all"].get)
            row["transformers_way"] = best
            contenders["transformers"] = lambda: (seconds(ways[best]), None)
        timed = rounds(contenders, args.runs, warm={"transformers"})
        row["llmx_s"], row["llmx_peak_mib"] = timed["llmx"]
        row["packing_s"], _ = timed["packing"]
        if "plain" in timed:
            row["plain_s"], _ = timed["plain"]
        if "q8" in timed:
            row["q8_s"], row["q8_peak_mib"] = timed["q8"]
        if "transformers" in timed:
            row["transformers_s"], _ = timed["transformers"]
        if name == "generate":
            # The draft only proposes: the tokens must be those of plain f32 decoding.
            drafted = llmx_token_ids(args.llmx, common, cache)
            row["draft_keeps_tokens"] = drafted == llmx_token_ids(args.llmx, common + ["--draft-tokens", "0"], cache)
            if "transformers" in timed:
                row["transformers_tokens"] = drafted == ways[row["transformers_way"]]()
        results.append(row)
        print_row(row)

    if not args.only or "cold-start" in args.only:
        one = ["classify", "--model", folders["distilbert"], "--offline", "--quiet", "Hello, my dog is cute"]
        timed = rounds({"cold": lambda: llmx_once(args.llmx, one, cache),
                        "packing": lambda: llmx_once(args.llmx, one, "off")}, max(args.runs, 5))
        (cold, peak), (packing, _) = timed["cold"], timed["packing"]
        results.append({"workload": "cold-start", "llmx_s": cold, "llmx_peak_mib": peak, "packing_s": packing,
                        "weights_mib": weights_mib(folders["distilbert"])})
        print(f"cold start (classify, one line, distilbert-base on disk): {cold:.3f} s, peak {peak:.0f} MiB; "
              f"packing at load (no weight cache): {packing:.3f} s")

    print()
    print_table(results)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    shutil.rmtree(work)


def print_row(row):
    parts = [f"{row['workload']}: llmx {row['llmx_s']:.2f} s", f"no weight cache {row['packing_s']:.2f} s"]
    if "plain_s" in row:
        parts.append(f"no draft {row['plain_s']:.2f} s")
    if "q8_s" in row:
        parts.append(f"q8 {row['q8_s']:.2f} s")
    if "draft_keeps_tokens" in row:
        parts.append(f"tokens with the draft == without: {row['draft_keeps_tokens']}")
    if "transformers_tokens" in row:
        parts.append(f"== transformers' greedy tokens: {row['transformers_tokens']}")
    if "transformers_s" in row:
        detail = ", ".join(f"{k} {v:.2f} s" for k, v in row["transformers_all"].items())
        parts.append(f"transformers {row['transformers_s']:.2f} s (fastest way; one run each: {detail})")
    print("; ".join(parts), flush=True)


def print_table(results):
    header = ("| workload | transformers s (fastest way) | llmx f32 s | ratio | llmx q8 s | q8 ratio "
              "| f32 without the weight cache s (ratio) | f32 without a draft s (ratio) "
              "| llmx peak RSS f32 / q8 MiB | weights MiB |")
    print(header)
    print("|" + "---|" * header.count(" |"))
    for row in results:
        if row["workload"] == "cold-start":
            continue
        hf = row.get("transformers_s")
        q8 = row.get("q8_s")
        cells = [
            row["workload"],
            f"{hf:.2f} ({row['transformers_way']})" if hf else "-",
            f"{row['llmx_s']:.2f}",
            f"{hf / row['llmx_s']:.2f}x" if hf else "-",
            f"{q8:.2f}" if q8 else "-",
            f"{hf / q8:.2f}x" if hf and q8 else "-",
            f"{row['packing_s']:.2f}" + (f" ({hf / row['packing_s']:.2f}x)" if hf else ""),
            (f"{row['plain_s']:.2f}" + (f" ({hf / row['plain_s']:.2f}x)" if hf else "")) if "plain_s" in row else "-",
            f"{row['llmx_peak_mib']:.0f} / {row['q8_peak_mib']:.0f}" if q8 else f"{row['llmx_peak_mib']:.0f}",
            f"{row['weights_mib']:.0f}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
