//! Model resolution: a local folder, or a hub id fetched into (or read from) the Hugging Face
//! cache that Python's huggingface_hub also uses.
//!
//! Files are resolved lazily, so a caller can read config.json and reject an unsuitable
//! checkpoint before any weights are downloaded.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Repo, RepoType};

use crate::error::{Error, Result};

pub const CONFIG: &str = "config.json";
pub const TOKENIZER: &str = "tokenizer.json";
const SAFETENSORS: &str = "model.safetensors";
const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";
const PICKLE_WEIGHTS: [&str; 2] = ["pytorch_model.bin", "pytorch_model.bin.index.json"];

/// Where hub models are looked up and how. [`HubOptions::from_env`] follows huggingface_hub's
/// environment variables.
#[derive(Debug, Clone)]
pub struct HubOptions {
    pub revision: String,
    /// Never touch the network; hub ids resolve from the cache only.
    pub offline: bool,
    /// The hub cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    pub token: Option<String>,
    pub endpoint: Option<String>,
    /// Show download progress bars (callers pass true only for a terminal).
    pub progress: bool,
}

impl HubOptions {
    pub fn from_env() -> Self {
        let home = env_path("HF_HOME").unwrap_or_else(|| {
            env_path("XDG_CACHE_HOME")
                .or_else(|| env_path("HOME").map(|home| home.join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"))
                .join("huggingface")
        });
        let token = std::env::var("HF_TOKEN")
            .ok()
            .or_else(|| std::fs::read_to_string(home.join("token")).ok())
            .map(|token| token.trim().to_string())
            .filter(|token| !token.is_empty());
        HubOptions {
            revision: "main".to_string(),
            offline: env_flag("HF_HUB_OFFLINE"),
            cache_dir: env_path("HF_HUB_CACHE").unwrap_or_else(|| home.join("hub")),
            token,
            endpoint: std::env::var("HF_ENDPOINT").ok(),
            progress: false,
        }
    }
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
}

/// huggingface_hub's truthy values for boolean environment variables.
fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|value| {
        matches!(
            value.trim().to_ascii_uppercase().as_str(),
            "1" | "ON" | "YES" | "TRUE"
        )
    })
}

/// A checkpoint in the Hugging Face layout, wherever it lives.
pub struct ModelRepo {
    name: String,
    source: Source,
}

enum Source {
    Local(PathBuf),
    Cache {
        snapshot: Option<PathBuf>,
        cache_dir: PathBuf,
        revision: String,
    },
    Online {
        repo: Box<ApiRepo>,
        files: Vec<String>,
        revision: String,
    },
}

impl ModelRepo {
    /// Opens a local folder, or a hub id (`org/name`) through the cache and, unless offline,
    /// the hub.
    pub fn open(model: &str, options: &HubOptions) -> Result<Self> {
        let path = Path::new(model);
        if path.is_dir() {
            return Ok(ModelRepo {
                name: model.to_string(),
                source: Source::Local(path.to_path_buf()),
            });
        }
        if path.exists() || !is_hub_id(model) {
            return Err(Error::config(
                path,
                "no such model folder; --model takes a folder in the Hugging Face layout \
                 (config.json, tokenizer.json, model.safetensors) or a hub id like org/name",
            ));
        }
        let name = model.to_string();
        let from_cache = || ModelRepo {
            source: Source::Cache {
                snapshot: cached_snapshot(&options.cache_dir, model, &options.revision),
                cache_dir: options.cache_dir.clone(),
                revision: options.revision.clone(),
            },
            name: name.clone(),
        };
        if options.offline {
            return Ok(from_cache());
        }
        let mut builder = ApiBuilder::from_cache(hf_hub::Cache::new(options.cache_dir.clone()))
            .with_token(options.token.clone())
            .with_progress(options.progress)
            .with_user_agent("llmx", env!("CARGO_PKG_VERSION"));
        if let Some(endpoint) = &options.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let api = builder.build().map_err(|e| hub_error(model, e))?;
        let repo = api.repo(Repo::with_revision(
            name.clone(),
            RepoType::Model,
            options.revision.clone(),
        ));
        let info = match repo.info() {
            Ok(info) => info,
            // Like huggingface_hub: with the hub out of reach, a cached copy still serves.
            Err(e) if is_unreachable(&e) && from_cache().cached() => return Ok(from_cache()),
            Err(e) => return Err(hub_error(model, e)),
        };
        let files = info.siblings.into_iter().map(|s| s.rfilename).collect();
        Ok(ModelRepo {
            name,
            source: Source::Online {
                repo: Box::new(repo),
                files,
                revision: options.revision.clone(),
            },
        })
    }

    /// True when the files come from a cached snapshot.
    fn cached(&self) -> bool {
        matches!(
            &self.source,
            Source::Cache {
                snapshot: Some(_),
                ..
            }
        )
    }

    /// The model as the user named it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where files come from, for `llmx info` and error messages.
    pub fn origin(&self) -> String {
        match &self.source {
            Source::Local(dir) => format!("local folder {}", dir.display()),
            Source::Cache {
                cache_dir,
                revision,
                ..
            } => format!(
                "Hugging Face cache {} (revision {revision}, offline)",
                cache_dir.display()
            ),
            Source::Online { revision, .. } => {
                format!("Hugging Face hub (revision {revision})")
            }
        }
    }

    /// A file that the checkpoint may or may not have; downloads it when online.
    pub fn optional(&self, file: &str) -> Result<Option<PathBuf>> {
        match &self.source {
            Source::Local(dir) => Ok(Some(dir.join(file)).filter(|path| path.is_file())),
            Source::Cache { snapshot, .. } => Ok(snapshot
                .as_ref()
                .map(|dir| dir.join(file))
                .filter(|path| path.is_file())),
            Source::Online { repo, files, .. } => {
                if !files.iter().any(|name| name == file) {
                    return Ok(None);
                }
                repo.get(file)
                    .map(Some)
                    .map_err(|e| hub_error(&self.name, e))
            }
        }
    }

    /// A file the checkpoint must have.
    pub fn required(&self, file: &str) -> Result<PathBuf> {
        self.optional(file)?.ok_or_else(|| self.missing(file))
    }

    fn missing(&self, file: &str) -> Error {
        match &self.source {
            Source::Cache { cache_dir, .. } => Error::NotInCache {
                model: self.name.clone(),
                file: file.to_string(),
                cache: cache_dir.clone(),
            },
            _ => Error::MissingFile {
                model: self.name.clone(),
                file: file.to_string(),
                hint: match file {
                    TOKENIZER => "; llmx needs the fast-tokenizer file, which transformers writes \
                                  with AutoTokenizer.from_pretrained(...).save_pretrained(DIR)"
                        .to_string(),
                    SAFETENSORS => "; llmx loads safetensors weights only".to_string(),
                    _ => String::new(),
                },
            },
        }
    }

    /// The safetensors weight files: one file, or the shards an index names.
    pub fn weights(&self) -> Result<Vec<PathBuf>> {
        if let Some(single) = self.optional(SAFETENSORS)? {
            return Ok(vec![single]);
        }
        if let Some(index) = self.optional(SAFETENSORS_INDEX)? {
            return shard_names(&index)?
                .iter()
                .map(|shard| self.required(shard))
                .collect();
        }
        for pickle in PICKLE_WEIGHTS {
            if self.optional(pickle)?.is_some() {
                return Err(Error::PickleOnly {
                    model: self.name.clone(),
                });
            }
        }
        Err(self.missing(SAFETENSORS))
    }
}

fn is_unreachable(error: &ApiError) -> bool {
    matches!(error, ApiError::RequestError(e) if matches!(**e, ureq::Error::Transport(_)))
}

/// A hub failure, with what the user can do about it.
fn hub_error(model: &str, error: ApiError) -> Error {
    let problem = match &error {
        ApiError::RequestError(e) => match **e {
            ureq::Error::Status(401 | 403, _) => {
                "access denied; gated and private models need a token in HF_TOKEN"
            }
            ureq::Error::Status(404, _) => "no such model or revision; check the id and --revision",
            ureq::Error::Status(..) => "the hub answered with an error; try again later",
            ureq::Error::Transport(_) => {
                "the hub cannot be reached; check the network, or use --model DIR for a local \
                 folder, or --offline for a model already in the cache"
            }
        },
        ApiError::IoError(_) => "cannot write to the cache folder (HF_HUB_CACHE / HF_HOME)",
        _ => "the download failed; try again",
    };
    Error::Hub {
        model: model.to_string(),
        problem,
        source: Box::new(error),
    }
}

/// Hub ids are `name` or `org/name` built from letters, digits, `-`, `_` and `.`.
fn is_hub_id(model: &str) -> bool {
    let parts: Vec<&str> = model.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// The snapshot folder a revision points at, in huggingface_hub's cache layout:
/// `models--org--name/refs/<branch>` holds a commit hash naming `snapshots/<hash>/`.
fn cached_snapshot(cache_dir: &Path, model: &str, revision: &str) -> Option<PathBuf> {
    let repo_dir = cache_dir.join(format!("models--{}", model.replace('/', "--")));
    let commit = std::fs::read_to_string(repo_dir.join("refs").join(revision))
        .map(|commit| commit.trim().to_string())
        .unwrap_or_else(|_| revision.to_string());
    let snapshot = repo_dir.join("snapshots").join(commit);
    snapshot.is_dir().then_some(snapshot)
}

/// The distinct shard files a `model.safetensors.index.json` maps weights to, in order.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let parsed: Index = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: index.to_path_buf(),
        source,
    })?;
    let mut shards: Vec<String> = parsed.weight_map.into_values().collect();
    shards.sort();
    shards.dedup();
    if shards.is_empty() {
        return Err(Error::config(index, "the weight map names no shard files"));
    }
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_paths_are_told_apart() {
        assert!(is_hub_id("gpt2"));
        assert!(is_hub_id("openai-community/gpt2"));
        assert!(is_hub_id("google-t5/t5-small"));
        assert!(!is_hub_id("./models/gpt2"));
        assert!(!is_hub_id("/abs/path"));
        assert!(!is_hub_id("a/b/c"));
        assert!(!is_hub_id(""));
        assert!(!is_hub_id("org/"));
    }
}
