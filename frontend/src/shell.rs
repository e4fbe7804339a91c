//! Shell-style word expansion, the way Dockerfile instructions expand `$VAR`.
//!
//! The reference is BuildKit's `frontend/dockerfile/shell/lex.go`. Images
//! built by rbuild must come out identical to BuildKit's, so this module
//! reproduces that lexer's observable behaviour, quirks included: the
//! comments marked "BuildKit quirk" describe places where it differs from a
//! POSIX shell and where a "fix" here would change build results.

use std::collections::BTreeSet;

/// Where expansion looks variables up: the stage's ENV plus the ARGs in scope.
pub trait Env {
    /// The value of `name`, or `None` when it is unset (set-but-empty is `Some("")`).
    fn get(&self, name: &str) -> Option<&str>;
}

impl Env for [(String, String)] {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Env for Vec<(String, String)> {
    fn get(&self, name: &str) -> Option<&str> {
        Env::get(self.as_slice(), name)
    }
}

/// How a word is lexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexer {
    /// The escape character (`\` or `` ` ``, from the `# escape=` directive).
    pub escape: char,
    /// Keep quote characters in the output instead of removing them.
    pub raw_quotes: bool,
    /// Keep escape characters in the output instead of removing them.
    pub raw_escapes: bool,
    /// Leave `$VAR` untouched (as written) when VAR is unset.
    pub skip_unset_env: bool,
}

/// The result of expanding one word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expanded {
    /// The expanded text.
    pub value: String,
    /// Names referenced and set.
    pub matched: BTreeSet<String>,
    /// Names referenced but unset.
    pub unmatched: BTreeSet<String>,
}

/// The result of expanding a list of words.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpandedWords {
    /// The words after expansion and field splitting.
    pub words: Vec<String>,
    /// Names referenced and set.
    pub matched: BTreeSet<String>,
    /// Names referenced but unset.
    pub unmatched: BTreeSet<String>,
}

/// Why a word could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExpandError {
    /// The message, worded as BuildKit words it. BuildKit wraps it as
    /// `failed to process "<word>": <message>` (Go `%q` quoting); that
    /// context is left to the caller, which knows how it prints words.
    pub message: String,
    /// Byte offset in the input word where the problem is: the opening
    /// quote of an unterminated string, otherwise the `$` of the expansion
    /// at fault (for an unterminated nested word, the outermost one that
    /// BuildKit blames).
    pub offset: usize,
}

impl Lexer {
    /// A lexer with the given escape character and default options.
    pub fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset_env: false,
        }
    }

    /// Expands one word: quotes removed, escapes processed, variables
    /// substituted, no field splitting.
    ///
    /// `matched`/`unmatched` follow BuildKit's `ProcessWordWithMatches`:
    /// every name looked up counts, including ones in a default word that
    /// was not used and special parameters such as `$1` or `$$`.
    pub fn expand_word(&self, word: &str, env: &dyn Env) -> Result<Expanded, ExpandError> {
        let mut run = Expansion::new(self, false, env, word, false);
        let value = run.top_level()?;
        Ok(Expanded {
            value,
            matched: run.matched,
            unmatched: run.unmatched,
        })
    }

    /// Expands and splits into words on unquoted whitespace.
    ///
    /// Only whitespace that comes from the source or from a variable splits;
    /// quoted or escaped whitespace does not. Empty words are never
    /// produced, not even for `""`. BuildKit's `ProcessWords` does not report
    /// referenced names; the sets are filled here anyway, the same way as
    /// for [`Lexer::expand_word`].
    pub fn expand_words(&self, words: &str, env: &dyn Env) -> Result<ExpandedWords, ExpandError> {
        let mut run = Expansion::new(self, false, env, words, true);
        run.top_level()?;
        let words = run.fields.map(Fields::finish).unwrap_or_default();
        Ok(ExpandedWords {
            words,
            matched: run.matched,
            unmatched: run.unmatched,
        })
    }

    /// Like [`Lexer::expand_word`], but `'` and `"` are ordinary characters.
    ///
    /// This is BuildKit's `SkipProcessQuotes` mode, which it uses for the
    /// bodies of expanding heredocs: quotes there belong to the script being
    /// written out, not to the Dockerfile.
    pub fn expand_word_ignoring_quotes(
        &self,
        word: &str,
        env: &dyn Env,
    ) -> Result<Expanded, ExpandError> {
        let mut run = Expansion::new(self, true, env, word, false);
        let value = run.top_level()?;
        Ok(Expanded {
            value,
            matched: run.matched,
            unmatched: run.unmatched,
        })
    }
}

const MISSING_BRACE: &str = "syntax error: missing '}'";
const MISSING_SLASH: &str = "syntax error: missing '/' in ${}";
const BAD_SUBSTITUTION: &str = "syntax error: bad substitution";
const UNTERMINATED_SINGLE: &str =
    "unexpected end of statement while looking for matching single-quote";
const UNTERMINATED_DOUBLE: &str =
    "unexpected end of statement while looking for matching double-quote";

/// Go's `string(rune(-1))`: what BuildKit prints where it formats the
/// end-of-input marker as a character.
const EOF_CHAR: char = '\u{FFFD}';

/// Go's stacks grow on demand, ours do not: past this many nested `${...}`
/// words we give up with an error instead of overflowing the stack. Real
/// Dockerfiles nest a handful of levels.
const MAX_NESTING: usize = 100;

fn fail(message: impl Into<String>, offset: usize) -> ExpandError {
    ExpandError {
        message: message.into(),
        offset,
    }
}

fn unsupported_modifier(modifier: &str, offset: usize) -> ExpandError {
    fail(
        format!("unsupported modifier ({modifier}) in substitution"),
        offset,
    )
}

/// A cursor over the input that hands out characters and their byte offsets.
struct Cursor<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(src: &'a str) -> Self {
        // BuildKit quirk: Go's text/scanner drops a byte-order mark that
        // starts its input, so a word beginning with U+FEFF loses it.
        let pos = if src.starts_with('\u{FEFF}') {
            '\u{FEFF}'.len_utf8()
        } else {
            0
        };
        Cursor { src, pos }
    }

    fn peek(&self) -> Option<char> {
        self.src
            .get(self.pos..)
            .and_then(|rest| rest.chars().next())
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }
}

/// Field splitting for [`Lexer::expand_words`].
///
/// Text that came from a variable is split on whitespace; quoted and escaped
/// text never is. A word is only emitted when it has characters, so `""`
/// on its own yields no word at all (unlike a POSIX shell).
#[derive(Default)]
struct Fields {
    done: Vec<String>,
    current: String,
}

impl Fields {
    fn push_char(&mut self, c: char) {
        if !is_go_space(c) {
            self.current.push(c);
        } else if !self.current.is_empty() {
            self.done.push(std::mem::take(&mut self.current));
        }
    }

    fn push_splitting(&mut self, text: &str) {
        text.chars().for_each(|c| self.push_char(c));
    }

    fn push_verbatim(&mut self, text: &str) {
        self.current.push_str(text);
    }

    fn push_verbatim_char(&mut self, c: char) {
        self.current.push(c);
    }

    fn finish(mut self) -> Vec<String> {
        if !self.current.is_empty() {
            self.done.push(self.current);
        }
        self.done
    }
}

fn push_verbatim(out: &mut String, fields: Option<&mut Fields>, c: char) {
    if let Some(fields) = fields {
        fields.push_verbatim_char(c);
    }
    out.push(c);
}

/// The state of one expansion call.
struct Expansion<'a> {
    escape: char,
    raw_quotes: bool,
    skip_unset_env: bool,
    process_quotes: bool,
    /// Whether escape characters are kept; BuildKit switches this per
    /// sub-word (patterns keep them so the glob compiler can see `\*`).
    raw_escapes: bool,
    env: &'a dyn Env,
    cursor: Cursor<'a>,
    depth: usize,
    fields: Option<Fields>,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

impl<'a> Expansion<'a> {
    fn new(
        lexer: &Lexer,
        ignore_quotes: bool,
        env: &'a dyn Env,
        src: &'a str,
        split: bool,
    ) -> Self {
        Expansion {
            escape: lexer.escape,
            raw_quotes: lexer.raw_quotes,
            skip_unset_env: lexer.skip_unset_env,
            process_quotes: !ignore_quotes,
            raw_escapes: lexer.raw_escapes,
            env,
            cursor: Cursor::new(src),
            depth: 0,
            fields: split.then(Fields::default),
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        }
    }

    fn top_level(&mut self) -> Result<String, ExpandError> {
        self.scan(None)
    }

    fn lookup(&mut self, name: &str) -> Option<String> {
        match self.env.get(name) {
            Some(v) => {
                self.matched.insert(name.to_owned());
                Some(v.to_owned())
            }
            None => {
                self.unmatched.insert(name.to_owned());
                None
            }
        }
    }

    /// Expands up to `stop` (consumed) or the end of input when `stop` is
    /// `None`; the latter is the top level, the only level whose text feeds
    /// field splitting.
    fn scan(&mut self, stop: Option<char>) -> Result<String, ExpandError> {
        let top = stop.is_none();
        if !top {
            // BuildKit quirk: every nested word resets the word buffer that
            // BuildKit shares between levels, so in `expand_words` the
            // top-level word in progress is dropped: `a${X:-b}` yields `b`.
            if let Some(fields) = self.fields.as_mut() {
                fields.current.clear();
            }
        }
        let mut out = String::new();
        while let Some(c) = self.cursor.peek() {
            if Some(c) == stop {
                self.cursor.bump();
                return Ok(out);
            }
            if c == '$' {
                let value = self.dollar()?;
                if let (true, Some(fields)) = (top, self.fields.as_mut()) {
                    fields.push_splitting(&value);
                }
                out.push_str(&value);
                continue;
            }
            if self.process_quotes && (c == '\'' || c == '"') {
                let value = if c == '\'' {
                    self.single_quoted()?
                } else {
                    self.double_quoted()?
                };
                if let (true, Some(fields)) = (top, self.fields.as_mut()) {
                    fields.push_verbatim(&value);
                }
                out.push_str(&value);
                continue;
            }
            self.cursor.bump();
            let mut fields = if top { self.fields.as_mut() } else { None };
            if c != self.escape {
                if let Some(fields) = fields {
                    fields.push_char(c);
                }
                out.push(c);
                continue;
            }
            // Escaped characters never split words; a lone escape at the
            // very end is dropped (unless escapes are kept).
            if self.raw_escapes {
                push_verbatim(&mut out, fields.as_deref_mut(), c);
            }
            match self.cursor.bump() {
                Some(escaped) => push_verbatim(&mut out, fields, escaped),
                None => break,
            }
        }
        match stop {
            // Callers replace this with their own message, as BuildKit does.
            Some(s) => Err(fail(
                format!("unexpected end of statement while looking for matching {s}"),
                self.cursor.pos,
            )),
            None => Ok(out),
        }
    }

    /// A nested word inside `${...}`, ending at `stop`. When it fails at the
    /// end of input, BuildKit reports the enclosing expansion as
    /// unterminated instead of the inner problem.
    fn nested(
        &mut self,
        stop: char,
        raw_escapes: bool,
        dollar_at: usize,
        unterminated: &str,
    ) -> Result<String, ExpandError> {
        if self.depth >= MAX_NESTING {
            return Err(fail(
                "syntax error: expansions nested too deeply",
                dollar_at,
            ));
        }
        self.depth += 1;
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let result = self.scan(Some(stop));
        self.raw_escapes = saved;
        self.depth -= 1;
        result.map_err(|e| {
            if self.cursor.peek().is_none() {
                fail(unterminated, dollar_at)
            } else {
                e
            }
        })
    }

    fn single_quoted(&mut self) -> Result<String, ExpandError> {
        let start = self.cursor.pos;
        let mut out = String::new();
        if let Some(q) = self.cursor.bump() {
            if self.raw_quotes {
                out.push(q);
            }
        }
        loop {
            match self.cursor.bump() {
                None => return Err(fail(UNTERMINATED_SINGLE, start)),
                Some('\'') => {
                    if self.raw_quotes {
                        out.push('\'');
                    }
                    return Ok(out);
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quoted(&mut self) -> Result<String, ExpandError> {
        let start = self.cursor.pos;
        let mut out = String::new();
        if let Some(q) = self.cursor.bump() {
            if self.raw_quotes {
                out.push(q);
            }
        }
        loop {
            match self.cursor.peek() {
                None => return Err(fail(UNTERMINATED_DOUBLE, start)),
                Some('"') => {
                    self.cursor.bump();
                    if self.raw_quotes {
                        out.push('"');
                    }
                    return Ok(out);
                }
                Some('$') => {
                    let value = self.dollar()?;
                    out.push_str(&value);
                }
                Some(c) => {
                    self.cursor.bump();
                    let mut literal = c;
                    if c == self.escape {
                        if self.raw_escapes {
                            out.push(c);
                        }
                        match self.cursor.peek() {
                            // The missing closing quote is reported next turn.
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.escape => {
                                self.cursor.bump();
                                literal = n;
                            }
                            // BuildKit quirk: any other escaped character
                            // keeps the escape, and raw mode then emits it
                            // twice (`"\t"` becomes `\\t`).
                            Some(_) => {}
                        }
                    }
                    out.push(literal);
                }
            }
        }
    }

    /// Reads a parameter name: a run of digits, one special-parameter
    /// character, or letters/digits/underscores. May be empty.
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.cursor.peek() {
            if name.is_empty() && is_go_digit(c) {
                while let Some(d) = self.cursor.peek().filter(|&d| is_go_digit(d)) {
                    self.cursor.bump();
                    name.push(d);
                }
                return name;
            }
            if name.is_empty() && is_special_param(c) {
                self.cursor.bump();
                name.push(c);
                return name;
            }
            if !is_go_letter(c) && !is_go_digit(c) && c != '_' {
                break;
            }
            self.cursor.bump();
            name.push(c);
        }
        name
    }

    fn dollar(&mut self) -> Result<String, ExpandError> {
        let dollar_at = self.cursor.pos;
        self.cursor.bump();
        if self.cursor.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".to_owned());
            }
            return Ok(match self.lookup(&name) {
                Some(value) => value,
                None if self.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.cursor.bump();
        match self.cursor.peek() {
            None => return Err(fail(MISSING_BRACE, dollar_at)),
            Some('{' | '}' | ':') => return Err(fail(BAD_SUBSTITUTION, dollar_at)),
            Some(_) => {}
        }
        let name = self.name();
        let op = self.cursor.bump();
        let mut op_text = String::from(op.unwrap_or(EOF_CHAR));
        match op {
            Some('}') => Ok(match self.lookup(&name) {
                Some(value) => value,
                None if self.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            Some(':') => {
                let op = self.cursor.bump();
                op_text.push(op.unwrap_or(EOF_CHAR));
                self.modifier(dollar_at, &name, op, true, &op_text)
            }
            Some('+' | '-' | '?' | '#' | '%') => {
                self.modifier(dollar_at, &name, op, false, &op_text)
            }
            Some('/') => self.replace(dollar_at, &name),
            _ => Err(unsupported_modifier(&op_text, dollar_at)),
        }
    }

    /// `${name[:]op word}`. With a colon, `op` may be anything: BuildKit
    /// expands the word before it rejects an unknown operator.
    fn modifier(
        &mut self,
        dollar_at: usize,
        name: &str,
        op: Option<char>,
        colon: bool,
        op_text: &str,
    ) -> Result<String, ExpandError> {
        let trims = matches!(op, Some('#' | '%'));
        if colon && trims {
            return Err(unsupported_modifier(op_text, dollar_at));
        }
        let word = self.nested('}', trims, dollar_at, MISSING_BRACE)?;
        let value = self.lookup(name);
        if value.is_none() && self.skip_unset_env {
            // BuildKit quirk: this rebuilds the text from the *expanded*
            // word, and also covers operators it would otherwise reject.
            return Ok(format!("${{{name}{op_text}{word}}}"));
        }
        let unset_or_null = match value.as_deref() {
            None => true,
            Some(v) => colon && v.is_empty(),
        };
        match op {
            Some('-') => Ok(if unset_or_null {
                word
            } else {
                value.unwrap_or_default()
            }),
            Some('+') => Ok(if unset_or_null { String::new() } else { word }),
            Some('?') => match value {
                Some(v) if !(colon && v.is_empty()) => Ok(v),
                _ => {
                    let message = if !word.is_empty() {
                        word
                    } else if value.is_none() {
                        "is not allowed to be unset".to_owned()
                    } else {
                        "is not allowed to be empty".to_owned()
                    };
                    Err(fail(format!("{name}: {message}"), dollar_at))
                }
            },
            Some(c @ ('#' | '%')) => {
                let value = value.unwrap_or_default();
                // BuildKit quirk: `##`/`%%` is detected on the expanded word,
                // so a pattern that expands to a leading `#` turns greedy.
                let (pattern, greedy) = match word.strip_prefix(c) {
                    Some(rest) => (rest, true),
                    None => (word.as_str(), false),
                };
                let trimmed = if c == '#' {
                    trim_prefix(pattern, &value, greedy)
                } else {
                    trim_suffix(pattern, &value, greedy)
                };
                trimmed.map_err(|m| fail(m, dollar_at))
            }
            _ => Err(unsupported_modifier(op_text, dollar_at)),
        }
    }

    /// `${name/pattern/replacement}` and `${name//pattern/replacement}`.
    fn replace(&mut self, dollar_at: usize, name: &str) -> Result<String, ExpandError> {
        let all = self.cursor.peek() == Some('/');
        if all {
            self.cursor.bump();
        }
        let pattern = self.nested('/', true, dollar_at, MISSING_SLASH)?;
        let replacement = self.nested('}', true, dollar_at, MISSING_BRACE)?;
        let Some(value) = self.lookup(name) else {
            if self.skip_unset_env {
                // BuildKit quirk: `//` comes back as a single `/`.
                return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
            }
            return Ok(String::new());
        };
        let glob = Glob::compile(&pattern, true).map_err(|e| {
            fail(
                format!("invalid pattern ({pattern}) in substitution: {e}"),
                dollar_at,
            )
        })?;
        let text = Text::new(&value);
        let mut search = Search::new(&glob, &text);
        if !all {
            return Ok(match search.find(0) {
                Some((s, e)) => {
                    let mut out = String::with_capacity(value.len() + replacement.len());
                    out.push_str(text.slice(0, s));
                    out.push_str(&replacement);
                    out.push_str(text.slice(e, text.len()));
                    out
                }
                None => value,
            });
        }
        Ok(replace_all(&mut search, &text, &replacement))
    }
}

/// Go's `Regexp.ReplaceAllString` over our glob: an empty match right after
/// another match is not replaced, and the replacement is a Go template, so
/// `$0`/`${0}` insert the match, `$$` is a dollar and any other `$name`
/// inserts nothing (the compiled pattern has no capture groups).
fn replace_all(search: &mut Search<'_>, text: &Text<'_>, template: &str) -> String {
    let mut out = String::new();
    let mut last_end = 0;
    let mut from = 0;
    while from <= text.len() {
        let Some((start, end)) = search.find(from) else {
            break;
        };
        out.push_str(text.slice(last_end, start));
        if end > last_end || start == 0 {
            expand_template(&mut out, template, text.slice(start, end));
        }
        last_end = end;
        from = if end == from { from + 1 } else { end };
    }
    out.push_str(text.slice(last_end, text.len()));
    out
}

fn expand_template(out: &mut String, template: &str, matched: &str) {
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        match template_name(rest) {
            Some((name, after)) => {
                if name == "0" {
                    out.push_str(matched);
                }
                rest = after;
            }
            // Not a reference: the dollar is kept as text.
            None => out.push('$'),
        }
    }
    out.push_str(rest);
}

/// The group name after a `$` in a Go replacement template, and the rest.
fn template_name(s: &str) -> Option<(&str, &str)> {
    let (inner, braced) = match s.strip_prefix('{') {
        Some(inner) => (inner, true),
        None => (s, false),
    };
    let len: usize = inner
        .chars()
        .take_while(|&c| is_go_letter(c) || is_go_digit(c) || c == '_')
        .map(char::len_utf8)
        .sum();
    if len == 0 {
        return None;
    }
    let (name, after) = inner.split_at(len);
    if braced {
        after.strip_prefix('}').map(|after| (name, after))
    } else {
        Some((name, after))
    }
}

/// `${var#pattern}`: drop the shortest (or, greedy, longest) matching prefix.
fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, String> {
    let glob = Glob::compile(pattern, greedy)
        .map_err(|e| format!("invalid pattern ({pattern}) in substitution: {e}"))?;
    let text = Text::new(value);
    let mut search = Search::new(&glob, &text);
    Ok(match search.match_at(0) {
        Some(end) => text.slice(end, text.len()).to_owned(),
        None => value.to_owned(),
    })
}

/// `${var%pattern}`. BuildKit reverses both pattern and value and trims a
/// prefix; doing the same keeps tie-breaking between several `*` identical,
/// and error messages show the reversed pattern just as BuildKit's do.
fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, String> {
    let reversed_value: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reversed_value, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

/// Reverses a pattern but keeps each `\x` pair in order, so an escaped
/// character stays escaped.
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut units: Vec<&[char]> = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let len = if chars[i] == '\\' && i + 1 < chars.len() {
            2
        } else {
            1
        };
        units.push(&chars[i..i + len]);
        i += len;
    }
    units.iter().rev().flat_map(|u| u.iter()).collect()
}

/// One element of a compiled pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Atom {
    Lit(char),
    /// `?`: one character other than a newline (Go's `.`).
    Any,
    /// `*`: any run of non-newline characters (Go's `.*` or `.*?`).
    Star,
}

/// A shell pattern as BuildKit understands it: `*` and `?` are wildcards,
/// `\` escapes only `*`, `?` and `\` (and is dropped before `}` and `/`),
/// and `[...]` has no special meaning at all.
struct Glob {
    atoms: Vec<Atom>,
    greedy: bool,
}

impl Glob {
    fn compile(pattern: &str, greedy: bool) -> Result<Self, String> {
        let mut chars = pattern.chars().peekable();
        // Go's text/scanner again: a leading byte-order mark is skipped.
        chars.next_if_eq(&'\u{FEFF}');
        let mut atoms = Vec::with_capacity(pattern.len());
        while let Some(c) = chars.next() {
            atoms.push(match c {
                // `**` matches exactly what `*` does, in the same order of
                // preference; collapsing keeps runs of stars cheap.
                '*' if atoms.last() == Some(&Atom::Star) => continue,
                '*' => Atom::Star,
                '?' => Atom::Any,
                '\\' => {
                    if matches!(chars.peek(), Some('}' | '/')) {
                        continue;
                    }
                    match chars.next() {
                        Some(e @ ('*' | '?' | '\\')) => Atom::Lit(e),
                        other => {
                            return Err(format!("invalid escape '\\{}'", other.unwrap_or(EOF_CHAR)))
                        }
                    }
                }
                c => Atom::Lit(c),
            });
        }
        Ok(Glob { atoms, greedy })
    }
}

/// A value split into characters, remembering byte offsets for slicing.
struct Text<'a> {
    src: &'a str,
    chars: Vec<char>,
    offsets: Vec<usize>,
}

impl<'a> Text<'a> {
    fn new(src: &'a str) -> Self {
        let mut chars = Vec::with_capacity(src.len());
        let mut offsets = Vec::with_capacity(src.len() + 1);
        for (i, c) in src.char_indices() {
            chars.push(c);
            offsets.push(i);
        }
        offsets.push(src.len());
        Text {
            src,
            chars,
            offsets,
        }
    }

    fn len(&self) -> usize {
        self.chars.len()
    }

    /// The text between two character indices.
    fn slice(&self, from: usize, to: usize) -> &'a str {
        let start = self.offsets.get(from).copied().unwrap_or(self.src.len());
        let end = self.offsets.get(to).copied().unwrap_or(self.src.len());
        self.src.get(start..end).unwrap_or("")
    }
}

/// Leftmost-first matching, the semantics of Go's regexp (and of a
/// backtracking engine): the earliest start wins, and from that start the
/// first success in priority order, where a greedy `*` prefers to eat one
/// more character and a lazy one prefers to stop.
///
/// This is a Pike VM: all candidate threads advance together one character
/// at a time, kept in priority order, so time is O(pattern × text) and
/// memory O(pattern) whatever the input (patterns and values both come from
/// the Dockerfile and build args).
struct Search<'g> {
    atoms: &'g [Atom],
    greedy: bool,
    chars: &'g [char],
    /// Threads as (pattern position, match start), highest priority first.
    current: Vec<(usize, usize)>,
    next: Vec<(usize, usize)>,
    /// `queued[pc] == step` once position `pc` is queued for `step`; a
    /// later (lower-priority) thread reaching it is redundant.
    queued: Vec<usize>,
    /// Step counter, never reused across searches so `queued` needs no reset.
    clock: usize,
    lazy_stars: Vec<usize>,
}

impl<'g> Search<'g> {
    fn new(glob: &'g Glob, text: &'g Text<'_>) -> Self {
        Search {
            atoms: &glob.atoms,
            greedy: glob.greedy,
            chars: &text.chars,
            current: Vec::new(),
            next: Vec::new(),
            queued: vec![0; glob.atoms.len() + 1],
            clock: 0,
            lazy_stars: Vec::new(),
        }
    }

    /// The preferred match starting exactly at `start`; returns its end.
    fn match_at(&mut self, start: usize) -> Option<usize> {
        self.run(start, true).map(|(_, end)| end)
    }

    /// The leftmost-first match starting at or after `from`.
    fn find(&mut self, from: usize) -> Option<(usize, usize)> {
        self.run(from, false)
    }

    fn run(&mut self, from: usize, anchored: bool) -> Option<(usize, usize)> {
        let mut found = None;
        // The lists live in `self` only so that repeated searches reuse them.
        let mut current = std::mem::take(&mut self.current);
        let mut next = std::mem::take(&mut self.next);
        current.clear();
        next.clear();
        let mut pos = from;
        // Skip the step the previous search may have queued for.
        self.clock += 2;
        loop {
            let step = self.clock;
            if found.is_none() && (!anchored || pos == from) {
                self.enqueue(&mut current, step, 0, pos);
            }
            if current.is_empty() {
                break;
            }
            let next_char = self.chars.get(pos).copied();
            let eats = next_char.is_some_and(|c| c != '\n');
            for &(pc, start) in &current {
                let Some(&atom) = self.atoms.get(pc) else {
                    // Everything after this thread has lower priority.
                    found = Some((start, pos));
                    break;
                };
                let advance = match atom {
                    Atom::Lit(l) => next_char == Some(l),
                    Atom::Any | Atom::Star => eats,
                };
                if advance {
                    let to = if atom == Atom::Star { pc } else { pc + 1 };
                    self.enqueue(&mut next, step + 1, to, start);
                }
            }
            current.clear();
            std::mem::swap(&mut current, &mut next);
            if pos == self.chars.len() {
                break;
            }
            pos += 1;
            self.clock += 1;
        }
        self.current = current;
        self.next = next;
        found
    }

    /// Queues the thread at `pc` and everything reachable from it without
    /// consuming input, in priority order. Iterative: a pattern may hold
    /// thousands of consecutive `*`.
    fn enqueue(
        &mut self,
        list: &mut Vec<(usize, usize)>,
        step: usize,
        mut pc: usize,
        start: usize,
    ) {
        self.lazy_stars.clear();
        loop {
            if self.queued[pc] == step {
                break;
            }
            self.queued[pc] = step;
            if self.atoms.get(pc) != Some(&Atom::Star) {
                list.push((pc, start));
                break;
            }
            if self.greedy {
                list.push((pc, start));
            } else {
                self.lazy_stars.push(pc);
            }
            pc += 1;
        }
        // A lazy star prefers skipping, so its own thread ranks after all
        // that skipping reaches.
        list.extend(self.lazy_stars.drain(..).rev().map(|pc| (pc, start)));
    }
}

fn is_special_param(c: char) -> bool {
    matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

/// Go's `unicode.IsSpace`; it agrees with Rust's `char::is_whitespace`.
fn is_go_space(c: char) -> bool {
    c.is_whitespace()
}

/// Go's `unicode.IsLetter` (general category L). Rust's `is_alphabetic`
/// also accepts combining marks and letter numbers, which would make names
/// run on where BuildKit's stop.
fn is_go_letter(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphabetic()
    } else {
        in_table(LETTERS, c)
    }
}

/// Go's `unicode.IsDigit` (general category Nd); `is_numeric` is wider.
fn is_go_digit(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_digit()
    } else {
        in_table(DIGITS, c)
    }
}

fn in_table(table: &[(u32, u32)], c: char) -> bool {
    let c = u32::from(c);
    table
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

// Non-ASCII ranges of general categories L and Nd, generated from the
// Unicode 14.0 character database (Go 1.21+ uses 15.0; the difference is
// scripts added in 2022).
#[rustfmt::skip]
const LETTERS: &[(u32, u32)] = &[
    (0xAA, 0xAA), (0xB5, 0xB5), (0xBA, 0xBA), (0xC0, 0xD6), (0xD8, 0xF6),
    (0xF8, 0x2C1), (0x2C6, 0x2D1), (0x2E0, 0x2E4), (0x2EC, 0x2EC), (0x2EE, 0x2EE),
    (0x370, 0x374), (0x376, 0x377), (0x37A, 0x37D), (0x37F, 0x37F), (0x386, 0x386),
    (0x388, 0x38A), (0x38C, 0x38C), (0x38E, 0x3A1), (0x3A3, 0x3F5), (0x3F7, 0x481),
    (0x48A, 0x52F), (0x531, 0x556), (0x559, 0x559), (0x560, 0x588), (0x5D0, 0x5EA),
    (0x5EF, 0x5F2), (0x620, 0x64A), (0x66E, 0x66F), (0x671, 0x6D3), (0x6D5, 0x6D5),
    (0x6E5, 0x6E6), (0x6EE, 0x6EF), (0x6FA, 0x6FC), (0x6FF, 0x6FF), (0x710, 0x710),
    (0x712, 0x72F), (0x74D, 0x7A5), (0x7B1, 0x7B1), (0x7CA, 0x7EA), (0x7F4, 0x7F5),
    (0x7FA, 0x7FA), (0x800, 0x815), (0x81A, 0x81A), (0x824, 0x824), (0x828, 0x828),
    (0x840, 0x858), (0x860, 0x86A), (0x870, 0x887), (0x889, 0x88E), (0x8A0, 0x8C9),
    (0x904, 0x939), (0x93D, 0x93D), (0x950, 0x950), (0x958, 0x961), (0x971, 0x980),
    (0x985, 0x98C), (0x98F, 0x990), (0x993, 0x9A8), (0x9AA, 0x9B0), (0x9B2, 0x9B2),
    (0x9B6, 0x9B9), (0x9BD, 0x9BD), (0x9CE, 0x9CE), (0x9DC, 0x9DD), (0x9DF, 0x9E1),
    (0x9F0, 0x9F1), (0x9FC, 0x9FC), (0xA05, 0xA0A), (0xA0F, 0xA10), (0xA13, 0xA28),
    (0xA2A, 0xA30), (0xA32, 0xA33), (0xA35, 0xA36), (0xA38, 0xA39), (0xA59, 0xA5C),
    (0xA5E, 0xA5E), (0xA72, 0xA74), (0xA85, 0xA8D), (0xA8F, 0xA91), (0xA93, 0xAA8),
    (0xAAA, 0xAB0), (0xAB2, 0xAB3), (0xAB5, 0xAB9), (0xABD, 0xABD), (0xAD0, 0xAD0),
    (0xAE0, 0xAE1), (0xAF9, 0xAF9), (0xB05, 0xB0C), (0xB0F, 0xB10), (0xB13, 0xB28),
    (0xB2A, 0xB30), (0xB32, 0xB33), (0xB35, 0xB39), (0xB3D, 0xB3D), (0xB5C, 0xB5D),
    (0xB5F, 0xB61), (0xB71, 0xB71), (0xB83, 0xB83), (0xB85, 0xB8A), (0xB8E, 0xB90),
    (0xB92, 0xB95), (0xB99, 0xB9A), (0xB9C, 0xB9C), (0xB9E, 0xB9F), (0xBA3, 0xBA4),
    (0xBA8, 0xBAA), (0xBAE, 0xBB9), (0xBD0, 0xBD0), (0xC05, 0xC0C), (0xC0E, 0xC10),
    (0xC12, 0xC28), (0xC2A, 0xC39), (0xC3D, 0xC3D), (0xC58, 0xC5A), (0xC5D, 0xC5D),
    (0xC60, 0xC61), (0xC80, 0xC80), (0xC85, 0xC8C), (0xC8E, 0xC90), (0xC92, 0xCA8),
    (0xCAA, 0xCB3), (0xCB5, 0xCB9), (0xCBD, 0xCBD), (0xCDD, 0xCDE), (0xCE0, 0xCE1),
    (0xCF1, 0xCF2), (0xD04, 0xD0C), (0xD0E, 0xD10), (0xD12, 0xD3A), (0xD3D, 0xD3D),
    (0xD4E, 0xD4E), (0xD54, 0xD56), (0xD5F, 0xD61), (0xD7A, 0xD7F), (0xD85, 0xD96),
    (0xD9A, 0xDB1), (0xDB3, 0xDBB), (0xDBD, 0xDBD), (0xDC0, 0xDC6), (0xE01, 0xE30),
    (0xE32, 0xE33), (0xE40, 0xE46), (0xE81, 0xE82), (0xE84, 0xE84), (0xE86, 0xE8A),
    (0xE8C, 0xEA3), (0xEA5, 0xEA5), (0xEA7, 0xEB0), (0xEB2, 0xEB3), (0xEBD, 0xEBD),
    (0xEC0, 0xEC4), (0xEC6, 0xEC6), (0xEDC, 0xEDF), (0xF00, 0xF00), (0xF40, 0xF47),
    (0xF49, 0xF6C), (0xF88, 0xF8C), (0x1000, 0x102A), (0x103F, 0x103F), (0x1050, 0x1055),
    (0x105A, 0x105D), (0x1061, 0x1061), (0x1065, 0x1066), (0x106E, 0x1070), (0x1075, 0x1081),
    (0x108E, 0x108E), (0x10A0, 0x10C5), (0x10C7, 0x10C7), (0x10CD, 0x10CD), (0x10D0, 0x10FA),
    (0x10FC, 0x1248), (0x124A, 0x124D), (0x1250, 0x1256), (0x1258, 0x1258), (0x125A, 0x125D),
    (0x1260, 0x1288), (0x128A, 0x128D), (0x1290, 0x12B0), (0x12B2, 0x12B5), (0x12B8, 0x12BE),
    (0x12C0, 0x12C0), (0x12C2, 0x12C5), (0x12C8, 0x12D6), (0x12D8, 0x1310), (0x1312, 0x1315),
    (0x1318, 0x135A), (0x1380, 0x138F), (0x13A0, 0x13F5), (0x13F8, 0x13FD), (0x1401, 0x166C),
    (0x166F, 0x167F), (0x1681, 0x169A), (0x16A0, 0x16EA), (0x16F1, 0x16F8), (0x1700, 0x1711),
    (0x171F, 0x1731), (0x1740, 0x1751), (0x1760, 0x176C), (0x176E, 0x1770), (0x1780, 0x17B3),
    (0x17D7, 0x17D7), (0x17DC, 0x17DC), (0x1820, 0x1878), (0x1880, 0x1884), (0x1887, 0x18A8),
    (0x18AA, 0x18AA), (0x18B0, 0x18F5), (0x1900, 0x191E), (0x1950, 0x196D), (0x1970, 0x1974),
    (0x1980, 0x19AB), (0x19B0, 0x19C9), (0x1A00, 0x1A16), (0x1A20, 0x1A54), (0x1AA7, 0x1AA7),
    (0x1B05, 0x1B33), (0x1B45, 0x1B4C), (0x1B83, 0x1BA0), (0x1BAE, 0x1BAF), (0x1BBA, 0x1BE5),
    (0x1C00, 0x1C23), (0x1C4D, 0x1C4F), (0x1C5A, 0x1C7D), (0x1C80, 0x1C88), (0x1C90, 0x1CBA),
    (0x1CBD, 0x1CBF), (0x1CE9, 0x1CEC), (0x1CEE, 0x1CF3), (0x1CF5, 0x1CF6), (0x1CFA, 0x1CFA),
    (0x1D00, 0x1DBF), (0x1E00, 0x1F15), (0x1F18, 0x1F1D), (0x1F20, 0x1F45), (0x1F48, 0x1F4D),
    (0x1F50, 0x1F57), (0x1F59, 0x1F59), (0x1F5B, 0x1F5B), (0x1F5D, 0x1F5D), (0x1F5F, 0x1F7D),
    (0x1F80, 0x1FB4), (0x1FB6, 0x1FBC), (0x1FBE, 0x1FBE), (0x1FC2, 0x1FC4), (0x1FC6, 0x1FCC),
    (0x1FD0, 0x1FD3), (0x1FD6, 0x1FDB), (0x1FE0, 0x1FEC), (0x1FF2, 0x1FF4), (0x1FF6, 0x1FFC),
    (0x2071, 0x2071), (0x207F, 0x207F), (0x2090, 0x209C), (0x2102, 0x2102), (0x2107, 0x2107),
    (0x210A, 0x2113), (0x2115, 0x2115), (0x2119, 0x211D), (0x2124, 0x2124), (0x2126, 0x2126),
    (0x2128, 0x2128), (0x212A, 0x212D), (0x212F, 0x2139), (0x213C, 0x213F), (0x2145, 0x2149),
    (0x214E, 0x214E), (0x2183, 0x2184), (0x2C00, 0x2CE4), (0x2CEB, 0x2CEE), (0x2CF2, 0x2CF3),
    (0x2D00, 0x2D25), (0x2D27, 0x2D27), (0x2D2D, 0x2D2D), (0x2D30, 0x2D67), (0x2D6F, 0x2D6F),
    (0x2D80, 0x2D96), (0x2DA0, 0x2DA6), (0x2DA8, 0x2DAE), (0x2DB0, 0x2DB6), (0x2DB8, 0x2DBE),
    (0x2DC0, 0x2DC6), (0x2DC8, 0x2DCE), (0x2DD0, 0x2DD6), (0x2DD8, 0x2DDE), (0x2E2F, 0x2E2F),
    (0x3005, 0x3006), (0x3031, 0x3035), (0x303B, 0x303C), (0x3041, 0x3096), (0x309D, 0x309F),
    (0x30A1, 0x30FA), (0x30FC, 0x30FF), (0x3105, 0x312F), (0x3131, 0x318E), (0x31A0, 0x31BF),
    (0x31F0, 0x31FF), (0x3400, 0x4DBF), (0x4E00, 0xA48C), (0xA4D0, 0xA4FD), (0xA500, 0xA60C),
    (0xA610, 0xA61F), (0xA62A, 0xA62B), (0xA640, 0xA66E), (0xA67F, 0xA69D), (0xA6A0, 0xA6E5),
    (0xA717, 0xA71F), (0xA722, 0xA788), (0xA78B, 0xA7CA), (0xA7D0, 0xA7D1), (0xA7D3, 0xA7D3),
    (0xA7D5, 0xA7D9), (0xA7F2, 0xA801), (0xA803, 0xA805), (0xA807, 0xA80A), (0xA80C, 0xA822),
    (0xA840, 0xA873), (0xA882, 0xA8B3), (0xA8F2, 0xA8F7), (0xA8FB, 0xA8FB), (0xA8FD, 0xA8FE),
    (0xA90A, 0xA925), (0xA930, 0xA946), (0xA960, 0xA97C), (0xA984, 0xA9B2), (0xA9CF, 0xA9CF),
    (0xA9E0, 0xA9E4), (0xA9E6, 0xA9EF), (0xA9FA, 0xA9FE), (0xAA00, 0xAA28), (0xAA40, 0xAA42),
    (0xAA44, 0xAA4B), (0xAA60, 0xAA76), (0xAA7A, 0xAA7A), (0xAA7E, 0xAAAF), (0xAAB1, 0xAAB1),
    (0xAAB5, 0xAAB6), (0xAAB9, 0xAABD), (0xAAC0, 0xAAC0), (0xAAC2, 0xAAC2), (0xAADB, 0xAADD),
    (0xAAE0, 0xAAEA), (0xAAF2, 0xAAF4), (0xAB01, 0xAB06), (0xAB09, 0xAB0E), (0xAB11, 0xAB16),
    (0xAB20, 0xAB26), (0xAB28, 0xAB2E), (0xAB30, 0xAB5A), (0xAB5C, 0xAB69), (0xAB70, 0xABE2),
    (0xAC00, 0xD7A3), (0xD7B0, 0xD7C6), (0xD7CB, 0xD7FB), (0xF900, 0xFA6D), (0xFA70, 0xFAD9),
    (0xFB00, 0xFB06), (0xFB13, 0xFB17), (0xFB1D, 0xFB1D), (0xFB1F, 0xFB28), (0xFB2A, 0xFB36),
    (0xFB38, 0xFB3C), (0xFB3E, 0xFB3E), (0xFB40, 0xFB41), (0xFB43, 0xFB44), (0xFB46, 0xFBB1),
    (0xFBD3, 0xFD3D), (0xFD50, 0xFD8F), (0xFD92, 0xFDC7), (0xFDF0, 0xFDFB), (0xFE70, 0xFE74),
    (0xFE76, 0xFEFC), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A), (0xFF66, 0xFFBE), (0xFFC2, 0xFFC7),
    (0xFFCA, 0xFFCF), (0xFFD2, 0xFFD7), (0xFFDA, 0xFFDC), (0x10000, 0x1000B), (0x1000D, 0x10026),
    (0x10028, 0x1003A), (0x1003C, 0x1003D), (0x1003F, 0x1004D), (0x10050, 0x1005D), (0x10080, 0x100FA),
    (0x10280, 0x1029C), (0x102A0, 0x102D0), (0x10300, 0x1031F), (0x1032D, 0x10340), (0x10342, 0x10349),
    (0x10350, 0x10375), (0x10380, 0x1039D), (0x103A0, 0x103C3), (0x103C8, 0x103CF), (0x10400, 0x1049D),
    (0x104B0, 0x104D3), (0x104D8, 0x104FB), (0x10500, 0x10527), (0x10530, 0x10563), (0x10570, 0x1057A),
    (0x1057C, 0x1058A), (0x1058C, 0x10592), (0x10594, 0x10595), (0x10597, 0x105A1), (0x105A3, 0x105B1),
    (0x105B3, 0x105B9), (0x105BB, 0x105BC), (0x10600, 0x10736), (0x10740, 0x10755), (0x10760, 0x10767),
    (0x10780, 0x10785), (0x10787, 0x107B0), (0x107B2, 0x107BA), (0x10800, 0x10805), (0x10808, 0x10808),
    (0x1080A, 0x10835), (0x10837, 0x10838), (0x1083C, 0x1083C), (0x1083F, 0x10855), (0x10860, 0x10876),
    (0x10880, 0x1089E), (0x108E0, 0x108F2), (0x108F4, 0x108F5), (0x10900, 0x10915), (0x10920, 0x10939),
    (0x10980, 0x109B7), (0x109BE, 0x109BF), (0x10A00, 0x10A00), (0x10A10, 0x10A13), (0x10A15, 0x10A17),
    (0x10A19, 0x10A35), (0x10A60, 0x10A7C), (0x10A80, 0x10A9C), (0x10AC0, 0x10AC7), (0x10AC9, 0x10AE4),
    (0x10B00, 0x10B35), (0x10B40, 0x10B55), (0x10B60, 0x10B72), (0x10B80, 0x10B91), (0x10C00, 0x10C48),
    (0x10C80, 0x10CB2), (0x10CC0, 0x10CF2), (0x10D00, 0x10D23), (0x10E80, 0x10EA9), (0x10EB0, 0x10EB1),
    (0x10F00, 0x10F1C), (0x10F27, 0x10F27), (0x10F30, 0x10F45), (0x10F70, 0x10F81), (0x10FB0, 0x10FC4),
    (0x10FE0, 0x10FF6), (0x11003, 0x11037), (0x11071, 0x11072), (0x11075, 0x11075), (0x11083, 0x110AF),
    (0x110D0, 0x110E8), (0x11103, 0x11126), (0x11144, 0x11144), (0x11147, 0x11147), (0x11150, 0x11172),
    (0x11176, 0x11176), (0x11183, 0x111B2), (0x111C1, 0x111C4), (0x111DA, 0x111DA), (0x111DC, 0x111DC),
    (0x11200, 0x11211), (0x11213, 0x1122B), (0x11280, 0x11286), (0x11288, 0x11288), (0x1128A, 0x1128D),
    (0x1128F, 0x1129D), (0x1129F, 0x112A8), (0x112B0, 0x112DE), (0x11305, 0x1130C), (0x1130F, 0x11310),
    (0x11313, 0x11328), (0x1132A, 0x11330), (0x11332, 0x11333), (0x11335, 0x11339), (0x1133D, 0x1133D),
    (0x11350, 0x11350), (0x1135D, 0x11361), (0x11400, 0x11434), (0x11447, 0x1144A), (0x1145F, 0x11461),
    (0x11480, 0x114AF), (0x114C4, 0x114C5), (0x114C7, 0x114C7), (0x11580, 0x115AE), (0x115D8, 0x115DB),
    (0x11600, 0x1162F), (0x11644, 0x11644), (0x11680, 0x116AA), (0x116B8, 0x116B8), (0x11700, 0x1171A),
    (0x11740, 0x11746), (0x11800, 0x1182B), (0x118A0, 0x118DF), (0x118FF, 0x11906), (0x11909, 0x11909),
    (0x1190C, 0x11913), (0x11915, 0x11916), (0x11918, 0x1192F), (0x1193F, 0x1193F), (0x11941, 0x11941),
    (0x119A0, 0x119A7), (0x119AA, 0x119D0), (0x119E1, 0x119E1), (0x119E3, 0x119E3), (0x11A00, 0x11A00),
    (0x11A0B, 0x11A32), (0x11A3A, 0x11A3A), (0x11A50, 0x11A50), (0x11A5C, 0x11A89), (0x11A9D, 0x11A9D),
    (0x11AB0, 0x11AF8), (0x11C00, 0x11C08), (0x11C0A, 0x11C2E), (0x11C40, 0x11C40), (0x11C72, 0x11C8F),
    (0x11D00, 0x11D06), (0x11D08, 0x11D09), (0x11D0B, 0x11D30), (0x11D46, 0x11D46), (0x11D60, 0x11D65),
    (0x11D67, 0x11D68), (0x11D6A, 0x11D89), (0x11D98, 0x11D98), (0x11EE0, 0x11EF2), (0x11FB0, 0x11FB0),
    (0x12000, 0x12399), (0x12480, 0x12543), (0x12F90, 0x12FF0), (0x13000, 0x1342E), (0x14400, 0x14646),
    (0x16800, 0x16A38), (0x16A40, 0x16A5E), (0x16A70, 0x16ABE), (0x16AD0, 0x16AED), (0x16B00, 0x16B2F),
    (0x16B40, 0x16B43), (0x16B63, 0x16B77), (0x16B7D, 0x16B8F), (0x16E40, 0x16E7F), (0x16F00, 0x16F4A),
    (0x16F50, 0x16F50), (0x16F93, 0x16F9F), (0x16FE0, 0x16FE1), (0x16FE3, 0x16FE3), (0x17000, 0x187F7),
    (0x18800, 0x18CD5), (0x18D00, 0x18D08), (0x1AFF0, 0x1AFF3), (0x1AFF5, 0x1AFFB), (0x1AFFD, 0x1AFFE),
    (0x1B000, 0x1B122), (0x1B150, 0x1B152), (0x1B164, 0x1B167), (0x1B170, 0x1B2FB), (0x1BC00, 0x1BC6A),
    (0x1BC70, 0x1BC7C), (0x1BC80, 0x1BC88), (0x1BC90, 0x1BC99), (0x1D400, 0x1D454), (0x1D456, 0x1D49C),
    (0x1D49E, 0x1D49F), (0x1D4A2, 0x1D4A2), (0x1D4A5, 0x1D4A6), (0x1D4A9, 0x1D4AC), (0x1D4AE, 0x1D4B9),
    (0x1D4BB, 0x1D4BB), (0x1D4BD, 0x1D4C3), (0x1D4C5, 0x1D505), (0x1D507, 0x1D50A), (0x1D50D, 0x1D514),
    (0x1D516, 0x1D51C), (0x1D51E, 0x1D539), (0x1D53B, 0x1D53E), (0x1D540, 0x1D544), (0x1D546, 0x1D546),
    (0x1D54A, 0x1D550), (0x1D552, 0x1D6A5), (0x1D6A8, 0x1D6C0), (0x1D6C2, 0x1D6DA), (0x1D6DC, 0x1D6FA),
    (0x1D6FC, 0x1D714), (0x1D716, 0x1D734), (0x1D736, 0x1D74E), (0x1D750, 0x1D76E), (0x1D770, 0x1D788),
    (0x1D78A, 0x1D7A8), (0x1D7AA, 0x1D7C2), (0x1D7C4, 0x1D7CB), (0x1DF00, 0x1DF1E), (0x1E100, 0x1E12C),
    (0x1E137, 0x1E13D), (0x1E14E, 0x1E14E), (0x1E290, 0x1E2AD), (0x1E2C0, 0x1E2EB), (0x1E7E0, 0x1E7E6),
    (0x1E7E8, 0x1E7EB), (0x1E7ED, 0x1E7EE), (0x1E7F0, 0x1E7FE), (0x1E800, 0x1E8C4), (0x1E900, 0x1E943),
    (0x1E94B, 0x1E94B), (0x1EE00, 0x1EE03), (0x1EE05, 0x1EE1F), (0x1EE21, 0x1EE22), (0x1EE24, 0x1EE24),
    (0x1EE27, 0x1EE27), (0x1EE29, 0x1EE32), (0x1EE34, 0x1EE37), (0x1EE39, 0x1EE39), (0x1EE3B, 0x1EE3B),
    (0x1EE42, 0x1EE42), (0x1EE47, 0x1EE47), (0x1EE49, 0x1EE49), (0x1EE4B, 0x1EE4B), (0x1EE4D, 0x1EE4F),
    (0x1EE51, 0x1EE52), (0x1EE54, 0x1EE54), (0x1EE57, 0x1EE57), (0x1EE59, 0x1EE59), (0x1EE5B, 0x1EE5B),
    (0x1EE5D, 0x1EE5D), (0x1EE5F, 0x1EE5F), (0x1EE61, 0x1EE62), (0x1EE64, 0x1EE64), (0x1EE67, 0x1EE6A),
    (0x1EE6C, 0x1EE72), (0x1EE74, 0x1EE77), (0x1EE79, 0x1EE7C), (0x1EE7E, 0x1EE7E), (0x1EE80, 0x1EE89),
    (0x1EE8B, 0x1EE9B), (0x1EEA1, 0x1EEA3), (0x1EEA5, 0x1EEA9), (0x1EEAB, 0x1EEBB), (0x20000, 0x2A6DF),
    (0x2A700, 0x2B738), (0x2B740, 0x2B81D), (0x2B820, 0x2CEA1), (0x2CEB0, 0x2EBE0), (0x2F800, 0x2FA1D),
    (0x30000, 0x3134A),
];
#[rustfmt::skip]
const DIGITS: &[(u32, u32)] = &[
    (0x660, 0x669), (0x6F0, 0x6F9), (0x7C0, 0x7C9), (0x966, 0x96F), (0x9E6, 0x9EF),
    (0xA66, 0xA6F), (0xAE6, 0xAEF), (0xB66, 0xB6F), (0xBE6, 0xBEF), (0xC66, 0xC6F),
    (0xCE6, 0xCEF), (0xD66, 0xD6F), (0xDE6, 0xDEF), (0xE50, 0xE59), (0xED0, 0xED9),
    (0xF20, 0xF29), (0x1040, 0x1049), (0x1090, 0x1099), (0x17E0, 0x17E9), (0x1810, 0x1819),
    (0x1946, 0x194F), (0x19D0, 0x19D9), (0x1A80, 0x1A89), (0x1A90, 0x1A99), (0x1B50, 0x1B59),
    (0x1BB0, 0x1BB9), (0x1C40, 0x1C49), (0x1C50, 0x1C59), (0xA620, 0xA629), (0xA8D0, 0xA8D9),
    (0xA900, 0xA909), (0xA9D0, 0xA9D9), (0xA9F0, 0xA9F9), (0xAA50, 0xAA59), (0xABF0, 0xABF9),
    (0xFF10, 0xFF19), (0x104A0, 0x104A9), (0x10D30, 0x10D39), (0x11066, 0x1106F), (0x110F0, 0x110F9),
    (0x11136, 0x1113F), (0x111D0, 0x111D9), (0x112F0, 0x112F9), (0x11450, 0x11459), (0x114D0, 0x114D9),
    (0x11650, 0x11659), (0x116C0, 0x116C9), (0x11730, 0x11739), (0x118E0, 0x118E9), (0x11950, 0x11959),
    (0x11C50, 0x11C59), (0x11D50, 0x11D59), (0x11DA0, 0x11DA9), (0x16A60, 0x16A69), (0x16AC0, 0x16AC9),
    (0x16B50, 0x16B59), (0x1D7CE, 0x1D7FF), (0x1E140, 0x1E149), (0x1E2F0, 0x1E2F9), (0x1E950, 0x1E959),
    (0x1FBF0, 0x1FBF9),
];
