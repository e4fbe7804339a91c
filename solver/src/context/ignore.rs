//! `.dockerignore`, with Docker's semantics exactly.
//!
//! Reading follows `moby/patternmatcher/ignorefile.ReadAll` (which BuildKit's
//! Dockerfile frontend and the docker CLI both use): a UTF-8 BOM is dropped,
//! a line whose *first byte* is `#` is a comment (an indented `#` is a
//! pattern), each line is trimmed, a leading `!` marks an exception and the
//! rest is trimmed again, then `filepath.Clean`ed, and one leading `/` is
//! removed. Blank lines are skipped. There are no dir-only patterns: Clean
//! drops a trailing `/`, so `build/` and `build` are the same pattern.
//!
//! Matching follows `patternmatcher.New` and `Pattern.compile`: each pattern
//! is classified as an exact string, a prefix (`foo/**`, `foo**`), a suffix
//! (a leading `**` with nothing glob-like after it, so `**foo` also matches
//! `xfoo`) or a regular expression built by substitution (`*` → `[^/]*`,
//! `?` → `[^/]`, `**` → `(.*/)?` or a trailing `.*`, `[`/`]`/`^` passed
//! through, `\x` passed through as a regex escape). Patterns are applied in
//! order and the last one that matches decides.
//!
//! Paths are evaluated the way BuildKit's context walker
//! (`tonistiigi/fsutil` filter.go) does, with
//! `MatchesUsingParentResults`: a path inherits, per pattern, whether that
//! pattern matched its parent directory. So `dir` excludes everything under
//! `dir`, and `!dir/keep` re-includes `dir/keep/**`. This differs from
//! `MatchesOrParentMatches` (used by the legacy builder) in one corner: a
//! pattern skipped while evaluating the parent (because the parent was
//! already excluded) is not inherited, so `["dir", "!dir/keep", "dir"]`
//! leaves `dir/keep/x` included under BuildKit.

use super::pathmatch::{clean, filepath_match};
use super::regex::Regex;
use super::{Error, Result};

/// Parsed `.dockerignore` rules.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    /// The lines as `ignorefile.ReadAll` returns them (with `!`).
    lines: Vec<String>,
    patterns: Vec<Pattern>,
    /// Whether any `!` pattern exists.
    has_exceptions: bool,
    /// Whether every exception, less a trailing `/**` or `/*`, is a plain
    /// path: then an excluded directory only needs walking if an exception
    /// names something inside it (fsutil's `onlyPrefixExcludeExceptions`).
    only_prefix_exceptions: bool,
}

#[derive(Debug, Clone)]
struct Pattern {
    /// Cleaned, without the `!`.
    text: String,
    exclusion: bool,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Exact,
    /// `text` minus its trailing `**`.
    Prefix(String),
    /// `text` minus its leading `**`.
    Suffix(String),
    Regex(Regex),
}

/// Per pattern, whether it matched a directory; handed down to children.
pub(crate) type MatchInfo = Vec<bool>;

impl DockerIgnore {
    /// No patterns: nothing excluded.
    pub fn empty() -> Self {
        DockerIgnore {
            only_prefix_exceptions: true,
            ..Default::default()
        }
    }

    /// Parses `.dockerignore` text. Fails on a lone `!` and on patterns Go's
    /// `filepath.Match` or `regexp.Compile` would refuse (Docker reports the
    /// latter only when a path is first matched; rbuild reports it up front).
    pub fn parse(text: &str) -> Result<Self> {
        Self::from_lines(Self::read_all(text))
    }

    /// `ignorefile.ReadAll`: the pattern lines of `.dockerignore` text,
    /// cleaned, with `!` kept, before any validation.
    pub fn read_all(text: &str) -> Vec<String> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut lines = Vec::new();
        // bufio.ScanLines: split on \n, drop one \r before it.
        for raw in text.split('\n') {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.starts_with('#') {
                continue;
            }
            let mut pattern = line.trim();
            if pattern.is_empty() {
                continue;
            }
            let invert = pattern.starts_with('!');
            if invert {
                pattern = pattern[1..].trim();
            }
            let mut p = String::new();
            if !pattern.is_empty() {
                p = clean(pattern);
                if p.len() > 1 && p.starts_with('/') {
                    p.remove(0);
                }
            }
            if invert {
                p.insert(0, '!');
            }
            lines.push(p);
        }
        lines
    }

    /// Builds the matcher from already-read pattern lines, like
    /// `patternmatcher.New`.
    pub fn from_lines(lines: Vec<String>) -> Result<Self> {
        let mut patterns = Vec::with_capacity(lines.len());
        for line in &lines {
            let p = line.trim();
            if p.is_empty() {
                continue;
            }
            let mut p = clean(p);
            let exclusion = p.starts_with('!');
            if exclusion {
                if p.len() == 1 {
                    return Err(Error::BadIgnorePattern {
                        pattern: line.clone(),
                        reason: "illegal exclusion pattern: \"!\"".into(),
                    });
                }
                p.remove(0);
            }
            if let Err(e) = filepath_match(&p, ".") {
                return Err(Error::BadIgnorePattern {
                    pattern: line.clone(),
                    reason: e.to_string(),
                });
            }
            let kind = compile(&p).map_err(|reason| Error::BadIgnorePattern {
                pattern: line.clone(),
                reason,
            })?;
            patterns.push(Pattern {
                text: p,
                exclusion,
                kind,
            });
        }
        let has_exceptions = patterns.iter().any(|p| p.exclusion);
        let only_prefix_exceptions = patterns
            .iter()
            .filter(|p| p.exclusion)
            .all(|p| !without_trailing_glob(&p.text).contains(['*', '[', ']', '?', '^', '\\']));
        Ok(DockerIgnore {
            lines,
            patterns,
            has_exceptions,
            only_prefix_exceptions,
        })
    }

    /// The patterns as read (cleaned, `!` kept), in file order.
    pub fn patterns(&self) -> &[String] {
        &self.lines
    }

    /// Whether there are no patterns at all.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `rel_path` (relative to the context root, `/`-separated) is
    /// left out of the context. `is_dir` is accepted for callers' clarity
    /// but, as in Docker, changes nothing: patterns have no dir-only form.
    ///
    /// An excluded directory may still contain re-included files; see
    /// [`DockerIgnore::may_include_under`].
    pub fn is_excluded(&self, rel_path: &str, is_dir: bool) -> bool {
        let _ = is_dir;
        let path = clean(rel_path.trim_start_matches('/'));
        if self.patterns.is_empty() || path == "." {
            return false;
        }
        let mut info: Option<MatchInfo> = None;
        let mut excluded = false;
        let mut end = 0;
        // Evaluate each ancestor in turn, as the walker would meet them.
        while end < path.len() {
            end = path[end..].find('/').map_or(path.len(), |i| end + i);
            let (m, next) = self.step(&path[..end], info.as_deref());
            excluded = m;
            info = Some(next);
            end += 1;
        }
        excluded
    }

    /// Whether walking into the excluded directory `rel_dir` can find
    /// re-included entries: false without `!` patterns; true if some
    /// exception has wildcards (BuildKit then always walks); otherwise true
    /// only if an exception names a path inside `rel_dir`.
    pub fn may_include_under(&self, rel_dir: &str) -> bool {
        if !self.has_exceptions {
            return false;
        }
        if !self.only_prefix_exceptions {
            return true;
        }
        let dir = clean(rel_dir.trim_start_matches('/'));
        let dir_slash = format!("{dir}/");
        self.patterns
            .iter()
            .filter(|p| p.exclusion)
            .any(|p| format!("{}/", without_trailing_glob(&p.text)).starts_with(&dir_slash))
    }

    /// `MatchesUsingParentResults`: whether `path` is excluded, given the
    /// per-pattern results of its parent directory (`None` at the top).
    pub(crate) fn step(&self, path: &str, parent: Option<&[bool]>) -> (bool, MatchInfo) {
        let mut matched = false;
        let mut info = vec![false; self.patterns.len()];
        for (i, p) in self.patterns.iter().enumerate() {
            let mut m = parent.is_some_and(|pm| pm.get(i).copied().unwrap_or(false));
            if !m {
                // An inclusion cannot change an excluded path, nor an
                // exception an included one; moby skips those (and, through
                // `continue`, does not record them for the children).
                if p.exclusion != matched {
                    continue;
                }
                m = p.matches(path);
                if !m && parent.is_none() {
                    // No parent results: try each ancestor directory.
                    if let Some(idx) = path.rfind('/') {
                        let parent_path = &path[..idx];
                        let mut end = 0;
                        while end < parent_path.len() {
                            end = parent_path[end..]
                                .find('/')
                                .map_or(parent_path.len(), |i| end + i);
                            if p.matches(&parent_path[..end]) {
                                m = true;
                                break;
                            }
                            end += 1;
                        }
                    }
                }
            }
            info[i] = m;
            if m {
                matched = !p.exclusion;
            }
        }
        (matched, info)
    }
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact => path == self.text,
            Kind::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Kind::Suffix(suffix) => {
                path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/').is_some_and(|s| path == s)
            }
            Kind::Regex(re) => re.is_match(path),
        }
    }
}

/// fsutil's `patternWithoutTrailingGlob`.
fn without_trailing_glob(p: &str) -> &str {
    let p = p.strip_suffix("/**").unwrap_or(p);
    p.strip_suffix("/*").unwrap_or(p)
}

/// moby's `Pattern.compile`: classify, and build the regex text if needed.
fn compile(pattern: &str) -> std::result::Result<Kind, String> {
    #[derive(PartialEq, Clone, Copy)]
    enum T {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut re = String::from("^");
    let mut kind = T::Exact;
    let mut i = 0;
    let mut iteration = 0;
    while i < chars.len() {
        let ch = chars[i];
        i += 1;
        match ch {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                // `**/` is treated as `**`.
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i >= chars.len() {
                    if kind == T::Exact {
                        kind = T::Prefix;
                    } else {
                        re.push_str(".*");
                        kind = T::Regex;
                    }
                } else {
                    re.push_str("(.*/)?");
                    kind = T::Regex;
                }
                if iteration == 0 {
                    kind = T::Suffix;
                }
            }
            '*' => {
                re.push_str("[^/]*");
                kind = T::Regex;
            }
            '?' => {
                re.push_str("[^/]");
                kind = T::Regex;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                re.push('\\');
                re.push(ch);
            }
            '\\' => {
                if let Some(&next) = chars.get(i) {
                    i += 1;
                    re.push('\\');
                    re.push(next);
                    kind = T::Regex;
                } else {
                    re.push('\\');
                }
            }
            '[' | ']' => {
                re.push(ch);
                kind = T::Regex;
            }
            c => re.push(c),
        }
        iteration += 1;
    }
    Ok(match kind {
        T::Exact => Kind::Exact,
        T::Prefix => Kind::Prefix(pattern[..pattern.len() - 2].to_string()),
        T::Suffix => Kind::Suffix(pattern[2..].to_string()),
        T::Regex => {
            re.push('$');
            Kind::Regex(Regex::new(&re).map_err(|e| format!("{} (as Go regexp `{re}`)", e.0))?)
        }
    })
}
