//! `llmx info MODEL`: what a checkpoint is and what llmx would do with it, without loading
//! weights (the parameter count comes from the safetensors headers).

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::hub::{self, HubOptions, ModelRepo};
use crate::models::{ModelConfig, Task};
use crate::tasks::HeadConfig;

#[derive(Serialize)]
struct Info {
    model: String,
    source: String,
    architecture: String,
    model_type: Option<String>,
    /// The llmx command for this checkpoint, if any.
    command: Option<&'static str>,
    parameters: u64,
    labels: Vec<String>,
    files: Vec<String>,
    /// Task-specific settings found in the checkpoint (generation, task parameters).
    defaults: serde_json::Value,
}

const TASKS: [Task; 7] = [
    Task::Classify,
    Task::Generate,
    Task::Text2Text,
    Task::FillMask,
    Task::Ner,
    Task::Qa,
    Task::Embed,
];

/// Elements in every tensor a safetensors header lists, read from the header alone.
fn parameters(path: &Path) -> anyhow::Result<u64> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut size = [0u8; 8];
    file.read_exact(&mut size)?;
    let size = u64::from_le_bytes(size);
    anyhow::ensure!(
        size < 100_000_000,
        "{} has an implausible header; is it safetensors?",
        path.display()
    );
    let mut header = vec![0u8; size as usize];
    file.read_exact(&mut header)
        .with_context(|| format!("{} is truncated", path.display()))?;
    let metadata: safetensors::tensor::Metadata = serde_json::from_slice(&header)
        .with_context(|| format!("{} has a malformed header", path.display()))?;
    Ok(metadata
        .tensors()
        .values()
        .map(|info| info.shape.iter().product::<usize>() as u64)
        .sum())
}

pub fn info(model: &str, options: &HubOptions, json: bool) -> anyhow::Result<()> {
    let repo = ModelRepo::open(model, options)?;
    let config_path = repo.required(hub::CONFIG)?;
    let text = std::fs::read_to_string(&config_path)?;
    let config: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", config_path.display()))?;
    let registered = TASKS
        .iter()
        .find_map(|&task| ModelConfig::load(&config_path, task).ok());
    let mut files = vec![config_path.clone()];
    let mut parameter_count = 0;
    let weights = repo.weights()?;
    for path in &weights {
        parameter_count += parameters(path)?;
    }
    files.extend(weights);
    for optional in [
        hub::TOKENIZER,
        "tokenizer_config.json",
        "generation_config.json",
        "modules.json",
    ] {
        files.extend(repo.optional(optional)?);
    }
    let labels = match &registered {
        Some(cfg) if matches!(cfg.task, Task::Classify | Task::Ner) => {
            cfg.parse::<HeadConfig>()?.labels(cfg)?
        }
        _ => Vec::new(),
    };
    let mut defaults = serde_json::Map::new();
    for key in ["task_specific_params", "problem_type"] {
        if let Some(value) = config.get(key) {
            defaults.insert(key.to_string(), value.clone());
        }
    }
    if let Some(path) = repo.optional("generation_config.json")? {
        let generation: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        defaults.insert("generation_config".to_string(), generation);
    }
    let info = Info {
        model: repo.name().to_string(),
        source: repo.origin(),
        architecture: registered
            .as_ref()
            .map(|c| c.architecture.clone())
            .or_else(|| config["architectures"][0].as_str().map(str::to_string))
            .unwrap_or_else(|| "unknown".to_string()),
        model_type: config["model_type"].as_str().map(str::to_string),
        command: registered.as_ref().map(|c| c.task.command()),
        parameters: parameter_count,
        labels,
        files: files.iter().map(|f| f.display().to_string()).collect(),
        defaults: serde_json::Value::Object(defaults),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    println!("model:        {}", info.model);
    println!("source:       {}", info.source);
    println!(
        "architecture: {} ({})",
        info.architecture,
        info.model_type.as_deref().unwrap_or("?")
    );
    match info.command {
        Some(command) => println!("task:         llmx {command}"),
        None => println!("task:         none that llmx supports"),
    }
    println!(
        "parameters:   {} ({:.1} M)",
        info.parameters,
        info.parameters as f64 / 1e6
    );
    if !info.labels.is_empty() {
        println!("labels:       {}", info.labels.join(", "));
    }
    println!("files:");
    for file in &info.files {
        println!("  {file}");
    }
    if !info.defaults.as_object().is_some_and(|d| d.is_empty()) {
        println!("defaults:     {}", info.defaults);
    }
    Ok(())
}
