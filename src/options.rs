//! Parsing and checking the values of build flags, with buildx's syntax.

use std::collections::BTreeMap;

use rbuild_solver::graph::Platform;

/// A flag value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid {flag} value {value:?}: {reason}")]
pub struct OptionError {
    /// The flag, e.g. `--secret`.
    pub flag: &'static str,
    /// The value given.
    pub value: String,
    /// Why it is refused and what would work.
    pub reason: String,
}

fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> OptionError {
    OptionError {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Splits a CSV record the way Go's encoding/csv does for one line: commas
/// separate fields, a field starting with `"` is quoted and `""` inside it is
/// a literal quote.
pub fn split_csv(value: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("unterminated quoted field".into()),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => {}
                Some(c) => return Err(format!("unexpected {c:?} after a quoted field")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some(c) => field.push(c),
                }
            }
        }
        fields.push(field);
    }
}

/// Splits `k=v,k2=v2` into ordered pairs; a field without `=` gets an empty
/// value and `bare` set so callers can give it a meaning.
fn csv_pairs(
    flag: &'static str,
    value: &str,
) -> Result<Vec<(String, Option<String>)>, OptionError> {
    let fields = split_csv(value).map_err(|e| invalid(flag, value, e))?;
    Ok(fields
        .into_iter()
        .filter(|f| !f.is_empty())
        .map(|f| match f.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.to_string())),
            None => (f.trim().to_string(), None),
        })
        .collect())
}

/// `--build-arg NAME=VALUE` or `--build-arg NAME` (value from the
/// environment; skipped when the variable is unset, as buildx does).
pub fn build_args(
    values: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, OptionError> {
    let mut out = BTreeMap::new();
    for value in values {
        match value.split_once('=') {
            Some(("", _)) => {
                return Err(invalid(
                    "--build-arg",
                    value,
                    "the name before '=' is empty",
                ))
            }
            Some((k, v)) => {
                out.insert(k.to_string(), v.to_string());
            }
            None if value.is_empty() => {
                return Err(invalid("--build-arg", value, "expected NAME=VALUE or NAME"))
            }
            None => {
                if let Some(v) = env(value) {
                    out.insert(value.clone(), v);
                }
            }
        }
    }
    Ok(out)
}

/// `--label KEY=VALUE` (`KEY` alone is an empty value).
pub fn labels(values: &[String]) -> Result<BTreeMap<String, String>, OptionError> {
    let mut out = BTreeMap::new();
    for value in values {
        let (k, v) = value.split_once('=').unwrap_or((value, ""));
        if k.is_empty() {
            return Err(invalid("--label", value, "expected KEY=VALUE"));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// The platform to build for; one for now.
pub fn platform(values: &[String]) -> Result<Option<Platform>, OptionError> {
    let values: Vec<&String> = values.iter().filter(|v| !v.trim().is_empty()).collect();
    match values.as_slice() {
        [] => Ok(None),
        [one] => Platform::parse(one.trim())
            .map(Some)
            .map_err(|e| invalid("--platform", one, e.to_string())),
        [..] => Err(invalid(
            "--platform",
            &values
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(","),
            "building for several platforms at once is not supported yet; build once per platform",
        )),
    }
}

/// An `--output` destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// `local`, `tar`, `oci`, `docker`, `image`, `registry` or `cacheonly`.
    pub kind: String,
    /// The other attributes, e.g. `dest`, `name`, `compression`.
    pub attrs: BTreeMap<String, String>,
}

/// `-o type=…,dest=…`, or a bare path (`-` for a tar on stdout).
pub fn outputs(values: &[String]) -> Result<Vec<Output>, OptionError> {
    let mut out = Vec::new();
    for value in values {
        if !value.contains('=') {
            let kind = if value == "-" { "tar" } else { "local" };
            out.push(Output {
                kind: kind.into(),
                attrs: BTreeMap::from([("dest".to_string(), value.clone())]),
            });
            continue;
        }
        let mut kind = None;
        let mut attrs = BTreeMap::new();
        for (k, v) in csv_pairs("--output", value)? {
            let Some(v) = v else {
                return Err(invalid(
                    "--output",
                    value,
                    format!("{k:?} needs a value (key=value)"),
                ));
            };
            if k == "type" {
                kind = Some(v);
            } else {
                attrs.insert(k, v);
            }
        }
        let Some(kind) = kind else {
            return Err(invalid("--output", value, "type=… is required"));
        };
        const KINDS: &[&str] = &[
            "local",
            "tar",
            "oci",
            "docker",
            "image",
            "registry",
            "cacheonly",
        ];
        if !KINDS.contains(&kind.as_str()) {
            return Err(invalid(
                "--output",
                value,
                format!(
                    "unknown type {kind:?}; expected one of {}",
                    KINDS.join(", ")
                ),
            ));
        }
        if matches!(kind.as_str(), "local" | "tar") && !attrs.contains_key("dest") {
            return Err(invalid(
                "--output",
                value,
                format!("type={kind} needs dest=PATH"),
            ));
        }
        if let Some(c) = attrs.get("compression") {
            if !matches!(c.as_str(), "gzip" | "zstd" | "uncompressed" | "estargz") {
                return Err(invalid(
                    "--output",
                    value,
                    "compression must be gzip, zstd or uncompressed",
                ));
            }
        }
        if let Some(level) = attrs.get("compression-level") {
            if level.parse::<u8>().map_or(true, |l| l > 22) {
                return Err(invalid(
                    "--output",
                    value,
                    "compression-level must be 0..22",
                ));
            }
        }
        out.push(Output { kind, attrs });
    }
    Ok(out)
}

/// A `--cache-from` or `--cache-to` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSpec {
    /// `registry`, `local` or `inline`.
    pub kind: String,
    /// The other attributes (`ref`, `src`, `dest`, `mode`, …).
    pub attrs: BTreeMap<String, String>,
}

/// `type=registry,ref=…`, `type=local,src=…|dest=…`, `type=inline`; a bare
/// value is a registry reference.
pub fn cache_specs(flag: &'static str, values: &[String]) -> Result<Vec<CacheSpec>, OptionError> {
    let mut out = Vec::new();
    for value in values {
        if !value.contains('=') {
            out.push(CacheSpec {
                kind: "registry".into(),
                attrs: BTreeMap::from([("ref".to_string(), value.clone())]),
            });
            continue;
        }
        let mut kind = None;
        let mut attrs = BTreeMap::new();
        for (k, v) in csv_pairs(flag, value)? {
            let v = v.ok_or_else(|| invalid(flag, value, format!("{k:?} needs a value")))?;
            if k == "type" {
                kind = Some(v);
            } else {
                attrs.insert(k, v);
            }
        }
        let kind = kind.unwrap_or_else(|| "registry".to_string());
        match kind.as_str() {
            "registry" if !attrs.contains_key("ref") => {
                return Err(invalid(flag, value, "type=registry needs ref=NAME"))
            }
            "local" if flag == "--cache-from" && !attrs.contains_key("src") => {
                return Err(invalid(flag, value, "type=local needs src=DIR"))
            }
            "local" if flag == "--cache-to" && !attrs.contains_key("dest") => {
                return Err(invalid(flag, value, "type=local needs dest=DIR"))
            }
            "registry" | "local" | "inline" => {}
            other => {
                return Err(invalid(
                    flag,
                    value,
                    format!("unknown cache type {other:?}; expected registry, local or inline"),
                ))
            }
        }
        if let Some(mode) = attrs.get("mode") {
            if !matches!(mode.as_str(), "min" | "max") {
                return Err(invalid(flag, value, "mode must be min or max"));
            }
        }
        out.push(CacheSpec { kind, attrs });
    }
    Ok(out)
}

/// A `--secret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    /// The id RUN --mount=type=secret,id=… asks for.
    pub id: String,
    /// Where the value comes from.
    pub source: SecretSource,
}

/// Where a secret's value is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file.
    File(String),
    /// An environment variable.
    Env(String),
}

/// `id=ID[,src=FILE|,env=VAR][,type=file|env]`. Without src or env, the
/// value comes from the environment variable named ID if set, else the
/// file named ID (buildx's rule).
pub fn secrets(values: &[String]) -> Result<Vec<SecretSpec>, OptionError> {
    let mut out = Vec::new();
    for value in values {
        let mut id = None;
        let mut src = None;
        let mut env = None;
        let mut kind = None;
        for (k, v) in csv_pairs("--secret", value)? {
            let v = v.ok_or_else(|| invalid("--secret", value, format!("{k:?} needs a value")))?;
            match k.as_str() {
                "id" => id = Some(v),
                "src" | "source" => src = Some(v),
                "env" => env = Some(v),
                "type" => {
                    if !matches!(v.as_str(), "file" | "env") {
                        return Err(invalid("--secret", value, "type must be file or env"));
                    }
                    kind = Some(v)
                }
                other => {
                    return Err(invalid(
                        "--secret",
                        value,
                        format!("unknown key {other:?}; expected id, src, env or type"),
                    ))
                }
            }
        }
        let id = match (id, &src, &env) {
            (Some(id), _, _) => id,
            (None, Some(src), _) => std::path::Path::new(src)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            (None, None, Some(env)) => env.clone(),
            (None, None, None) => return Err(invalid("--secret", value, "id=… is required")),
        };
        if id.is_empty() {
            return Err(invalid("--secret", value, "the id is empty"));
        }
        let source = match (src, env, kind.as_deref()) {
            (Some(src), None, Some("env")) => SecretSource::Env(src),
            (Some(src), None, _) => SecretSource::File(src),
            (None, Some(env), _) => SecretSource::Env(env),
            (Some(_), Some(_), _) => {
                return Err(invalid(
                    "--secret",
                    value,
                    "give either src= or env=, not both",
                ))
            }
            (None, None, Some("file")) => SecretSource::File(id.clone()),
            (None, None, _) => {
                if std::env::var_os(&id).is_some() {
                    SecretSource::Env(id.clone())
                } else {
                    SecretSource::File(id.clone())
                }
            }
        };
        out.push(SecretSpec { id, source });
    }
    Ok(out)
}

/// An `--ssh` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSpec {
    /// The id (`default` when not named).
    pub id: String,
    /// Agent sockets or key files; empty means `$SSH_AUTH_SOCK`.
    pub paths: Vec<String>,
}

/// `default`, `ID`, `ID=SOCKET` or `ID=KEY[,KEY]`.
pub fn ssh_specs(values: &[String]) -> Result<Vec<SshSpec>, OptionError> {
    let mut out = Vec::new();
    for value in values {
        let (id, paths) = match value.split_once('=') {
            Some((id, paths)) => (
                id.to_string(),
                paths
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(String::from)
                    .collect(),
            ),
            None => (value.clone(), Vec::new()),
        };
        if id.is_empty() || id.contains(',') {
            return Err(invalid(
                "--ssh",
                value,
                "expected default, ID or ID=PATH[,PATH]",
            ));
        }
        out.push(SshSpec { id, paths });
    }
    Ok(out)
}

/// A `--build-context` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextValue {
    /// A local directory.
    Path(String),
    /// `docker-image://REF`.
    Image(String),
    /// `oci-layout://DIR[:TAG|@DIGEST]`.
    OciLayout(String),
    /// A git or http(s) URL.
    Url(String),
}

/// `NAME=VALUE` pairs for `--build-context`.
pub fn build_contexts(values: &[String]) -> Result<BTreeMap<String, ContextValue>, OptionError> {
    let mut out = BTreeMap::new();
    for value in values {
        let Some((name, v)) = value.split_once('=') else {
            return Err(invalid("--build-context", value, "expected NAME=VALUE"));
        };
        if name.is_empty() || v.is_empty() {
            return Err(invalid("--build-context", value, "expected NAME=VALUE"));
        }
        let ctx = if let Some(r) = v.strip_prefix("docker-image://") {
            ContextValue::Image(r.to_string())
        } else if let Some(p) = v.strip_prefix("oci-layout://") {
            ContextValue::OciLayout(p.to_string())
        } else if v.starts_with("https://")
            || v.starts_with("http://")
            || v.starts_with("git@")
            || v.starts_with("git://")
        {
            ContextValue::Url(v.to_string())
        } else {
            ContextValue::Path(v.to_string())
        };
        out.insert(name.to_ascii_lowercase(), ctx);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_like_go() {
        assert_eq!(split_csv("a=1,b=2").unwrap(), ["a=1", "b=2"]);
        assert_eq!(split_csv(r#""a=1,2",b"#).unwrap(), ["a=1,2", "b"]);
        assert_eq!(split_csv(r#""x""y""#).unwrap(), [r#"x"y"#]);
        assert!(split_csv(r#""open"#).is_err());
    }

    #[test]
    fn build_arg_forms() {
        let env = |k: &str| (k == "FROM_ENV").then(|| "v".to_string());
        let args = build_args(
            &[
                "A=1".into(),
                "B=".into(),
                "FROM_ENV".into(),
                "MISSING".into(),
            ],
            env,
        )
        .unwrap();
        assert_eq!(args.get("A").map(String::as_str), Some("1"));
        assert_eq!(args.get("B").map(String::as_str), Some(""));
        assert_eq!(args.get("FROM_ENV").map(String::as_str), Some("v"));
        assert!(!args.contains_key("MISSING"));
        assert!(build_args(&["=x".into()], env).is_err());
    }

    #[test]
    fn outputs_and_shorthands() {
        let o = outputs(&["out".into(), "-".into(), "type=oci,dest=a.tar".into()]).unwrap();
        assert_eq!(o[0].kind, "local");
        assert_eq!(o[1].kind, "tar");
        assert_eq!(o[2].attrs["dest"], "a.tar");
        assert!(outputs(&["type=bogus".into()]).is_err());
        assert!(outputs(&["type=local".into()]).is_err());
        assert!(outputs(&["type=oci,dest=x,compression=lz4".into()]).is_err());
    }

    #[test]
    fn secrets_need_an_id() {
        let s = secrets(&["id=a,src=/tmp/x".into(), "id=b,env=HOME".into()]).unwrap();
        assert_eq!(s[0].source, SecretSource::File("/tmp/x".into()));
        assert_eq!(s[1].source, SecretSource::Env("HOME".into()));
        assert!(secrets(&["src=".into()]).is_err());
        assert!(secrets(&["id=a,bogus=1".into()]).is_err());
    }

    #[test]
    fn platforms() {
        assert!(platform(&["linux/amd64".into()]).unwrap().is_some());
        assert!(platform(&["linux/amd64".into(), "linux/arm64".into()]).is_err());
        assert!(platform(&["windows/bogus".into()]).is_err());
    }
}
