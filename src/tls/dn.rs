//! Subject distinguished names as text, the way a TLS-terminating proxy passes them to the
//! ingest (docs/design.md §4): the platform identity is the CN, so the parser must not be fooled
//! by a `,` or `+` escaped inside another attribute's value, nor pick one of several CNs.
//!
//! Two forms are read:
//! - RFC 4514 (nginx `$ssl_client_s_dn`, OpenSSL `XN_FLAG_RFC2253`): `CN=edge-1,O=Acme\, Inc.,C=DE`.
//!   RDNs separated by `,`, multi-valued RDNs joined by `+`; escapes `\,` `\+` `\"` `\\` `\<`
//!   `\>` `\;` `\=` `\#` `\ ` and hex pairs (`\2C`, UTF-8 as several pairs); attribute types
//!   case-insensitive, or dotted OIDs (`2.5.4.3` is CN). Unescaped spaces around `,` `+` `=`
//!   are ignored (OpenSSL's other separator styles print `, ` and ` + `). A value given as
//!   `#` + hex (BER) is kept opaque: a CN in that form is refused, it is no usable name.
//! - The legacy slash form (nginx `$ssl_client_s_dn_legacy`, OpenSSL `X509_NAME_oneline`):
//!   `/C=DE/O=Acme/CN=edge-2`. It has no escaping, so a `/` inside a value is
//!   indistinguishable from a separator: a part without `=` is refused, and so are several CNs,
//!   but prefer the RFC 4514 form.

#[cfg(test)]
mod tests;

/// Why a DN was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnError {
    #[error("the distinguished name is empty")]
    Empty,
    #[error("attribute at byte {at} has no `=`")]
    MissingEquals { at: usize },
    #[error("attribute type {ty:?} at byte {at} is neither a name nor a dotted OID")]
    BadType { at: usize, ty: String },
    #[error("the distinguished name ends inside an escape (`\\`)")]
    DanglingEscape,
    #[error("invalid escape `\\{found}` at byte {at}")]
    BadEscape { at: usize, found: char },
    #[error("`{found}` at byte {at} must be escaped inside a value")]
    Unescaped { at: usize, found: char },
    #[error("`#` value at byte {at} is not an even number of hex digits")]
    BadHex { at: usize },
    #[error("the value of {ty} at byte {at} is not UTF-8 once unescaped")]
    NotUtf8 { at: usize, ty: String },
    #[error("the CN is given hex-encoded (`#…`), not as a usable name")]
    HexCommonName,
    #[error("{count} CN attributes: the identity is ambiguous")]
    SeveralCommonNames { count: usize },
}

/// An attribute value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A string, unescaped.
    Text(String),
    /// `#`-prefixed hex: the BER encoding of the value, left undecoded.
    Ber(Vec<u8>),
}

/// One `type=value` of an RDN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    /// As written (case kept); compare with [`Attribute::is`].
    pub ty: String,
    pub value: Value,
}

impl Attribute {
    /// Whether this attribute is of type `name` (case-insensitive) or its `oid`.
    pub fn is(&self, name: &str, oid: &str) -> bool {
        self.ty.eq_ignore_ascii_case(name) || self.ty == oid
    }

    fn is_common_name(&self) -> bool {
        self.is("CN", "2.5.4.3") || self.ty.eq_ignore_ascii_case("commonName")
    }
}

/// A parsed DN: its RDNs in the order written, each with its attributes.
pub type Rdns = Vec<Vec<Attribute>>;

/// Parses a DN in RFC 4514 form, or in the legacy slash form when it starts with `/`.
pub fn parse(dn: &str) -> Result<Rdns, DnError> {
    if dn.trim().is_empty() {
        return Err(DnError::Empty);
    }
    if dn.starts_with('/') {
        parse_legacy(dn)
    } else {
        Parser { s: dn, i: 0 }.dn()
    }
}

/// The CN of a DN: `Ok(None)` when there is none or it is empty; an error when the DN is
/// malformed, holds several CNs, or gives the CN hex-encoded.
pub fn common_name(dn: &str) -> Result<Option<String>, DnError> {
    let mut cns: Vec<Attribute> = parse(dn)?
        .into_iter()
        .flatten()
        .filter(Attribute::is_common_name)
        .collect();
    if cns.len() > 1 {
        return Err(DnError::SeveralCommonNames { count: cns.len() });
    }
    match cns.pop().map(|a| a.value) {
        None => Ok(None),
        Some(Value::Text(t)) if t.is_empty() => Ok(None),
        Some(Value::Text(t)) => Ok(Some(t)),
        Some(Value::Ber(_)) => Err(DnError::HexCommonName),
    }
}

/// Escapes `value` as an RFC 4514 attribute value (the inverse of the parser's unescaping).
#[cfg(test)]
pub fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (n, c) in value.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => {
                out.push('\\');
                out.push(c);
            }
            // Leading `#` would read as hex; leading/trailing spaces would be trimmed.
            '#' | ' ' if n == 0 => {
                out.push('\\');
                out.push(c);
            }
            ' ' if n == last => out.push_str("\\ "),
            c if c.is_control() => {
                let mut buf = [0; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

fn check_type(ty: &str, at: usize) -> Result<(), DnError> {
    let bad = || DnError::BadType {
        at,
        ty: ty.to_string(),
    };
    let first = ty.chars().next().ok_or_else(bad)?;
    let ok = if first.is_ascii_alphabetic() {
        ty.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    } else {
        ty.split('.')
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    if ok { Ok(()) } else { Err(bad()) }
}

/// The legacy form has no escapes: each `/`-separated part is `type=value` taken literally.
fn parse_legacy(dn: &str) -> Result<Rdns, DnError> {
    let mut rdns = Vec::new();
    let mut at = 1;
    for part in dn[1..].split('/') {
        let (ty, value) = part.split_once('=').ok_or(DnError::MissingEquals { at })?;
        let ty = ty.trim();
        check_type(ty, at)?;
        rdns.push(vec![Attribute {
            ty: ty.to_string(),
            value: Value::Text(value.to_string()),
        }]);
        at += part.len() + 1;
    }
    Ok(rdns)
}

struct Parser<'a> {
    s: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.s[self.i..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += c.len_utf8();
        Some(c)
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(' ') {
            self.i += 1;
        }
    }

    fn dn(mut self) -> Result<Rdns, DnError> {
        let mut rdns = vec![Vec::new()];
        loop {
            let attr = self.attribute()?;
            rdns.last_mut().expect("one RDN at least").push(attr);
            match self.bump() {
                None => return Ok(rdns),
                Some('+') => {}
                Some(',') => rdns.push(Vec::new()),
                Some(c) => unreachable!("a value ends only at a separator, not {c:?}"),
            }
        }
    }

    fn attribute(&mut self) -> Result<Attribute, DnError> {
        self.skip_spaces();
        let start = self.i;
        let eq = self.s[start..]
            .find(['=', ',', '+'])
            .map(|n| start + n)
            .filter(|&n| self.s.as_bytes()[n] == b'=')
            .ok_or(DnError::MissingEquals { at: start })?;
        let ty = self.s[start..eq].trim_end();
        check_type(ty, start)?;
        self.i = eq + 1;
        self.skip_spaces();
        let value_at = self.i;
        let value = if self.peek() == Some('#') {
            self.i += 1;
            Value::Ber(self.hex_value(value_at)?)
        } else {
            let bytes = self.string_value()?;
            Value::Text(String::from_utf8(bytes).map_err(|_| DnError::NotUtf8 {
                at: value_at,
                ty: ty.to_string(),
            })?)
        };
        Ok(Attribute {
            ty: ty.to_string(),
            value,
        })
    }

    /// `#` hexstring up to the next separator (trailing spaces ignored).
    fn hex_value(&mut self, at: usize) -> Result<Vec<u8>, DnError> {
        let rest = &self.s[self.i..];
        let end = rest.find([',', '+']).unwrap_or(rest.len());
        self.i += end;
        let hex = rest[..end].trim_end_matches(' ');
        // All ASCII hex digits first: slicing pairs of bytes must not split a character.
        let digits = hex.bytes().all(|b| b.is_ascii_hexdigit());
        if hex.is_empty() || !hex.len().is_multiple_of(2) || !digits {
            return Err(DnError::BadHex { at });
        }
        (0..hex.len())
            .step_by(2)
            .map(|k| u8::from_str_radix(&hex[k..k + 2], 16).map_err(|_| DnError::BadHex { at }))
            .collect()
    }

    /// A string value, unescaped, up to the next unescaped `,` or `+` (left unconsumed).
    fn string_value(&mut self) -> Result<Vec<u8>, DnError> {
        let mut out = Vec::new();
        // Bytes up to and including the last escaped or non-space character: unescaped
        // trailing spaces belong to the separator, not the value.
        let mut keep = 0;
        while let Some(c) = self.peek() {
            let at = self.i;
            match c {
                ',' | '+' => break,
                '\\' => {
                    self.i += 1;
                    let e = self.bump().ok_or(DnError::DanglingEscape)?;
                    match e {
                        ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' | '#' | ' ' => {
                            out.push(e as u8);
                        }
                        e if e.is_ascii_hexdigit() => {
                            let lo = self.bump().ok_or(DnError::DanglingEscape)?;
                            let (Some(hi), Some(lo)) = (e.to_digit(16), lo.to_digit(16)) else {
                                return Err(DnError::BadEscape { at, found: e });
                            };
                            // Both digits < 16: the pair is one byte.
                            out.push((hi * 16 + lo) as u8);
                        }
                        found => return Err(DnError::BadEscape { at, found }),
                    }
                    keep = out.len();
                }
                '"' | ';' | '<' | '>' | '\0' => return Err(DnError::Unescaped { at, found: c }),
                c => {
                    self.i += c.len_utf8();
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    if c != ' ' {
                        keep = out.len();
                    }
                }
            }
        }
        out.truncate(keep);
        Ok(out)
    }
}
