//! Loading: the TOML file, `UPLINK_<PROGRAM>_*` environment variables and `--set` flags merged
//! in that order, unknown keys refused with a suggestion, every error naming the key and where
//! its value came from; and `config defaults` rendered from the defaults and their docs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::docs::Program;
use super::{ConfigError, GatewayConfig, IngestConfig};
/// Where the layers of a configuration come from.
#[derive(Default, Debug, Clone)]
pub struct Sources {
    /// TOML file (optional).
    pub file: Option<PathBuf>,
    /// `KEY=VALUE` pairs from the environment, already filtered by nothing: [`load`] keeps those
    /// starting with the program's prefix.
    pub env: Vec<(String, String)>,
    /// `--set key.path=value` flags.
    pub sets: Vec<String>,
}

impl Sources {
    /// The process environment plus the given file and flags.
    pub fn from_process(file: Option<PathBuf>, sets: Vec<String>) -> Self {
        Sources {
            file,
            env: std::env::vars().collect(),
            sets,
        }
    }
}

/// Which layer set each key (dotted path → `file …`, `environment …`, `--set …`); a key
/// missing here has its default.
pub type Origins = BTreeMap<String, String>;

/// Merges file, environment (`{env_prefix}KEY__SUBKEY`) and `--set` layers over the defaults,
/// then deserializes and returns the typed config (not yet validated), with where each set key
/// came from, so that a value found wrong later (by validation) can be reported with its origin.
pub fn load_with_origins<T>(
    env_prefix: &str,
    sources: &Sources,
) -> Result<(T, Origins), ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let defaults = toml::Table::try_from(T::default()).expect("defaults serialize");
    let mut origins = Origins::new();
    // Layers are merged over the serialized defaults, so every section is complete.
    let mut merged = defaults.clone();
    if let Some(path) = &sources.file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let origin = format!("file {}", path.display());
        check_keys(&table, &defaults, "", &origin)?;
        for key in leaf_keys(&table) {
            origins.insert(key, origin.clone());
        }
        deep_merge(&mut merged, table);
    }
    let mut env: Vec<_> = sources
        .env
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(env_prefix)?, k, v)))
        .collect();
    env.sort();
    for (rest, name, value) in env {
        let key = rest.to_ascii_lowercase().replace("__", ".");
        let origin = format!("environment {name}");
        set_path(&mut merged, &defaults, &key, value, &origin)?;
        origins.insert(key, origin);
    }
    for set in &sources.sets {
        let (key, value) = set.split_once('=').ok_or_else(|| ConfigError::BadValue {
            key: set.clone(),
            origin: "--set".into(),
            reason: "expected key.path=value".into(),
        })?;
        // The key, not the value: a value may be a secret (a password, a URL with credentials).
        let origin = format!("--set {}", key.trim());
        set_path(&mut merged, &defaults, key.trim(), value, &origin)?;
        origins.insert(key.trim().to_string(), origin);
    }
    match T::deserialize(toml::Value::Table(merged.clone())) {
        Ok(t) => Ok((t, origins)),
        Err(e) => {
            // toml names the key at the end of its message ("…\nin `timeouts.idle`").
            let text = e.to_string();
            let (reason, key) = match text.trim_end().rsplit_once("\nin `") {
                Some((reason, key)) => (reason.trim().to_string(), key.trim_end_matches('`')),
                None => (text.trim().to_string(), ""),
            };
            // A flattened section (`nats`) is named without the key inside it: when one key
            // under it was set, that is the one.
            // When several were, and all from one layer, that layer is the origin.
            let prefix = format!("{key}.");
            let under: Vec<(&String, &String)> = origins
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .collect();
            // Several: the one whose value alone, over the defaults, fails too.
            let alone_fails = |k: &str| {
                let mut t = defaults.clone();
                set_value(&mut t, k, get_value(&merged, k).cloned());
                T::deserialize(toml::Value::Table(t)).is_err()
            };
            let (key, origin) = match under.as_slice() {
                _ if origins.contains_key(key) => (key, origin_of(&origins, key)),
                [(only, o)] => (only.as_str(), (*o).clone()),
                _ if let Some((k, o)) = under.iter().find(|(k, _)| alone_fails(k)) => {
                    (k.as_str(), (*o).clone())
                }
                [(_, o), rest @ ..] if rest.iter().all(|(_, r)| r == o) => (key, (*o).clone()),
                _ => (key, origin_of(&origins, key)),
            };
            Err(ConfigError::BadValue {
                key: if key.is_empty() {
                    "(config)".into()
                } else {
                    key.into()
                },
                origin,
                reason,
            })
        }
    }
}

/// The value at a dotted key.
fn get_value<'a>(t: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    match key.split_once('.') {
        None => t.get(key),
        Some((first, rest)) => get_value(t.get(first)?.as_table()?, rest),
    }
}

/// Sets (or, with `None`, removes) the value at a dotted key whose sections exist.
fn set_value(t: &mut toml::Table, key: &str, v: Option<toml::Value>) {
    match key.split_once('.') {
        None => match v {
            Some(v) => drop(t.insert(key.to_string(), v)),
            None => drop(t.remove(key)),
        },
        Some((first, rest)) => {
            if let Some(toml::Value::Table(inner)) = t.get_mut(first) {
                set_value(inner, rest, v)
            }
        }
    }
}

/// Where `key` (or the section holding it) was set.
pub fn origin_of(origins: &Origins, key: &str) -> String {
    let mut k = key;
    loop {
        if let Some(o) = origins.get(k) {
            return o.clone();
        }
        match k.rsplit_once('.') {
            Some((parent, _)) => k = parent,
            None => return "the default".into(),
        }
    }
}

/// Dotted paths of the values (not sections) in a table.
fn leaf_keys(t: &toml::Table) -> Vec<String> {
    fn walk(t: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in t {
            match v {
                toml::Value::Table(inner) => walk(inner, &format!("{prefix}{k}."), out),
                _ => out.push(format!("{prefix}{k}")),
            }
        }
    }
    let mut out = Vec::new();
    walk(t, "", &mut out);
    out
}

/// The known key closest to an unknown one: same last part under another section, or a few
/// edits away (typos, singular/plural).
fn suggest(unknown: &str, defaults: &toml::Table) -> Option<String> {
    let mut known = Vec::new();
    fn walk(t: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in t {
            let p = format!("{prefix}{k}");
            if let toml::Value::Table(inner) = v {
                walk(inner, &format!("{p}."), out);
            }
            out.push(p);
        }
    }
    walk(defaults, "", &mut known);
    let last = unknown.rsplit('.').next().unwrap_or(unknown);
    let by_last: Vec<&String> = known
        .iter()
        .filter(|k| k.rsplit('.').next() == Some(last))
        .collect();
    if by_last.len() == 1 {
        return Some(by_last[0].clone());
    }
    let limit = (unknown.len() / 4).clamp(1, 3);
    known
        .into_iter()
        .map(|k| (edit_distance(unknown, &k), k))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| k)
}

/// Levenshtein distance (bytes; keys are ASCII).
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn deep_merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => deep_merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn check_keys(
    table: &toml::Table,
    defaults: &toml::Table,
    prefix: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    for (k, v) in table {
        let path = format!("{prefix}{k}");
        match (defaults.get(k), v) {
            (None, _) => {
                return Err(ConfigError::UnknownKey {
                    key: path,
                    origin: origin.into(),
                    suggestion: None,
                });
            }
            (Some(toml::Value::Table(d)), toml::Value::Table(t)) => {
                check_keys(t, d, &format!("{path}."), origin)?
            }
            (Some(toml::Value::Table(_)), _) => {
                return Err(ConfigError::BadValue {
                    key: path,
                    origin: origin.into(),
                    reason: "is a section, not a value".into(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Sets `key` (dotted) in `merged` from a text value, typed after the default at that key.
fn set_path(
    merged: &mut toml::Table,
    defaults: &toml::Table,
    key: &str,
    raw: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    let parts: Vec<&str> = key.split('.').collect();
    let unknown = || ConfigError::UnknownKey {
        key: key.to_string(),
        origin: origin.to_string(),
        suggestion: None,
    };
    let mut dflt = defaults;
    let mut table = merged;
    for part in &parts[..parts.len() - 1] {
        dflt = match dflt.get(*part) {
            Some(toml::Value::Table(t)) => t,
            _ => return Err(unknown()),
        };
        table = match table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()))
        {
            toml::Value::Table(t) => t,
            _ => return Err(unknown()),
        };
    }
    let last = parts[parts.len() - 1];
    let bad = |reason: String| ConfigError::BadValue {
        key: key.to_string(),
        origin: origin.to_string(),
        reason,
    };
    let value = match dflt.get(last) {
        None => return Err(unknown()),
        Some(toml::Value::Table(_)) => return Err(bad("is a section, not a value".into())),
        Some(toml::Value::String(_)) => toml::Value::String(raw.to_string()),
        Some(toml::Value::Integer(_)) => toml::Value::Integer(
            raw.trim()
                .replace('_', "")
                .parse()
                .map_err(|_| bad(format!("{raw:?} is not an integer")))?,
        ),
        Some(toml::Value::Float(_)) => toml::Value::Float(
            raw.trim()
                .parse()
                .map_err(|_| bad(format!("{raw:?} is not a number")))?,
        ),
        Some(toml::Value::Boolean(_)) => toml::Value::Boolean(match raw.trim() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err(bad(format!("{raw:?} is not true/false"))),
        }),
        Some(toml::Value::Array(_)) => {
            let t = raw.trim();
            if t.starts_with('[') {
                let doc: toml::Table = toml::from_str(&format!("v = {t}"))
                    .map_err(|e| bad(format!("not a TOML array: {e}")))?;
                doc["v"].clone()
            } else {
                toml::Value::Array(
                    t.split(',')
                        .map(|s| toml::Value::String(s.trim().to_string()))
                        .filter(|v| v.as_str() != Some(""))
                        .collect(),
                )
            }
        }
        Some(_) => toml::Value::String(raw.to_string()),
    };
    table.insert(last.to_string(), value);
    Ok(())
}

/// Renders the defaults of a program as a commented TOML document (`uplink config defaults`).
/// Each setting's comment is the doc comment on its field.
pub fn render_defaults<T: Serialize + Default + Program>() -> String {
    let table = toml::Table::try_from(T::default()).expect("defaults serialize");
    let docs = super::docs::docs::<T>();
    let mut out = String::new();
    render_table(&table, "", &docs, &mut out);
    out
}

fn render_table(
    table: &toml::Table,
    prefix: &str,
    docs: &BTreeMap<String, String>,
    out: &mut String,
) {
    let (scalars, sections): (Vec<_>, Vec<_>) = table.iter().partition(|(_, v)| !v.is_table());
    for (k, v) in scalars {
        let path = format!("{prefix}{k}");
        if let Some(doc) = docs.get(path.as_str()) {
            for line in doc.lines() {
                out.push_str(&format!("# {line}\n"));
            }
        }
        out.push_str(&format!("{k} = {v}\n"));
    }
    for (k, v) in sections {
        let path = format!("{prefix}{k}");
        out.push_str(&format!("\n[{path}]\n"));
        if let Some(doc) = docs.get(path.as_str()) {
            for line in doc.lines() {
                out.push_str(&format!("# {line}\n"));
            }
        }
        render_table(v.as_table().unwrap(), &format!("{path}."), docs, out);
    }
}

/// The settings reference of a program as Markdown (docs/configuration.md): one row per key
/// with its default and documentation, from the same defaults and docs as
/// [`render_defaults`], so the two cannot disagree.
pub fn render_reference<T: Serialize + Default + Program>() -> String {
    let (program, env_prefix) = (T::NAME, T::ENV_PREFIX);
    let table = toml::Table::try_from(T::default()).expect("defaults serialize");
    let docs = super::docs::docs::<T>();
    let mut out = format!(
        "## `uplink {program}`\n\nEnvironment: `{env_prefix}<KEY>` with nested keys joined by `__` \
         (e.g. `{env_prefix}TIMEOUTS__IDLE`); flags: `--set key=value`.\n\n\
         | key | default | meaning |\n|---|---|---|\n"
    );
    fn walk(t: &toml::Table, prefix: &str, docs: &BTreeMap<String, String>, out: &mut String) {
        let (scalars, sections): (Vec<_>, Vec<_>) = t.iter().partition(|(_, v)| !v.is_table());
        for (k, v) in scalars {
            let path = format!("{prefix}{k}");
            let doc = docs.get(path.as_str()).map_or("", String::as_str);
            let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
            out.push_str(&format!(
                "| `{path}` | `{}` | {} |\n",
                cell(&v.to_string()),
                cell(doc)
            ));
        }
        for (k, v) in sections {
            let path = format!("{prefix}{k}");
            if let Some(doc) = docs.get(path.as_str()) {
                out.push_str(&format!(
                    "| **`[{path}]`** | | {} |\n",
                    doc.replace('\n', " ")
                ));
            }
            walk(
                v.as_table().expect("a section"),
                &format!("{path}."),
                docs,
                out,
            );
        }
    }
    walk(&table, "", &docs, &mut out);
    out
}

/// docs/configuration.md: both programs' references.
pub fn reference() -> String {
    format!(
        "# Configuration reference\n\nGenerated by `uplink config reference` from the settings' defaults and \
         their documentation (the doc comments on the settings' fields, `src/config/*.rs`); a test fails when this file is stale. Every \
         setting can come from the TOML file (`--config`), the environment, or `--set`, in that \
         order of precedence (later wins). `uplink config check PROGRAM FILE` validates a file and \
         reads every file it names.\n\n{}\n{}",
        render_reference::<GatewayConfig>(),
        render_reference::<IngestConfig>()
    )
}

/// All leaf keys (dotted) of a program's defaults, for docs coverage checks.
#[cfg(test)]
pub fn default_keys<T: Serialize + Default>() -> Vec<String> {
    fn walk(t: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in t {
            let p = format!("{prefix}{k}");
            match v {
                toml::Value::Table(inner) => {
                    out.push(p.clone());
                    walk(inner, &format!("{p}."), out)
                }
                _ => out.push(p),
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &toml::Table::try_from(T::default()).expect("defaults serialize"),
        "",
        &mut out,
    );
    out
}

/// Validated gateway config from the given sources.
pub fn gateway(sources: &Sources) -> Result<GatewayConfig, ConfigError> {
    let (c, origins): (GatewayConfig, _) =
        with_suggestion::<GatewayConfig>(load_with_origins("UPLINK_GATEWAY_", sources))?;
    c.validate().map_err(|e| with_origin(e, &origins))?;
    Ok(c)
}

/// Validated ingest config from the given sources.
pub fn ingest(sources: &Sources) -> Result<IngestConfig, ConfigError> {
    let (c, origins): (IngestConfig, _) =
        with_suggestion::<IngestConfig>(load_with_origins("UPLINK_INGEST_", sources))?;
    c.validate().map_err(|e| with_origin(e, &origins))?;
    Ok(c)
}

/// Adds the closest known key to an unknown-key error.
fn with_suggestion<T: Serialize + Default>(
    r: Result<(T, Origins), ConfigError>,
) -> Result<(T, Origins), ConfigError> {
    r.map_err(|e| match e {
        ConfigError::UnknownKey { key, origin, .. } => {
            let defaults = toml::Table::try_from(T::default()).expect("defaults serialize");
            ConfigError::UnknownKey {
                suggestion: suggest(&key, &defaults),
                key,
                origin,
            }
        }
        other => other,
    })
}

/// A validation error about a key someone set says who set it.
fn with_origin(e: ConfigError, origins: &Origins) -> ConfigError {
    match e {
        ConfigError::Invalid { key, reason } if origins.contains_key(key) => {
            ConfigError::BadValue {
                key: key.to_string(),
                origin: origin_of(origins, key),
                reason,
            }
        }
        other => other,
    }
}
