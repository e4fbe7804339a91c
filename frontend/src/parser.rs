//! The syntax layer: physical lines to instruction nodes.
//!
//! This follows BuildKit's line parser rule for rule, because every quirk of it
//! (continuations that skip comment lines, flags only before the arguments,
//! JSON detection, heredoc detection on the joined line) is observable in the
//! images people build. What it adds is byte spans: every word, flag and
//! heredoc knows where it came from, so errors can name line and column.

use crate::error::{Error, Result, Warning};
use crate::shell::Lexer;
use crate::source::Span;

/// The parser directives found at the top of the file.
#[derive(Debug, Clone, Default)]
pub struct Directives {
    /// `# syntax=` (the frontend image reference; rbuild has one frontend).
    pub syntax: Option<Directive>,
    /// `# escape=`.
    pub escape: Option<Directive>,
    /// `# check=` (build check configuration).
    pub check: Option<Directive>,
}

/// One parser directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// Its value, trimmed.
    pub value: String,
    /// Where the value is.
    pub span: Span,
}

/// A word of an instruction's arguments, with quotes and escapes as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    /// The text.
    pub text: String,
    /// Where it is in the source.
    pub span: Span,
}

/// A `--name=value` flag before an instruction's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFlag {
    /// The flag as BuildKit sees it: quotes removed, starting with `--`.
    pub text: String,
    /// Where it is in the source.
    pub span: Span,
}

/// A here-document attached to an instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word, quotes removed.
    pub name: String,
    /// The file descriptor prefix (`3<<EOF`), 0 when absent.
    pub fd: u32,
    /// False when any part of the delimiter was quoted.
    pub expand: bool,
    /// `<<-`: leading tabs are removed from the content.
    pub chomp: bool,
    /// The lines between the instruction and the delimiter, with their newlines.
    pub content: String,
    /// Where the `<<NAME` marker is.
    pub span: Span,
}

/// The arguments of an instruction, shaped the way the instruction reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args {
    /// No arguments at all.
    Empty,
    /// The rest of the line as one string (shell form, WORKDIR, USER, ...).
    Text(Word),
    /// A JSON array of strings (exec form).
    Json {
        /// The strings.
        items: Vec<String>,
        /// Where the array is.
        span: Span,
    },
    /// Whitespace-separated or shell-quoted words.
    Words(Vec<Word>),
    /// `key=value` pairs; `legacy` for the `ENV key value` form.
    NameValues {
        /// Each key and value, quotes still in place.
        pairs: Vec<(Word, Word)>,
        /// Whether the legacy whitespace form was used.
        legacy: bool,
    },
    /// HEALTHCHECK: the type word (`CMD` or `NONE`) and its command.
    Health {
        /// `CMD` or `NONE` as written.
        kind: Word,
        /// The command after the type.
        command: Box<Args>,
    },
    /// ONBUILD's trigger instruction.
    Sub(Box<Node>),
}

/// One instruction as the syntax layer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The instruction keyword as written (any case).
    pub keyword: String,
    /// Where the keyword is.
    pub keyword_span: Span,
    /// The flags before the arguments.
    pub flags: Vec<RawFlag>,
    /// The arguments.
    pub args: Args,
    /// Where the arguments are (empty at the end of the line when there are none).
    pub args_span: Span,
    /// The instruction line with continuations joined, as BuildKit keeps it.
    pub original: String,
    /// Attached here-documents, in order.
    pub heredocs: Vec<Heredoc>,
    /// The whole instruction, here-documents included.
    pub span: Span,
    /// 1-based first line.
    pub start_line: usize,
    /// 1-based last line.
    pub end_line: usize,
    /// The comment lines right before the instruction, `#` removed.
    pub comments: Vec<String>,
}

impl Node {
    /// The keyword in lower case, for matching.
    pub fn command(&self) -> String {
        self.keyword.to_ascii_lowercase()
    }

    /// Whether the arguments were a JSON array.
    pub fn is_json(&self) -> bool {
        match &self.args {
            Args::Json { .. } => true,
            Args::Health { command, .. } => matches!(**command, Args::Json { .. }),
            _ => false,
        }
    }

    fn can_contain_heredoc(&self) -> bool {
        let node = match &self.args {
            Args::Sub(sub) if self.command() == "onbuild" => sub,
            _ => self,
        };
        matches!(node.command().as_str(), "run" | "copy" | "add") && !node.is_json()
    }
}

/// A parsed Dockerfile: directives, instructions and syntax warnings.
#[derive(Debug, Clone)]
pub struct Ast {
    /// The parser directives.
    pub directives: Directives,
    /// The escape character in effect.
    pub escape: char,
    /// The instructions, in order.
    pub nodes: Vec<Node>,
    /// Syntax-level findings (empty continuation lines).
    pub warnings: Vec<Warning>,
}

/// A physical line: where its content starts and ends (line ending excluded)
/// and where the next line starts.
#[derive(Debug, Clone, Copy)]
struct Line {
    start: usize,
    content_end: usize,
    next: usize,
}

fn split_lines(text: &str) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    while start < text.len() {
        let next = match memchr(b'\n', &bytes[start..]) {
            Some(i) => start + i + 1,
            None => text.len(),
        };
        // BuildKit trims every trailing CR and LF, not just one line ending.
        let mut content_end = next;
        while content_end > start && matches!(bytes[content_end - 1], b'\n' | b'\r') {
            content_end -= 1;
        }
        lines.push(Line {
            start,
            content_end,
            next,
        });
        start = next;
    }
    lines
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

/// A line joined from continuation pieces, remembering where each piece came
/// from so that positions in the joined text map back to the source.
#[derive(Debug)]
struct Joined {
    text: String,
    /// The escape character in effect for this line.
    escape: char,
    /// (offset in `text`, offset in the source) at the start of each piece.
    pieces: Vec<(usize, usize)>,
}

impl Joined {
    fn push(&mut self, piece: &str, source_offset: usize) {
        self.pieces.push((self.text.len(), source_offset));
        self.text.push_str(piece);
    }

    fn to_source(&self, offset: usize) -> usize {
        let i = match self.pieces.binary_search_by(|p| p.0.cmp(&offset)) {
            Ok(i) => {
                // An empty piece shares its offset with the next; prefer the
                // last one so the position lands on real text.
                let mut i = i;
                while i + 1 < self.pieces.len() && self.pieces[i + 1].0 == offset {
                    i += 1;
                }
                i
            }
            Err(0) => 0,
            Err(i) => i - 1,
        };
        match self.pieces.get(i) {
            Some(&(joined, source)) => source + (offset - joined),
            None => offset,
        }
    }

    fn span(&self, start: usize, end: usize) -> Span {
        if start >= end {
            let at = self.to_source(start);
            return Span::new(at, at);
        }
        // Map the last byte, not one-past, so a span ending at a piece
        // boundary doesn't run into the next physical line.
        Span::new(self.to_source(start), self.to_source(end - 1) + 1)
    }
}

fn is_go_space(c: char) -> bool {
    c.is_whitespace()
}

fn trim_leading_space(s: &str) -> &str {
    s.trim_start_matches(is_go_space)
}

fn is_comment(line: &str) -> bool {
    trim_leading_space(line).starts_with('#')
}

/// Removes a trailing line-continuation escape. Returns the remaining text
/// and whether the logical line ends here. An escaped escape character at the
/// end (`\\`) is not a continuation.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let body = line.trim_end_matches([' ', '\t']);
    let Some(before) = body.strip_suffix(escape) else {
        return (line, true);
    };
    match before.chars().next_back() {
        None => ("", false),
        Some(c) if c == escape => (line, true),
        Some(_) => (before, false),
    }
}

/// Parses the whole Dockerfile text.
pub fn parse(text: &str) -> Result<Ast> {
    let mut lines = split_lines(text);
    if let Some(first) = lines.first_mut() {
        if text.as_bytes().starts_with(b"\xEF\xBB\xBF") {
            first.start += 3;
        }
    }

    let mut directives = DirectiveParser::default();
    let mut nodes = Vec::new();
    let mut warnings = Vec::new();
    let mut comments: Vec<String> = Vec::new();
    let mut i = 0;

    while i < lines.len() {
        let line = lines[i];
        let raw = &text[line.start..line.content_end];
        let lead = raw.len() - trim_leading_space(raw).len();
        let token = &raw[lead..];
        let was_directive = directives.line(token, line.start + lead)?;
        if let Some(comment) = token.strip_prefix('#') {
            let comment = comment.trim();
            if comment.is_empty() {
                comments.clear();
            } else if !was_directive {
                comments.push(comment.to_string());
            }
        }
        let token = if token.starts_with('#') { "" } else { token };
        i += 1;
        let start_line = i;

        let escape = directives.escape();
        let (first, mut done) = trim_continuation(token, escape);
        if done && first.is_empty() {
            continue;
        }
        let mut joined = Joined {
            text: String::new(),
            escape,
            pieces: Vec::new(),
        };
        joined.push(first, line.start + lead);
        let mut empty_continuation = None;
        let mut last_content_end = line.content_end;
        while !done && i < lines.len() {
            let line = lines[i];
            let raw = &text[line.start..line.content_end];
            directives.line(raw, line.start)?;
            i += 1;
            if is_comment(raw) {
                continue;
            }
            if trim_leading_space(raw).is_empty() {
                empty_continuation.get_or_insert(Span::new(line.start, line.content_end));
                continue;
            }
            let (piece, end) = trim_continuation(raw, escape);
            joined.push(piece, line.start);
            last_content_end = line.content_end;
            done = end;
        }

        let mut node = node_from_line(&joined, 0, joined.text.len())?;
        node.start_line = start_line;
        node.comments = std::mem::take(&mut comments);
        if let Some(span) = empty_continuation {
            warnings.push(Warning {
                rule: "NoEmptyContinuation",
                description: "Empty continuation lines will become errors in a future release",
                message: "Empty continuation line".to_string(),
                span,
            });
        }

        if node.can_contain_heredoc() {
            for mut heredoc in heredocs_from_line(&joined)? {
                let mut terminated = false;
                while i < lines.len() {
                    let line = lines[i];
                    i += 1;
                    let candidate = &text[line.start..line.content_end];
                    let candidate = if heredoc.chomp {
                        candidate.trim_start_matches('\t')
                    } else {
                        candidate
                    };
                    last_content_end = line.content_end;
                    if candidate == heredoc.name {
                        terminated = true;
                        break;
                    }
                    heredoc.content.push_str(&text[line.start..line.next]);
                }
                if !terminated {
                    return Err(Error::new("unterminated heredoc", heredoc.span).with_help(
                        format!(
                            "end the here-document with a line holding only {:?}",
                            heredoc.name
                        ),
                    ));
                }
                node.heredocs.push(heredoc);
            }
        }
        node.end_line = i;
        node.span = Span::new(node.keyword_span.start, last_content_end);
        nodes.push(node);
    }

    if nodes.is_empty() {
        return Err(
            Error::new("file with no instructions", Span::point(text.len()))
                .with_help("a Dockerfile needs at least a FROM instruction"),
        );
    }

    Ok(Ast {
        escape: directives.escape(),
        directives: directives.found,
        nodes,
        warnings,
    })
}

/// Collects `# name=value` directives from the top of the file.
#[derive(Debug)]
struct DirectiveParser {
    found: Directives,
    escape: char,
    done: bool,
}

impl Default for DirectiveParser {
    fn default() -> Self {
        DirectiveParser {
            found: Directives::default(),
            escape: '\\',
            done: false,
        }
    }
}

impl DirectiveParser {
    fn escape(&self) -> char {
        self.escape
    }

    /// Looks at one line (leading whitespace already stripped for the first
    /// line of an instruction) while directives are still allowed; returns
    /// whether it was a directive.
    fn line(&mut self, line: &str, offset: usize) -> Result<bool> {
        if self.done {
            return Ok(false);
        }
        let Some(rest) = line.strip_prefix('#') else {
            self.done = true;
            return Ok(false);
        };
        let body = trim_leading_space(rest);
        let body_offset = offset + (line.len() - body.len());
        let Some((key, value, value_at)) = split_directive(body) else {
            self.done = true;
            return Ok(false);
        };
        let key = key.to_ascii_lowercase();
        let slot = match key.as_str() {
            "syntax" => &mut self.found.syntax,
            "escape" => &mut self.found.escape,
            "check" => &mut self.found.check,
            _ => {
                self.done = true;
                return Ok(false);
            }
        };
        let span = Span::new(body_offset + value_at, body_offset + value_at + value.len());
        if slot.is_some() {
            return Err(Error::new(
                format!("only one {key} parser directive can be used"),
                span,
            ));
        }
        *slot = Some(Directive {
            value: value.to_string(),
            span,
        });
        if key == "escape" {
            self.escape = match value {
                "\\" => '\\',
                "`" => '`',
                _ => {
                    return Err(Error::new(
                        format!("invalid escape token '{value}' does not match ` or \\"),
                        span,
                    ))
                }
            };
        }
        Ok(true)
    }
}

/// Matches `name\s*=\s*value` (name: a letter then letters and digits),
/// returning the name, the trimmed value and the value's offset in `body`.
fn split_directive(body: &str) -> Option<(&str, &str, usize)> {
    let mut chars = body.char_indices();
    let (_, first) = chars.next()?;
    if !first.is_ascii_alphabetic() {
        return None;
    }
    let name_end = body
        .char_indices()
        .find(|(_, c)| !c.is_ascii_alphanumeric())
        .map_or(body.len(), |(i, _)| i);
    let rest = trim_leading_space(&body[name_end..]);
    let rest = rest.strip_prefix('=')?;
    let value_start = body.len() - trim_leading_space(rest).len();
    let value = body[value_start..].trim_end_matches(is_go_space);
    if value.is_empty() {
        return None;
    }
    Some((&body[..name_end], value, value_start))
}

/// Whitespace in BuildKit's command splitting: `[\t\v\f\r ]`.
fn is_token_space(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// Builds a node from `joined.text[start..end]`.
fn node_from_line(joined: &Joined, start: usize, end: usize) -> Result<Node> {
    let line = &joined.text[start..end];
    let trimmed_start = start + (line.len() - line.trim_start_matches(is_go_space).len());
    let trimmed_end = start + line.trim_end_matches(is_go_space).len();
    let line = &joined.text[trimmed_start..trimmed_end];
    let keyword_len = line.find(is_token_space).unwrap_or(line.len());
    let keyword = &line[..keyword_len];
    let keyword_span = joined.span(trimmed_start, trimmed_start + keyword_len);
    let after_keyword = trimmed_start + keyword_len;
    let rest_start = after_keyword
        + (joined.text[after_keyword..trimmed_end].len()
            - joined.text[after_keyword..trimmed_end]
                .trim_start_matches(is_token_space)
                .len());

    let (flags, args_at) = extract_flags(joined, rest_start, trimmed_end);
    let args_text = &joined.text[args_at..trimmed_end];
    let args_start = args_at + (args_text.len() - args_text.trim_start_matches(is_go_space).len());
    let args_end = args_at + args_text.trim_end_matches(is_go_space).len();

    let command = keyword.to_ascii_lowercase();
    let args = dispatch(&command, joined, args_start, args_end)?;
    Ok(Node {
        keyword: keyword.to_string(),
        keyword_span,
        flags,
        args,
        args_span: joined.span(args_start, args_end),
        original: joined.text[start..end].to_string(),
        heredocs: Vec::new(),
        span: keyword_span,
        start_line: 0,
        end_line: 0,
        comments: Vec::new(),
    })
}

/// Pulls `--flag` words off the front of the arguments. Quotes are removed
/// and the escape character escapes the next character, even inside single
/// quotes (as in BuildKit). Returns the flags and where the arguments start.
fn extract_flags(joined: &Joined, start: usize, end: usize) -> (Vec<RawFlag>, usize) {
    let text = &joined.text[..end];
    let bytes = text.as_bytes();
    let mut flags = Vec::new();
    let mut pos = start;
    loop {
        while pos < end && (bytes[pos] as char).is_ascii_whitespace() {
            pos += 1;
        }
        if pos >= end || !text[pos..].starts_with("--") {
            return (flags, pos);
        }
        let word_start = pos;
        let mut word = String::new();
        let mut quote: Option<char> = None;
        let mut chars = text[pos..end].char_indices().peekable();
        let mut word_end = end;
        while let Some((i, c)) = chars.next() {
            match quote {
                None if c.is_whitespace() => {
                    word_end = pos + i;
                    break;
                }
                None if c == '\'' || c == '"' => quote = Some(c),
                Some(q) if c == q => quote = None,
                _ if c == joined.escape => match chars.next() {
                    Some((_, next)) => word.push(next),
                    None => quote = None,
                },
                _ => word.push(c),
            }
        }
        if word == "--" {
            return (flags, word_end);
        }
        if !word.is_empty() || text[word_start..word_end].contains(['\'', '"']) {
            flags.push(RawFlag {
                text: word,
                span: joined.span(word_start, word_end),
            });
        }
        pos = word_end;
    }
}

fn dispatch(command: &str, joined: &Joined, start: usize, end: usize) -> Result<Args> {
    let rest = &joined.text[start..end];
    let whole = || Word {
        text: rest.to_string(),
        span: joined.span(start, end),
    };
    Ok(match command {
        "add" | "copy" | "volume" => match parse_json(joined, start, end)? {
            Some(json) => json,
            None => whitespace_words(joined, start, end),
        },
        "cmd" | "entrypoint" | "run" | "shell" => maybe_json(joined, start, end)?,
        "expose" | "from" => whitespace_words(joined, start, end),
        "arg" => {
            let words = shell_words(joined, start, end);
            if words.is_empty() {
                Args::Empty
            } else {
                Args::Words(words)
            }
        }
        "env" | "label" => name_values(command, joined, start, end)?,
        "maintainer" | "stopsignal" | "user" | "workdir" => {
            if rest.is_empty() {
                Args::Empty
            } else {
                Args::Text(whole())
            }
        }
        "healthcheck" => {
            let kind_len = rest
                .find(|c: char| c.is_ascii_whitespace())
                .unwrap_or(rest.len());
            if kind_len == 0 {
                Args::Empty
            } else {
                let after = start + kind_len;
                let cmd_start = after
                    + (joined.text[after..end].len()
                        - joined.text[after..end]
                            .trim_start_matches(|c: char| c.is_ascii_whitespace())
                            .len());
                Args::Health {
                    kind: Word {
                        text: rest[..kind_len].to_string(),
                        span: joined.span(start, start + kind_len),
                    },
                    command: Box::new(maybe_json(joined, cmd_start, end)?),
                }
            }
        }
        "onbuild" => {
            if rest.is_empty() {
                Args::Empty
            } else {
                Args::Sub(Box::new(node_from_line(joined, start, end)?))
            }
        }
        _ => {
            if rest.is_empty() {
                Args::Empty
            } else {
                Args::Text(whole())
            }
        }
    })
}

/// `RUN`/`CMD`/`ENTRYPOINT`/`SHELL`: a JSON array if it parses as one,
/// otherwise the whole text.
fn maybe_json(joined: &Joined, start: usize, end: usize) -> Result<Args> {
    if start >= end {
        return Ok(Args::Empty);
    }
    Ok(match parse_json(joined, start, end)? {
        Some(json) => json,
        None => Args::Text(Word {
            text: joined.text[start..end].to_string(),
            span: joined.span(start, end),
        }),
    })
}

/// Parses a JSON array of strings at the start of the text. Like BuildKit,
/// only the first JSON value is read and anything after it is ignored; text
/// that is not a JSON array is not an error (it is shell form), but an array
/// holding anything other than strings is.
fn parse_json(joined: &Joined, start: usize, end: usize) -> Result<Option<Args>> {
    let text = &joined.text[start..end];
    let lead = text.len() - text.trim_start_matches(is_go_space).len();
    let text = &text[lead..];
    if !text.starts_with('[') {
        return Ok(None);
    }
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>();
    let Some(Ok(value)) = stream.next() else {
        return Ok(None);
    };
    let consumed = stream.byte_offset();
    let span = joined.span(start + lead, start + lead + consumed);
    let serde_json::Value::Array(items) = value else {
        return Ok(None);
    };
    let mut strings = Vec::with_capacity(items.len());
    for item in items {
        match item {
            serde_json::Value::String(s) => strings.push(s),
            _ => {
                return Err(Error::new(
                    "when using JSON array syntax, arrays must be comprised of strings only",
                    span,
                ))
            }
        }
    }
    Ok(Some(Args::Json {
        items: strings,
        span,
    }))
}

/// Splits on runs of `[\t\v\f\r ]`.
fn whitespace_words(joined: &Joined, start: usize, end: usize) -> Args {
    let mut words = Vec::new();
    let text = &joined.text[start..end];
    let mut word_start = None;
    for (i, c) in text
        .char_indices()
        .chain(std::iter::once((text.len(), ' ')))
    {
        if is_token_space(c) {
            if let Some(s) = word_start.take() {
                words.push(Word {
                    text: text[s..i].to_string(),
                    span: joined.span(start + s, start + i),
                });
            }
        } else if word_start.is_none() {
            word_start = Some(i);
        }
    }
    if words.is_empty() {
        Args::Empty
    } else {
        Args::Words(words)
    }
}

/// Splits into words the way BuildKit's `parseWords` does: on unquoted
/// whitespace, keeping quotes and escapes in the words (expansion removes
/// them later). An escape at the very end of the text is dropped.
fn shell_words(joined: &Joined, start: usize, end: usize) -> Vec<Word> {
    let escape = joined.escape;
    let text = &joined.text[start..end];
    let mut words = Vec::new();
    let mut word = String::new();
    let mut word_start: Option<usize> = None;
    let mut blank_ok = false;
    let mut quote: Option<char> = None;
    let mut chars = text.char_indices().peekable();
    let mut push = |word: &mut String, from: usize, to: usize, blank_ok: bool| {
        if blank_ok || !word.is_empty() {
            words.push(Word {
                text: std::mem::take(word),
                span: joined.span(start + from, start + to),
            });
        }
        word.clear();
    };
    while let Some((i, c)) = chars.next() {
        match quote {
            None => {
                if c.is_whitespace() {
                    if let Some(s) = word_start.take() {
                        push(&mut word, s, i, blank_ok);
                    }
                    blank_ok = false;
                    continue;
                }
                word_start.get_or_insert(i);
                if c == '\'' || c == '"' {
                    quote = Some(c);
                    blank_ok = true;
                }
                if c == escape {
                    // An escape at the very end of the text is dropped.
                    if let Some((_, next)) = chars.next() {
                        word.push(c);
                        word.push(next);
                    }
                    continue;
                }
                word.push(c);
            }
            Some(q) => {
                if c == q {
                    quote = None;
                    word.push(c);
                    continue;
                }
                if c == escape && q != '\'' {
                    match chars.next() {
                        Some((_, next)) => {
                            word.push(c);
                            word.push(next);
                        }
                        None => quote = None,
                    }
                    continue;
                }
                word.push(c);
            }
        }
    }
    if let Some(s) = word_start {
        push(&mut word, s, text.len(), blank_ok);
    }
    words
}

/// ENV and LABEL: `key=value ...`, or the legacy `key value` form when the
/// first word has no `=`.
fn name_values(command: &str, joined: &Joined, start: usize, end: usize) -> Result<Args> {
    let words = shell_words(joined, start, end);
    let Some(first) = words.first() else {
        return Ok(Args::Empty);
    };
    if !first.text.contains('=') {
        let text = &joined.text[start..end];
        let key_len = text.find(is_token_space).unwrap_or(text.len());
        let value_at = key_len
            + (text[key_len..].len() - text[key_len..].trim_start_matches(is_token_space).len());
        if value_at >= text.len() {
            return Err(Error::new(
                format!("{} must have two arguments", command.to_ascii_uppercase()),
                joined.span(start, end),
            ));
        }
        let key = Word {
            text: text[..key_len].to_string(),
            span: joined.span(start, start + key_len),
        };
        let value = Word {
            text: text[value_at..].to_string(),
            span: joined.span(start + value_at, end),
        };
        return Ok(Args::NameValues {
            pairs: vec![(key, value)],
            legacy: true,
        });
    }
    let mut pairs = Vec::with_capacity(words.len());
    for word in words {
        let Some(eq) = word.text.find('=') else {
            return Err(Error::new(
                format!(
                    "Syntax error - can't find = in {:?}. Must be of the form: name=value",
                    word.text
                ),
                word.span,
            ));
        };
        let key = Word {
            text: word.text[..eq].to_string(),
            span: Span::new(word.span.start, word.span.start + eq),
        };
        let value = Word {
            text: word.text[eq + 1..].to_string(),
            span: Span::new((word.span.start + eq + 1).min(word.span.end), word.span.end),
        };
        pairs.push((key, value));
    }
    Ok(Args::NameValues {
        pairs,
        legacy: false,
    })
}

/// Finds the here-documents an instruction line opens (`<<EOF`, `<<-EOF`,
/// `<<"EOF"`, `3<<EOF`).
fn heredocs_from_line(joined: &Joined) -> Result<Vec<Heredoc>> {
    let lexer = Lexer {
        escape: '\\',
        raw_quotes: true,
        raw_escapes: true,
        skip_unset_env: true,
    };
    let empty: Vec<(String, String)> = Vec::new();
    let words = lexer
        .expand_words(&joined.text, &empty)
        .map(|w| w.words)
        .unwrap_or_default();
    let mut docs = Vec::new();
    let mut search_from = 0;
    for word in words {
        let Some(mut heredoc) = parse_heredoc_marker(&word)? else {
            continue;
        };
        let at = joined.text[search_from..]
            .find(&word)
            .map(|i| search_from + i);
        if let Some(at) = at {
            heredoc.span = joined.span(at, at + word.len());
            search_from = at + word.len();
        } else {
            heredoc.span = joined.span(0, joined.text.len());
        }
        docs.push(heredoc);
    }
    Ok(docs)
}

/// Recognises one word as a heredoc marker, `^(\d*)<<(-?)([^<]*)$`. The
/// content is expanded unless some part of the delimiter is quoted.
pub fn parse_heredoc_marker(word: &str) -> Result<Option<Heredoc>> {
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let Some(rest) = word[digits..].strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let rest = rest.trim_start_matches(is_go_space);
    if rest.is_empty() || rest.contains('<') {
        return Ok(None);
    }
    let fd = word[..digits].parse::<u32>().unwrap_or(0);
    let empty: Vec<(String, String)> = Vec::new();
    let mut lexer = Lexer {
        escape: '\\',
        raw_quotes: false,
        raw_escapes: false,
        skip_unset_env: true,
    };
    let words = lexer
        .expand_words(rest, &empty)
        .map_err(|e| Error::new(e.message, Span::default()))?
        .words;
    if words.len() != 1 {
        return Ok(None);
    }
    lexer.raw_quotes = true;
    let raw = lexer
        .expand_words(rest, &empty)
        .map_err(|e| Error::new(e.message, Span::default()))?
        .words;
    let quotes = |s: &str| s.chars().filter(|&c| c == '\'' || c == '"').count();
    let expand = raw.len() == 1 && quotes(&words[0]) == quotes(&raw[0]);
    Ok(Some(Heredoc {
        name: words[0].clone(),
        fd,
        expand,
        chomp,
        content: String::new(),
        span: Span::default(),
    }))
}

/// Removes leading tabs from every line, as `<<-` asks.
pub fn chomp_heredoc(content: &str) -> String {
    let mut out = String::with_capacity(content.len());
    for line in content.split_inclusive('\n') {
        out.push_str(line.trim_start_matches('\t'));
    }
    out
}
