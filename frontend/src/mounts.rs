//! `RUN --mount=…` values: CSV fields checked the way BuildKit checks them.
//!
//! A mount is looked at twice, as in BuildKit: when the Dockerfile is parsed
//! only the CSV syntax and `from=$…` are checked ([`check_syntax`]); while
//! the stage is lowered each value is expanded and the whole mount is
//! validated ([`parse`]).

/// The mount types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountType {
    /// A path from the context, a stage or an image.
    Bind,
    /// A persistent cache directory.
    Cache,
    /// A tmpfs.
    Tmpfs,
    /// A secret file or variable.
    Secret,
    /// An ssh agent socket.
    Ssh,
}

impl MountType {
    fn name(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        }
    }
}

/// Cache sharing modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Concurrent writers share the directory.
    Shared,
    /// Each concurrent writer gets its own directory.
    Private,
    /// Writers take turns.
    Locked,
}

/// One parsed `--mount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// `type=`.
    pub kind: MountType,
    /// `from=`: a stage, named context or image.
    pub from: Option<String>,
    /// `source=`/`src=`.
    pub source: Option<String>,
    /// `target=`/`dst=`/`destination=`, possibly empty.
    pub target: String,
    /// Read-only (explicit, or the type's default).
    pub readonly: bool,
    /// `size=` for tmpfs, in bytes.
    pub size: Option<u64>,
    /// `id=`.
    pub id: Option<String>,
    /// `sharing=`.
    pub sharing: Option<Sharing>,
    /// `required` for secrets and ssh.
    pub required: bool,
    /// `env=` for secrets.
    pub env: Option<String>,
    /// `mode=` (octal).
    pub mode: Option<u32>,
    /// `uid=`.
    pub uid: Option<u32>,
    /// `gid=`.
    pub gid: Option<u32>,
}

const KEYS: &[&str] = &[
    "type",
    "from",
    "source",
    "target",
    "readonly",
    "id",
    "sharing",
    "required",
    "size",
    "mode",
    "uid",
    "gid",
    "src",
    "dst",
    "destination",
    "ro",
    "rw",
    "readwrite",
    "env",
];

/// Splits one CSV record like Go's csv reader (as BuildKit's csvvalue does).
pub fn split_csv(value: &str) -> Result<Vec<String>, String> {
    let value = value
        .strip_suffix('\n')
        .map(|v| v.strip_suffix('\r').unwrap_or(v))
        .unwrap_or(value);
    if value.is_empty() {
        return Err("EOF".into());
    }
    let mut fields = Vec::new();
    let chars: Vec<char> = value.chars().collect();
    let mut i = 0;
    loop {
        let mut field = String::new();
        if chars.get(i) == Some(&'"') {
            i += 1;
            loop {
                match chars.get(i) {
                    Some('"') if chars.get(i + 1) == Some(&'"') => {
                        field.push('"');
                        i += 2;
                    }
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some(&c) => {
                        field.push(c);
                        i += 1;
                    }
                    None => {
                        return Err(format!(
                            "parse error on line 1, column {}: extraneous or missing \" in quoted-field",
                            i + 1
                        ))
                    }
                }
            }
            match chars.get(i) {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => i += 1,
                Some(_) => {
                    return Err(format!(
                    "parse error on line 1, column {}: extraneous or missing \" in quoted-field",
                    i + 1
                ))
                }
            }
        } else {
            loop {
                match chars.get(i) {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => {
                        i += 1;
                        break;
                    }
                    Some('"') => {
                        return Err(format!(
                            "parse error on line 1, column {}: bare \" in non-quoted-field",
                            i + 1
                        ))
                    }
                    Some(&c) => {
                        field.push(c);
                        i += 1;
                    }
                }
            }
        }
        fields.push(field);
    }
}

/// The checks BuildKit makes while parsing the Dockerfile, before any
/// expansion: the CSV syntax, and no variables in `from=`.
pub fn check_syntax(value: &str) -> Result<(), String> {
    let fields = split_csv(value).map_err(|e| format!("failed to parse csv mounts: {e}"))?;
    for field in fields {
        if let Some((key, v)) = field.split_once('=') {
            if key.eq_ignore_ascii_case("from") && v.find('$').is_some_and(|i| i + 1 < v.len()) {
                return Err(
                    "'from' doesn't support variable expansion, define alias stage instead".into(),
                );
            }
        }
    }
    Ok(())
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Parses a size with binary units (`64m`, `1g`, `1.5GiB`, `512`), like
/// go-units' RAMInBytes.
pub fn parse_ram_size(v: &str) -> Option<u64> {
    let num_end = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(num_end);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return None;
    }
    let number: f64 = num.parse().ok()?;
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    let mut chars = unit.chars();
    let mult: f64 = match chars.next() {
        None => 1.0,
        Some('k') => 1024.0,
        Some('m') => 1024f64.powi(2),
        Some('g') => 1024f64.powi(3),
        Some('t') => 1024f64.powi(4),
        Some('p') => 1024f64.powi(5),
        Some('b') if chars.as_str().is_empty() => 1.0,
        _ => return None,
    };
    let rest = chars.as_str();
    if !matches!(rest, "" | "b" | "i" | "ib") || (unit.len() == 1 && unit == "b" && rest == "b") {
        return None;
    }
    Some((number * mult) as u64)
}

/// Expands and validates one `--mount` value. `expand` is applied to every
/// `key=value` value before it is interpreted (keys and bare fields are
/// never expanded).
pub fn parse(
    value: &str,
    expand: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<MountSpec, String> {
    let fields = split_csv(value).map_err(|e| format!("failed to parse csv mounts: {e}"))?;
    let mut m = MountSpec {
        kind: MountType::Bind,
        from: None,
        source: None,
        target: String::new(),
        readonly: false,
        size: None,
        id: None,
        sharing: None,
        required: false,
        env: None,
        mode: None,
        uid: None,
        gid: None,
    };
    let mut ro_auto = true;
    for field in &fields {
        let Some((key, raw)) = field.split_once('=') else {
            match field.to_ascii_lowercase().as_str() {
                "readonly" | "ro" => {
                    m.readonly = true;
                    ro_auto = false;
                }
                "readwrite" | "rw" => {
                    m.readonly = false;
                    ro_auto = false;
                }
                "required" if matches!(m.kind, MountType::Secret | MountType::Ssh) => {
                    m.required = true
                }
                "required" => {
                    return Err(format!(
                        "unexpected key '{field}' for mount type '{}'",
                        m.kind.name()
                    ))
                }
                _ => return Err(format!("invalid field '{field}' must be a key=value pair")),
            }
            continue;
        };
        let key = key.to_ascii_lowercase();
        let v = expand(raw)?;
        let bool_value =
            |v: &str| parse_bool(v).ok_or_else(|| format!("invalid value for {key}: {v}"));
        match key.as_str() {
            "type" => {
                m.kind = match v.to_ascii_lowercase().as_str() {
                    "bind" => MountType::Bind,
                    "cache" => MountType::Cache,
                    "tmpfs" => MountType::Tmpfs,
                    "secret" => MountType::Secret,
                    "ssh" => MountType::Ssh,
                    _ => {
                        let mut e = format!("unsupported mount type {v:?}");
                        if let Some(s) = crate::instructions::suggest(
                            &v,
                            ["bind", "cache", "tmpfs", "secret", "ssh"].into_iter(),
                            true,
                        ) {
                            e = format!("{e} (did you mean {s}?)");
                        }
                        return Err(e);
                    }
                }
            }
            "from" => m.from = Some(v),
            "source" | "src" => m.source = Some(v),
            "target" | "dst" | "destination" => m.target = v,
            "readonly" | "ro" => {
                m.readonly = bool_value(&v)?;
                ro_auto = false;
            }
            "readwrite" | "rw" => {
                m.readonly = !bool_value(&v)?;
                ro_auto = false;
            }
            "required" => {
                if !matches!(m.kind, MountType::Secret | MountType::Ssh) {
                    return Err(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        m.kind.name()
                    ));
                }
                m.required = bool_value(&v)?;
            }
            "size" => {
                if m.kind != MountType::Tmpfs {
                    return Err(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        m.kind.name()
                    ));
                }
                m.size = Some(
                    parse_ram_size(&v).ok_or_else(|| format!("invalid value for {key}: {v}"))?,
                );
            }
            "id" => m.id = Some(v),
            "sharing" => {
                m.sharing = Some(match v.to_ascii_lowercase().as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    _ => {
                        let mut e = format!("unsupported sharing value {v:?}");
                        if let Some(s) = crate::instructions::suggest(
                            &v,
                            ["shared", "private", "locked"].into_iter(),
                            true,
                        ) {
                            e = format!("{e} (did you mean {s}?)");
                        }
                        return Err(e);
                    }
                })
            }
            "mode" => {
                m.mode = Some(
                    u32::from_str_radix(&v, 8)
                        .map_err(|_| format!("invalid value {v} for mode"))?,
                )
            }
            "uid" => {
                m.uid = Some(
                    v.parse()
                        .map_err(|_| format!("invalid value {v} for uid"))?,
                )
            }
            "gid" => {
                m.gid = Some(
                    v.parse()
                        .map_err(|_| format!("invalid value {v} for gid"))?,
                )
            }
            "env" => m.env = Some(v),
            _ => {
                let mut e = format!("unexpected key '{key}' in '{field}'");
                if let Some(s) = crate::instructions::suggest(&key, KEYS.iter().copied(), true) {
                    e = format!("{e} (did you mean {s}?)");
                }
                return Err(e);
            }
        }
    }
    if !matches!(
        m.kind,
        MountType::Secret | MountType::Ssh | MountType::Cache
    ) {
        let kind = m.kind.name();
        if m.mode.is_some() {
            return Err(format!("mode not allowed for {kind:?} type mounts"));
        }
        if m.uid.is_some() {
            return Err(format!("uid not allowed for {kind:?} type mounts"));
        }
        if m.gid.is_some() {
            return Err(format!("gid not allowed for {kind:?} type mounts"));
        }
    }
    if ro_auto {
        m.readonly = matches!(m.kind, MountType::Bind | MountType::Secret | MountType::Ssh);
    }
    if m.kind == MountType::Secret {
        if m.from.is_some() {
            return Err("secret mount should not have a from".into());
        }
        if m.sharing.is_some() {
            return Err("secret mount should not define sharing".into());
        }
        if m.source.is_none() && m.target.is_empty() && m.id.is_none() {
            return Err("invalid secret mount. one of source, target required".into());
        }
        if m.source.is_some() && m.id.is_some() {
            return Err("both source and id can't be set".into());
        }
    }
    if m.sharing.is_some() && m.kind != MountType::Cache {
        return Err(format!(
            "invalid cache sharing set for {} mount",
            m.kind.name()
        ));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &str) -> Result<MountSpec, String> {
        parse(v, &mut |s| Ok(s.to_string()))
    }

    #[test]
    fn defaults_per_type() {
        let m = p("type=cache,target=/root/.cache").unwrap();
        assert_eq!(m.kind, MountType::Cache);
        assert!(!m.readonly);
        let m = p("target=/src").unwrap();
        assert_eq!(m.kind, MountType::Bind);
        assert!(m.readonly);
        let m = p("type=bind,target=/src,rw").unwrap();
        assert!(!m.readonly);
        let m = p("type=secret,id=tok").unwrap();
        assert!(m.readonly);
    }

    #[test]
    fn errors_match_buildkit() {
        assert_eq!(
            p("type=secret").unwrap_err(),
            "invalid secret mount. one of source, target required"
        );
        assert_eq!(
            p("size=1m,type=tmpfs,target=/t").unwrap_err(),
            "unexpected key 'size' for mount type 'bind'"
        );
        assert_eq!(
            p("type=bind,target=/x,mode=0755").unwrap_err(),
            "mode not allowed for \"bind\" type mounts"
        );
        assert_eq!(
            p("type=cache,target=/x,sharing=lockd").unwrap_err(),
            "unsupported sharing value \"lockd\" (did you mean locked?)"
        );
        assert_eq!(
            p("type=cache,mode=abc").unwrap_err(),
            "invalid value abc for mode"
        );
        assert_eq!(
            p("type=nope").unwrap_err(),
            "unsupported mount type \"nope\""
        );
        assert_eq!(
            p("target=/x,bogus").unwrap_err(),
            "invalid field 'bogus' must be a key=value pair"
        );
        assert!(p("type=bind,targt=/x")
            .unwrap_err()
            .contains("did you mean target?"));
        assert_eq!(
            check_syntax("type=bind,from=$X,target=/x").unwrap_err(),
            "'from' doesn't support variable expansion, define alias stage instead"
        );
        assert!(check_syntax("type=bind,a\"b").is_err());
    }

    #[test]
    fn ram_sizes() {
        assert_eq!(parse_ram_size("64m"), Some(64 << 20));
        assert_eq!(parse_ram_size("1g"), Some(1 << 30));
        assert_eq!(parse_ram_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_ram_size("512"), Some(512));
        assert_eq!(parse_ram_size("x"), None);
    }
}
