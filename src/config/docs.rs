//! Each setting's documentation lives on its field, as a doc comment: [`settings!`] declares a
//! settings struct and records its fields' doc comments, so `uplink config defaults` and
//! docs/configuration.md (`uplink config reference`) are rendered from the same text rustdoc
//! shows. A declarative macro, not a derive crate: schemars would read doc comments too, but
//! brings a proc-macro crate and five more crates to the build (2-core machines) for a JSON
//! schema this project does not need.
//!
//! The shared structs (`nats.*`, `admin.*`) are documented once for both programs: in their
//! text, `{gateway text|ingest text}` picks per program (braces without a `|` stay as they are).

use std::collections::BTreeMap;

/// One field of a settings struct.
pub struct Field {
    pub name: &'static str,
    /// Its doc comment, one line per `///` line.
    pub doc: String,
    /// `#[serde(flatten)]`: its fields appear in the parent's section.
    pub flatten: bool,
    /// The fields of its own section (none for a value).
    pub nested: fn() -> Vec<Field>,
}

/// A type whose fields carry documentation; values (numbers, strings, durations, …) have none.
pub trait Documented {
    fn fields() -> Vec<Field> {
        Vec::new()
    }
}

/// The two programs, for the `{gateway|ingest}` alternatives and the environment prefix.
pub trait Program: Documented {
    const NAME: &'static str;
    const ENV_PREFIX: &'static str;
}

impl Program for super::GatewayConfig {
    const NAME: &'static str = "gateway";
    const ENV_PREFIX: &'static str = "UPLINK_GATEWAY_";
}

impl Program for super::IngestConfig {
    const NAME: &'static str = "ingest";
    const ENV_PREFIX: &'static str = "UPLINK_INGEST_";
}

macro_rules! values {
    ($($t:ty),* $(,)?) => { $(impl Documented for $t {})* };
}
values!(
    String,
    bool,
    usize,
    u32,
    u64,
    i32,
    i64,
    f64,
    std::time::Duration,
    std::path::PathBuf,
    std::net::SocketAddr,
    http::Uri,
    http::HeaderName,
    super::TlsName,
    super::NatsUrls,
    super::Secret,
    super::Discard,
    super::EdgeRetention,
    super::AckMode,
    super::BatchPublish,
    super::RejectAction,
    super::Concurrency,
    super::LogFormat,
    crate::wire::Encoding,
);
impl<T> Documented for Vec<T> {}
impl<T> Documented for Option<T> {}

/// Declares a settings struct as written (attributes, doc comments and all) and implements
/// [`Documented`] from its fields' doc comments.
macro_rules! settings {
    (
        $(#[$smeta:meta])*
        $svis:vis struct $name:ident {
            $(
                $(#[$($fattr:tt)*])*
                $fvis:vis $field:ident : $ty:ty
            ),* $(,)?
        }
    ) => {
        $(#[$smeta])*
        $svis struct $name {
            $( $(#[$($fattr)*])* $fvis $field: $ty, )*
        }

        impl $crate::config::docs::Documented for $name {
            fn fields() -> Vec<$crate::config::docs::Field> {
                vec![$(
                    $crate::config::docs::Field {
                        name: stringify!($field),
                        doc: $crate::config::docs::join(&[$( doc_line!($($fattr)*) ),*]),
                        flatten: false $( || is_flatten!($($fattr)*) )*,
                        nested: <$ty as $crate::config::docs::Documented>::fields,
                    }
                ),*]
            }
        }
    };
}

/// The text of a `#[doc = "…"]` attribute (a `///` line), none for another attribute.
macro_rules! doc_line {
    (doc = $d:literal) => {
        Some($d)
    };
    ($($other:tt)*) => {
        None
    };
}

macro_rules! is_flatten {
    (serde(flatten)) => {
        true
    };
    ($($other:tt)*) => {
        false
    };
}

/// The lines of a doc comment, each without the space after `///`.
pub fn join(lines: &[Option<&str>]) -> String {
    lines
        .iter()
        .flatten()
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

/// Every documented key (dotted; sections too) of a program, with its text for that program.
pub fn docs<T: Program>() -> BTreeMap<String, String> {
    fn walk(fields: Vec<Field>, prefix: &str, pick: usize, out: &mut BTreeMap<String, String>) {
        for f in fields {
            if f.flatten {
                walk((f.nested)(), prefix, pick, out);
                continue;
            }
            let key = format!("{prefix}{}", f.name);
            if !f.doc.is_empty() {
                out.insert(
                    key.clone(),
                    pick_alternative(&f.doc, pick).trim().to_string(),
                );
            }
            walk((f.nested)(), &format!("{key}."), pick, out);
        }
    }
    let pick = usize::from(T::NAME != "gateway");
    let mut out = BTreeMap::new();
    walk(T::fields(), "", pick, &mut out);
    out
}

/// Replaces each `{a|b}` by its `pick`th alternative.
fn pick_alternative(text: &str, pick: usize) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|c| open + c) else {
            break;
        };
        let inner = &rest[open + 1..close];
        out.push_str(&rest[..open]);
        match inner.split_once('|') {
            Some((a, b)) if !inner.contains(['{']) => out.push_str(if pick == 0 { a } else { b }),
            _ => out.push_str(&rest[open..=close]),
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;
