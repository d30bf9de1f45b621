//! Runs the built `llmx` binary: JSON records, human output, exit codes, stderr messages, and
//! model resolution from local folders and an offline Hugging Face cache built here from the
//! fixtures. Nothing here touches the network.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use candle_core::DType;
use llmx::models::Quantization;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// `llmx` with an empty, offline hub cache, so no test can reach the network, and a
/// packed weight cache of its own beside it.
fn llmx(cache: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_llmx"));
    command
        .env("HF_HUB_CACHE", cache)
        .env("HF_HUB_OFFLINE", "1")
        .env("LLMX_WEIGHT_CACHE", cache.join(".llmx-packed"))
        .env_remove("HF_HOME")
        .stdin(Stdio::null());
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("llmx runs")
}

fn run_with_stdin(command: &mut Command, stdin: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("llmx starts");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn json_lines(output: &Output) -> Vec<Value> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The label and score transformers' pipeline ranks first for `text` on a fixture.
fn transformers_top(name: &str, text: &str) -> (String, f64) {
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(name).join("expected.json")).unwrap(),
    )
    .unwrap();
    let case = expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|case| case["text"] == text)
        .unwrap();
    let top = &case["pipeline"][0];
    (
        top["label"].as_str().unwrap().to_string(),
        top["score"].as_f64().unwrap(),
    )
}

/// A copy of a fixture folder that a test may break.
fn copy_fixture(name: &str, into: &Path) -> PathBuf {
    let dir = into.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    dir
}

/// A huggingface_hub cache tree (blobs, refs/main, snapshots/<commit>) holding a fixture.
fn cache_with(cache: &Path, repo_id: &str, name: &str, commit: &str) {
    let repo = cache.join(format!("models--{}", repo_id.replace('/', "--")));
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for (i, entry) in std::fs::read_dir(fixture(name)).unwrap().enumerate() {
        let entry = entry.unwrap();
        let blob = repo.join("blobs").join(format!("blob{i:04}"));
        std::fs::copy(entry.path(), &blob).unwrap();
        let link = snapshot.join(entry.file_name());
        #[cfg(unix)]
        std::os::unix::fs::symlink(
            Path::new("../../blobs").join(blob.file_name().unwrap()),
            &link,
        )
        .unwrap();
        #[cfg(not(unix))]
        std::fs::copy(&blob, &link).unwrap();
    }
}

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[test]
fn classify_json_matches_transformers() {
    let cache = tempfile::tempdir().unwrap();
    let texts = ["Hello, my dog is cute", "I hate this movie."];
    let output = run(llmx(cache.path())
        .args(["classify", "--json", "--model"])
        .arg(fixture("distilbert-cls2"))
        .args(texts));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let records = json_lines(&output);
    assert_eq!(records.len(), 2);
    for (index, (record, text)) in records.iter().zip(texts).enumerate() {
        let (label, score) = transformers_top("distilbert-cls2", text);
        assert_eq!(record["index"], index);
        assert_eq!(record["text"], text);
        assert_eq!(record["label"], label.as_str());
        assert!((record["score"].as_f64().unwrap() - score).abs() < 1e-4);
        let labels = record["labels"].as_array().unwrap();
        assert_eq!(labels.len(), 1, "top-k defaults to 1");
        assert_eq!(labels[0]["label"], label.as_str());
    }
}

#[test]
fn top_k_and_all_list_labels_best_first() {
    let cache = tempfile::tempdir().unwrap();
    for (flags, count) in [
        (&["--top-k", "2"][..], 2),
        (&["--all"][..], 3),
        (&["--top-k", "9"][..], 3),
    ] {
        let output = run(llmx(cache.path())
            .args(["classify", "--json", "--model"])
            .arg(fixture("bert-cls3"))
            .args(flags)
            .arg("Hello, my dog is cute"));
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        let labels = json_lines(&output)[0]["labels"].as_array().unwrap().clone();
        assert_eq!(labels.len(), count, "{flags:?}");
        let scores: Vec<f64> = labels
            .iter()
            .map(|l| l["score"].as_f64().unwrap())
            .collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    }
}

#[test]
fn human_output_is_one_line_per_input() {
    let cache = tempfile::tempdir().unwrap();
    let output = run(llmx(cache.path())
        .args(["classify", "--model"])
        .arg(fixture("distilbert-cls2"))
        .args(["Hello, my dog is cute", "I hate this movie."]));
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2);
    let (label, _) = transformers_top("distilbert-cls2", "Hello, my dog is cute");
    assert!(lines[0].starts_with(&format!("{label}\t")), "{}", lines[0]);
}

#[test]
fn a_bad_line_fails_alone_with_exit_1() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("lines.txt");
    std::fs::write(
        &input,
        b"Hello, my dog is cute\nbad \xff\xfe byte\n\nI hate this movie.\n",
    )
    .unwrap();
    let output = run(llmx(cache.path())
        .args(["classify", "--json", "--model"])
        .arg(fixture("roberta-cls3"))
        .arg("--input")
        .arg(&input));
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let records = json_lines(&output);
    assert_eq!(records.len(), 4);
    let indexes: Vec<u64> = records
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [0, 1, 2, 3]);
    assert!(records[1]["error"].as_str().unwrap().contains("UTF-8"));
    assert!(records[1].get("label").is_none());
    assert_eq!(
        records[2]["text"], "",
        "an empty line is a record like any other"
    );
    assert!(records[3]["label"].is_string());
}

#[test]
fn stdin_is_read_when_no_text_is_given() {
    let cache = tempfile::tempdir().unwrap();
    let output = run_with_stdin(
        llmx(cache.path())
            .args(["classify", "--json", "--batch-size", "2", "--model"])
            .arg(fixture("bert-cls3")),
        b"one\ntwo\nthree\n",
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let texts: Vec<String> = json_lines(&output)
        .iter()
        .map(|r| r["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts, ["one", "two", "three"]);
}

#[test]
fn over_long_input_is_truncated_with_a_warning() {
    let cache = tempfile::tempdir().unwrap();
    let long = "the cat sat on the mat ".repeat(100);
    let output = run(llmx(cache.path())
        .args(["classify", "--json", "--model"])
        .arg(fixture("bert-cls3"))
        .arg(&long));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stderr(&output).contains("truncated"), "{}", stderr(&output));
    let quiet = run(llmx(cache.path())
        .args(["classify", "--quiet", "--model"])
        .arg(fixture("bert-cls3"))
        .arg(&long));
    assert!(quiet.stderr.is_empty(), "--quiet silences warnings");
}

#[test]
fn resolves_hub_ids_from_the_offline_cache() {
    let cache = tempfile::tempdir().unwrap();
    cache_with(
        cache.path(),
        "test-org/tiny-distilbert",
        "distilbert-cls2",
        COMMIT,
    );
    let (label, _) = transformers_top("distilbert-cls2", "Hello, my dog is cute");

    // HF_HUB_CACHE with --offline, by branch and by commit.
    for revision in ["main", COMMIT] {
        let output = run(llmx(cache.path())
            .env_remove("HF_HUB_OFFLINE")
            .args(["classify", "--json", "--offline", "--revision", revision])
            .args([
                "--model",
                "test-org/tiny-distilbert",
                "Hello, my dog is cute",
            ]));
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        assert_eq!(json_lines(&output)[0]["label"], label.as_str());
    }

    // HF_HOME/hub with HF_HUB_OFFLINE=1.
    let home = tempfile::tempdir().unwrap();
    cache_with(
        &home.path().join("hub"),
        "test-org/tiny-distilbert",
        "distilbert-cls2",
        COMMIT,
    );
    let output = run(llmx(cache.path())
        .env_remove("HF_HUB_CACHE")
        .env("HF_HOME", home.path())
        .args([
            "classify",
            "--json",
            "--model",
            "test-org/tiny-distilbert",
            "Hello, my dog is cute",
        ]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

/// A hub endpoint that refuses connections: "no network" without depending on the network.
const UNREACHABLE_HUB: &str = "http://127.0.0.1:9";

#[test]
fn an_unreachable_hub_falls_back_to_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    cache_with(cache.path(), "test-org/tiny-bert", "bert-cls3", COMMIT);
    let output = run(llmx(cache.path())
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_ENDPOINT", UNREACHABLE_HUB)
        .args([
            "classify",
            "--json",
            "--model",
            "test-org/tiny-bert",
            "Hello, my dog is cute",
        ]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let (label, _) = transformers_top("bert-cls3", "Hello, my dog is cute");
    assert_eq!(json_lines(&output)[0]["label"], label.as_str());
}

#[test]
fn an_unreachable_hub_points_to_local_folders_and_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let output = run(llmx(cache.path())
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_ENDPOINT", UNREACHABLE_HUB)
        .args(["classify", "Hello, my dog is cute"]));
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("cannot be reached"), "{message}");
    assert!(message.contains("--model DIR"), "{message}");
    assert!(message.contains("--offline"), "{message}");
}

#[test]
fn offline_cache_miss_names_the_file_and_the_fix() {
    let cache = tempfile::tempdir().unwrap();
    let output = run(llmx(cache.path()).args(["classify", "--model", "test-org/absent", "hi"]));
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("config.json"), "{message}");
    assert!(
        message.contains("llmx download test-org/absent"),
        "{message}"
    );
    assert!(message.contains("--model DIR"), "{message}");

    // A cached config without weights: the weights file is named.
    let dir = tempfile::tempdir().unwrap();
    let partial = copy_fixture("bert-cls3", dir.path());
    std::fs::remove_file(partial.join("model.safetensors")).unwrap();
    let repo = cache.path().join("models--test-org--partial");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    std::fs::create_dir_all(repo.join("snapshots")).unwrap();
    std::fs::rename(&partial, repo.join("snapshots").join(COMMIT)).unwrap();
    let output = run(llmx(cache.path()).args(["classify", "--model", "test-org/partial", "hi"]));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("model.safetensors"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn sharded_weights_load() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sharded = copy_fixture("bert-cls3", dir.path());
    let tensors = candle_core::safetensors::load(
        sharded.join("model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    std::fs::remove_file(sharded.join("model.safetensors")).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (shard, chunk) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", shard + 1);
        let part: std::collections::HashMap<String, candle_core::Tensor> = chunk
            .iter()
            .map(|&n| (n.clone(), tensors[n].clone()))
            .collect();
        candle_core::safetensors::save(&part, sharded.join(&file)).unwrap();
        for name in chunk {
            weight_map.insert((*name).clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let text = "Hello, my dog is cute";
    let output = run(llmx(cache.path())
        .args(["classify", "--json", "--model"])
        .arg(&sharded)
        .arg(text));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let (label, score) = transformers_top("bert-cls3", text);
    let record = &json_lines(&output)[0];
    assert_eq!(record["label"], label.as_str());
    assert!((record["score"].as_f64().unwrap() - score).abs() < 1e-4);
}

/// Breaks a copied checkpoint folder.
type Damage = fn(&Path);

/// Each broken checkpoint is one clear error (exit 2) that names the problem.
#[test]
fn broken_checkpoints_fail_clearly() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Damage, &str); 7] = [
        (
            "truncated weights",
            (|d: &Path| {
                let weights = std::fs::read(d.join("model.safetensors")).unwrap();
                std::fs::write(d.join("model.safetensors"), &weights[..weights.len() / 2]).unwrap();
            }),
            "truncated or corrupt",
        ),
        (
            "malformed config",
            (|d: &Path| std::fs::write(d.join("config.json"), "{\"architectures\": [").unwrap()),
            "not valid JSON",
        ),
        (
            "missing tokenizer",
            (|d: &Path| std::fs::remove_file(d.join("tokenizer.json")).unwrap()),
            "tokenizer.json",
        ),
        (
            "pickle weights only",
            (|d: &Path| {
                std::fs::rename(d.join("model.safetensors"), d.join("pytorch_model.bin")).unwrap()
            }),
            "pytorch_model.bin",
        ),
        (
            "unsupported architecture",
            (|d: &Path| {
                std::fs::write(
                    d.join("config.json"),
                    r#"{"architectures":["MambaForSequenceClassification"],"model_type":"mamba"}"#,
                )
                .unwrap()
            }),
            "BertForSequenceClassification",
        ),
        (
            "a text-to-text checkpoint",
            (|d: &Path| {
                std::fs::write(
                    d.join("config.json"),
                    r#"{"architectures":["T5ForConditionalGeneration"],"model_type":"t5"}"#,
                )
                .unwrap()
            }),
            "text2text",
        ),
        (
            "a wrong head size",
            (|d: &Path| {
                let path = d.join("config.json");
                let mut config: Value =
                    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                config["id2label"] =
                    serde_json::json!({"0": "a", "1": "b", "2": "c", "3": "d", "4": "e"});
                std::fs::write(&path, config.to_string()).unwrap();
            }),
            "classifier",
        ),
    ];
    for (i, (what, damage, needle)) in cases.into_iter().enumerate() {
        let broken = copy_fixture("bert-cls3", &dir.path().join(i.to_string()));
        damage(&broken);
        let output = run(llmx(cache.path())
            .args(["classify", "--model"])
            .arg(&broken)
            .arg("hi"));
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{what}: {message}");
        assert!(message.contains(needle), "{what}: {message}");
        assert!(!message.contains("panicked"), "{what}: {message}");
        assert!(output.stdout.is_empty(), "{what}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let cache = tempfile::tempdir().unwrap();
    let model = fixture("bert-cls3");
    for args in [
        vec!["classify", "--top-k", "0", "hi"],
        vec!["classify", "--device", "gpu", "hi"],
        vec!["classify", "--batch-size", "0", "hi"],
        vec!["classify", "--bogus", "hi"],
    ] {
        let output = run(llmx(cache.path()).args(&args).arg("--model").arg(&model));
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    let missing = run(llmx(cache.path()).args(["classify", "--model", "./no/such/dir", "hi"]));
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("no such model folder"),
        "{}",
        stderr(&missing)
    );
}

/// Packed weights written by a first load and mapped by later ones give the records that
/// packing at every load gives, in f32 and q8; a damaged cache file is packed again.
#[test]
fn the_packed_weight_cache_changes_no_output() {
    let cache = tempfile::tempdir().unwrap();
    let packed = cache.path().join("packed");
    let jobs: [(&str, &str, &[&str]); 3] = [
        (
            "gpt2-tiny",
            "generate",
            &["--greedy", "--max-new-tokens", "6", PROMPT],
        ),
        (
            "t5-v1_0",
            "text2text",
            &["--num-beams", "2", "--max-new-tokens", "5", "hello"],
        ),
        (
            "bert-cls3",
            "classify",
            &["hi there", "a longer sentence about dogs"],
        ),
    ];
    let run_job = |(model, command, args): (&str, &str, &[&str]), quantize, weight_cache: &Path| {
        let output = run(llmx(cache.path())
            .env("LLMX_WEIGHT_CACHE", weight_cache)
            .args([command, "--json", "--quantize", quantize, "--model"])
            .arg(fixture(model))
            .args(args));
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        String::from_utf8(output.stdout).unwrap()
    };
    let runs_all = |weight_cache: &Path| {
        ["none", "q8"]
            .iter()
            .flat_map(|quantize| jobs.iter().map(|&job| run_job(job, quantize, weight_cache)))
            .collect::<Vec<_>>()
    };
    let packing = runs_all(Path::new("off"));
    assert_eq!(runs_all(&packed), packing, "first load, writing the cache");
    assert_eq!(runs_all(&packed), packing, "later load, mapping it");

    // One file per model and layout, where this CPU has the packed kernels.
    let files: Vec<PathBuf> = std::fs::read_dir(&packed)
        .map(|dir| dir.map(|entry| entry.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(files
        .iter()
        .all(|f| f.extension().is_some_and(|e| e == "llmx-packed")));
    let cpu = candle_core::Device::Cpu;
    let f32_kind = llmx::models::packed_layout(Quantization::None, DType::F32, &cpu);
    let q8_kind = llmx::models::packed_layout(Quantization::Q8, DType::F32, &cpu);
    if f32_kind.is_some() && q8_kind.is_some() {
        assert_eq!(files.len(), 6, "{files:?}");
    }
    for file in &files {
        let length = std::fs::metadata(file).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(file)
            .unwrap()
            .set_len(length / 2)
            .unwrap();
    }
    assert_eq!(runs_all(&packed), packing, "damaged files");
    for file in &files {
        assert!(
            std::fs::metadata(file).unwrap().len() > 0,
            "{file:?} was rewritten"
        );
    }
}

/// `--quantize q8` serves every model command; it computes in f32.
#[test]
fn quantize_q8_runs_every_kind_of_model_and_refuses_half_precision() {
    let cache = tempfile::tempdir().unwrap();
    let generated = run(llmx(cache.path())
        .args(["generate", "--json", "--greedy", "--quantize", "q8"])
        .args(["--max-new-tokens", "5", "--min-new-tokens", "5", "--model"])
        .arg(fixture("gpt2-tiny"))
        .arg(PROMPT));
    assert_eq!(generated.status.code(), Some(0), "{}", stderr(&generated));
    let record = &json_lines(&generated)[0];
    assert_eq!(record["token_ids"].as_array().unwrap().len(), 5);

    let translated = run(llmx(cache.path())
        .args([
            "text2text",
            "--json",
            "--quantize",
            "q8",
            "--max-new-tokens",
            "4",
            "--model",
        ])
        .arg(fixture("t5-v1_1"))
        .arg("hello world"));
    assert_eq!(translated.status.code(), Some(0), "{}", stderr(&translated));

    // Close to f32, not equal: every weight and activation is rounded to 8 bits.
    let classify = |mode: &str| {
        let output = run(llmx(cache.path())
            .args(["classify", "--json", "--quantize", mode, "--model"])
            .arg(fixture("bert-cls3"))
            .args(["hi there", "a longer sentence about dogs"]));
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        json_lines(&output)
    };
    for (q8, f32) in classify("q8").iter().zip(classify("none")) {
        assert_eq!(q8["label"], f32["label"]);
        let (a, b) = (
            q8["score"].as_f64().unwrap(),
            f32["score"].as_f64().unwrap(),
        );
        assert!(a != b && (a - b).abs() < 0.05, "q8 {a} vs f32 {b}");
    }

    let half = run(llmx(cache.path())
        .args(["generate", "--quantize", "q8", "--dtype", "f16", "--model"])
        .arg(fixture("gpt2-tiny"))
        .arg(PROMPT));
    assert_eq!(half.status.code(), Some(2), "{}", stderr(&half));
    assert!(
        stderr(&half).contains("--quantize q8 computes in f32"),
        "{}",
        stderr(&half)
    );
}

#[cfg(not(feature = "cuda"))]
#[test]
fn a_device_this_build_lacks_names_the_feature() {
    let cache = tempfile::tempdir().unwrap();
    let output = run(llmx(cache.path())
        .args(["classify", "--device", "cuda", "--model"])
        .arg(fixture("bert-cls3"))
        .arg("hi"));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--features cuda"),
        "{}",
        stderr(&output)
    );
}

/// transformers' greedy continuation of `prompt` on the GPT-2 fixture.
fn transformers_greedy(prompt: &str) -> (Vec<u64>, String) {
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("gpt2-tiny").join("expected.json")).unwrap(),
    )
    .unwrap();
    let case = expected["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .find(|case| case["prompt"] == prompt && case["repetition_penalty"].is_null())
        .unwrap();
    let ids = case["new_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_u64().unwrap())
        .collect();
    (ids, case["completion"].as_str().unwrap().to_string())
}

const PROMPT: &str = "Hello, my dog is cute and";

#[test]
fn generate_greedy_matches_transformers() {
    let cache = tempfile::tempdir().unwrap();
    let (ids, completion) = transformers_greedy(PROMPT);
    let output = run(llmx(cache.path())
        .args([
            "generate",
            "--json",
            "--greedy",
            "--max-new-tokens",
            "20",
            "--model",
        ])
        .arg(fixture("gpt2-tiny"))
        .arg(PROMPT));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let record = &json_lines(&output)[0];
    assert_eq!(record["index"], 0);
    assert_eq!(record["prompt"], PROMPT);
    assert_eq!(record["completion"], completion.as_str());
    let got: Vec<u64> = record["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_u64().unwrap())
        .collect();
    assert_eq!(got, ids);
    assert_eq!(record["finish_reason"], "length");

    // Human output is the prompt and its continuation, streamed or not.
    for stream in [false, true] {
        let mut command = llmx(cache.path());
        command
            .args(["generate", "--greedy", "--max-new-tokens", "20", "--model"])
            .arg(fixture("gpt2-tiny"))
            .arg(PROMPT);
        if stream {
            command.arg("--stream");
        }
        let output = run(&mut command);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            format!("{PROMPT}{completion}\n")
        );
    }
}

#[test]
fn generate_stop_strings_and_seeds() {
    let cache = tempfile::tempdir().unwrap();
    let (_, completion) = transformers_greedy(PROMPT);
    let stop = completion.split_whitespace().nth(2).unwrap();
    let output = run(llmx(cache.path())
        .args([
            "generate",
            "--json",
            "--greedy",
            "--max-new-tokens",
            "20",
            "--stop",
            stop,
            "--model",
        ])
        .arg(fixture("gpt2-tiny"))
        .arg(PROMPT));
    let record = &json_lines(&output)[0];
    assert_eq!(record["finish_reason"], "stop");
    assert_eq!(
        record["completion"],
        &completion[..completion.find(stop).unwrap()]
    );

    let sampled = || {
        let output = run(llmx(cache.path())
            .args([
                "generate",
                "--json",
                "--seed",
                "11",
                "--temperature",
                "0.9",
                "--max-new-tokens",
                "12",
                "--model",
            ])
            .arg(fixture("gpt2-tiny"))
            .args([PROMPT, "Once upon a time"]));
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        json_lines(&output)
    };
    assert_eq!(sampled(), sampled(), "a seeded run repeats itself");
}

#[test]
fn generate_rejects_bad_settings_and_wrong_models() {
    let cache = tempfile::tempdir().unwrap();
    for flags in [
        ["--top-p", "0"],
        ["--temperature", "-1"],
        ["--repetition-penalty", "0"],
    ] {
        let output = run(llmx(cache.path())
            .arg("generate")
            .args(flags)
            .arg("--model")
            .arg(fixture("gpt2-tiny"))
            .arg("hi"));
        assert_eq!(
            output.status.code(),
            Some(2),
            "{flags:?}: {}",
            stderr(&output)
        );
    }
    let output = run(llmx(cache.path())
        .args(["generate", "--model"])
        .arg(fixture("bert-cls3"))
        .arg("hi"));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("llmx classify"),
        "{}",
        stderr(&output)
    );
}

/// Lines for batch tests: varied, with an empty line and a non-UTF-8 one.
fn batch_input(dir: &Path, lines: usize) -> PathBuf {
    let mut content = Vec::new();
    for i in 0..lines {
        match i % 10 {
            3 => content.extend_from_slice(b""),
            7 => content.extend_from_slice(b"bad \xff line"),
            9 => content.extend_from_slice("the movie was great ".repeat(40).as_bytes()),
            _ => content.extend_from_slice(
                format!("line {i}: I hate this movie, my dog is cute").as_bytes(),
            ),
        }
        content.push(b'\n');
    }
    let path = dir.join("input.txt");
    std::fs::write(&path, content).unwrap();
    path
}

fn classify_file(cache: &Path, input: &Path, extra: &[&str]) -> Output {
    run(llmx(cache)
        .args(["classify", "--json", "--batch-size", "4", "--model"])
        .arg(fixture("bert-cls3"))
        .arg("--input")
        .arg(input)
        .args(extra))
}

#[test]
fn a_batch_file_gives_one_ordered_record_per_line() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = batch_input(dir.path(), 30);
    let output = classify_file(cache.path(), &input, &[]);
    assert_eq!(output.status.code(), Some(1), "the bad lines fail");
    let records = json_lines(&output);
    assert_eq!(records.len(), 30);
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record["index"], i);
        assert_eq!(record.get("error").is_some(), i % 10 == 7, "{record}");
    }
    let message = stderr(&output);
    assert_eq!(
        message.matches("was truncated").count(),
        1,
        "one warning, then a count: {message}"
    );
    assert!(message.contains("3 inputs were truncated"), "{message}");
    assert!(
        message.contains("30 records, 3 failed"),
        "the closing summary: {message}"
    );
}

#[test]
fn shards_cover_the_file_exactly_once() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = batch_input(dir.path(), 25);
    let whole = json_lines(&classify_file(cache.path(), &input, &[]));
    let mut merged: Vec<Value> = (0..3)
        .flat_map(|k| {
            json_lines(&classify_file(
                cache.path(),
                &input,
                &["--shard", &format!("{k}/3")],
            ))
        })
        .collect();
    merged.sort_by_key(|r| r["index"].as_u64().unwrap());
    assert_eq!(merged.len(), whole.len());
    for (shard, straight) in merged.iter().zip(&whole) {
        // Shards batch other inputs together, which moves scores in the last float digits.
        assert_eq!(shard["index"], straight["index"]);
        assert_eq!(shard["label"], straight["label"]);
        assert_eq!(shard["error"], straight["error"]);
        if let (Some(a), Some(b)) = (shard["score"].as_f64(), straight["score"].as_f64()) {
            assert!((a - b).abs() < 1e-5, "{shard} vs {straight}");
        }
    }
}

#[test]
fn a_resumed_output_equals_a_straight_run() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = batch_input(dir.path(), 40);
    let straight = dir.path().join("straight.jsonl");
    classify_file(
        cache.path(),
        &input,
        &["--output", straight.to_str().unwrap()],
    );
    let expected = std::fs::read_to_string(&straight).unwrap();
    assert_eq!(expected.lines().count(), 40);

    // A run killed mid-record: 17 whole records and half of the next.
    let partial = dir.path().join("partial.jsonl");
    let lines: Vec<&str> = expected.lines().collect();
    let mut killed = lines[..17].join("\n");
    killed.push('\n');
    killed.push_str(&lines[17][..lines[17].len() / 2]);
    std::fs::write(&partial, killed).unwrap();
    let resumed = classify_file(
        cache.path(),
        &input,
        &["--output", partial.to_str().unwrap(), "--resume"],
    );
    assert!(resumed.stdout.is_empty(), "records go to the file");
    assert_eq!(std::fs::read_to_string(&partial).unwrap(), expected);

    // A real interrupt: SIGTERM mid-run leaves whole records, and --resume completes them.
    let big = batch_input(dir.path(), 3000);
    let interrupted = dir.path().join("interrupted.jsonl");
    let mut child = llmx(cache.path())
        .args(["classify", "--json", "--batch-size", "4", "--model"])
        .arg(fixture("bert-cls3"))
        .arg("--input")
        .arg(&big)
        .arg("--output")
        .arg(&interrupted)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while std::fs::metadata(&interrupted).map_or(0, |m| m.len()) == 0 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let written = std::fs::read_to_string(&interrupted).unwrap();
    assert!(written.ends_with('\n'), "only whole records");
    if status.code() == Some(130) {
        assert!(written.lines().count() < 3000);
    }
    classify_file(
        cache.path(),
        &big,
        &["--output", interrupted.to_str().unwrap(), "--resume"],
    );
    let straight_big = dir.path().join("straight-big.jsonl");
    classify_file(
        cache.path(),
        &big,
        &["--output", straight_big.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(&interrupted).unwrap(),
        std::fs::read_to_string(&straight_big).unwrap()
    );
}

#[test]
fn jsonl_input_takes_the_named_field() {
    let cache = tempfile::tempdir().unwrap();
    let output = run_with_stdin(
        llmx(cache.path())
            .args(["classify", "--json", "--field", "review", "--model"])
            .arg(fixture("bert-cls3")),
        b"{\"review\": \"Hello, my dog is cute\"}\n{\"other\": 1}\nnot json\n",
    );
    assert_eq!(output.status.code(), Some(1));
    let records = json_lines(&output);
    assert_eq!(records[0]["text"], "Hello, my dog is cute");
    assert!(records[1]["error"]
        .as_str()
        .unwrap()
        .contains("no field `review`"));
    assert!(records[2]["error"].as_str().unwrap().contains("JSON"));
}

#[test]
fn generate_over_a_file() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("prompts.txt");
    std::fs::write(&input, format!("{PROMPT}\n\nOnce upon a time\n")).unwrap();
    let output = run(llmx(cache.path())
        .args([
            "generate",
            "--json",
            "--greedy",
            "--max-new-tokens",
            "20",
            "--model",
        ])
        .arg(fixture("gpt2-tiny"))
        .arg("--input")
        .arg(&input));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let records = json_lines(&output);
    assert_eq!(records.len(), 3);
    let (ids, _) = transformers_greedy(PROMPT);
    let got: Vec<u64> = records[0]["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(
        got, ids,
        "batched with other prompts, still transformers' greedy ids"
    );
    assert_eq!(
        records[1]["prompt"], "",
        "an empty prompt starts from the BOS token"
    );
}

#[test]
fn encoder_task_commands_write_their_records() {
    let cache = tempfile::tempdir().unwrap();
    let fill = run(llmx(cache.path())
        .args(["fill-mask", "--json", "--top-k", "2", "--model"])
        .arg(fixture("bert-mlm"))
        .args([
            "Hello, my dog is [MASK].",
            "The soup was [MASK], but the dessert was [MASK].",
            "no mask",
        ]));
    assert_eq!(
        fill.status.code(),
        Some(1),
        "the input without a mask fails alone"
    );
    let records = json_lines(&fill);
    assert_eq!(records[0]["predictions"].as_array().unwrap().len(), 2);
    assert!(records[0]["predictions"][0]["token_str"].is_string());
    assert_eq!(
        records[1]["predictions"].as_array().unwrap().len(),
        2,
        "a list per mask"
    );
    assert!(records[1]["predictions"][0].is_array());
    assert!(records[2]["error"].as_str().unwrap().contains("[MASK]"));

    let ner = run(llmx(cache.path())
        .args(["ner", "--json", "--aggregation", "first", "--model"])
        .arg(fixture("bert-ner"))
        .arg("My name is Wolfgang and I live in Berlin"));
    assert_eq!(ner.status.code(), Some(0), "{}", stderr(&ner));
    let entity = &json_lines(&ner)[0]["entities"][0];
    for field in ["entity_group", "score", "word", "start", "end"] {
        assert!(entity.get(field).is_some(), "{field} in {entity}");
    }

    let qa = run(llmx(cache.path())
        .args(["qa", "--json", "--model"])
        .arg(fixture("distilbert-qa"))
        .args([
            "--question",
            "What is my name?",
            "--context",
            "My name is Wolfgang and I live in Berlin.",
        ]));
    assert_eq!(qa.status.code(), Some(0), "{}", stderr(&qa));
    let record = &json_lines(&qa)[0];
    assert_eq!(record["question"], "What is my name?");
    let (start, end) = (
        record["start"].as_u64().unwrap() as usize,
        record["end"].as_u64().unwrap() as usize,
    );
    assert_eq!(
        record["answer"],
        &"My name is Wolfgang and I live in Berlin."[start..end]
    );
}

#[test]
fn info_describes_a_checkpoint_and_completions_print() {
    let cache = tempfile::tempdir().unwrap();
    let output = run(llmx(cache.path())
        .args(["info", "--json"])
        .arg(fixture("bert-cls3")));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let info: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(info["architecture"], "BertForSequenceClassification");
    assert_eq!(info["command"], "classify");
    assert_eq!(
        info["labels"],
        serde_json::json!(["negative", "neutral", "positive"])
    );
    assert!(info["parameters"].as_u64().unwrap() > 10_000);

    let completions = run(llmx(cache.path()).args(["completions", "bash"]));
    assert_eq!(completions.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&completions.stdout).contains("classify"));
}

#[test]
fn translate_summarize_and_text2text_print_what_the_pipelines_give() {
    let cache = tempfile::tempdir().unwrap();
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("t5-v1_0").join("expected.json")).unwrap(),
    )
    .unwrap();
    for (command, key) in [("translate", "translate"), ("summarize", "summarize")] {
        let case = &expected[key][0];
        let mut llmx = llmx(cache.path());
        llmx.args([command, "--model"]).arg(fixture("t5-v1_0"));
        if command == "translate" {
            llmx.args(["--from", "en", "--to", "de"]);
        }
        let output = run(llmx.arg(case["text"].as_str().unwrap()));
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        let printed = String::from_utf8(output.stdout).unwrap();
        assert_eq!(
            printed.trim_end_matches('\n'),
            case["output"].as_str().unwrap(),
            "{command}"
        );
    }

    // text2text over a file, with JSON records.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("inputs.txt");
    let cases = expected["text2text"].as_array().unwrap();
    let lines: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let output = run(llmx(cache.path())
        .args(["text2text", "--json", "--model"])
        .arg(fixture("t5-v1_0"))
        .arg("--input")
        .arg(&input));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    for (record, case) in json_lines(&output).iter().zip(cases) {
        assert_eq!(record["output"], case["output"]);
        assert_eq!(record["text"], case["text"]);
    }

    let missing = run(llmx(cache.path())
        .args(["translate", "--to", "xx", "--model"])
        .arg(fixture("t5-v1_0"))
        .arg("hi"));
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("en → de"), "{}", stderr(&missing));
}
