//! The small part of Go's RE2 syntax that moby's pattern compiler can emit.
//!
//! moby/patternmatcher turns a `.dockerignore` pattern into a Go regular
//! expression by text substitution, and passes `[`, `]`, `^` and most `\x`
//! escapes through untouched. So a pattern such as `[*]`, `a^b*` or `\d*`
//! means whatever Go's regexp package makes of the generated text, not what a
//! glob reader would expect. To be exact in those corners too, rbuild builds
//! the same regular expression text and runs it here: a parser for the RE2
//! constructs that can appear (literals, escapes, classes with ranges, POSIX
//! and Perl classes, groups, `* + ?`, `^ $ \A \z \b \B`, `.`) and a Thompson
//! NFA simulation, linear in the path length like Go's engine. Flags are Go's
//! defaults for `regexp.Compile`: `.` does not match `\n`, negated classes
//! do, `^`/`$` anchor at the text's ends, matching is case sensitive.
//! Unicode classes (`\p{..}`) and `\Q..\E` are refused rather than guessed.

/// A compiled expression.
#[derive(Debug, Clone)]
pub(crate) struct Regex {
    prog: Vec<Inst>,
}

#[derive(Debug, Clone)]
enum Node {
    Empty,
    Char(u32),
    Class(Class),
    AnyNotNl,
    Look(Look),
    Concat(Vec<Node>),
    Star(Box<Node>),
    Plus(Box<Node>),
    Quest(Box<Node>),
}

#[derive(Debug, Clone, Copy)]
enum Look {
    Begin,
    End,
    WordBoundary,
    NotWordBoundary,
}

/// Sorted, merged inclusive ranges of code points.
#[derive(Debug, Clone, Default)]
struct Class {
    ranges: Vec<(u32, u32)>,
}

impl Class {
    fn push(&mut self, lo: u32, hi: u32) {
        self.ranges.push((lo, hi));
    }

    fn normalize(&mut self) {
        self.ranges.sort_unstable();
        let mut out: Vec<(u32, u32)> = Vec::with_capacity(self.ranges.len());
        for &(lo, hi) in &self.ranges {
            match out.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        self.ranges = out;
    }

    fn negate(&mut self) {
        self.normalize();
        let mut out = Vec::new();
        let mut next = 0u32;
        for &(lo, hi) in &self.ranges {
            if lo > next {
                out.push((next, lo - 1));
            }
            next = hi.saturating_add(1);
        }
        if next <= 0x10FFFF {
            out.push((next, 0x10FFFF));
        }
        self.ranges = out;
    }

    fn extend(&mut self, other: &Class) {
        self.ranges.extend_from_slice(&other.ranges);
    }

    fn contains(&self, c: u32) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi)
    }
}

#[derive(Debug, Clone)]
enum Inst {
    Char(u32),
    Class(Class),
    AnyNotNl,
    Look(Look),
    Split(usize, usize),
    Jmp(usize),
    Match,
}

/// Why an expression was refused; the text says what Go would complain of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RegexError(pub String);

type PResult<T> = Result<T, RegexError>;

fn err<T>(msg: impl Into<String>) -> PResult<T> {
    Err(RegexError(msg.into()))
}

struct Parser<'a> {
    chars: Vec<char>,
    pos: usize,
    src: &'a str,
}

impl Regex {
    /// Compiles `src`, refusing what Go's `regexp.Compile` refuses (within
    /// the supported subset) and the constructs this engine leaves out.
    pub(crate) fn new(src: &str) -> Result<Regex, RegexError> {
        let mut p = Parser {
            chars: src.chars().collect(),
            pos: 0,
            src,
        };
        let node = p.parse_concat(0)?;
        if p.pos != p.chars.len() {
            return err(format!("unexpected ) in `{}`", p.src));
        }
        let mut prog = Vec::new();
        emit(&node, &mut prog);
        prog.push(Inst::Match);
        Ok(Regex { prog })
    }

    /// Whether the expression matches anywhere in `text` (Go's MatchString).
    pub(crate) fn is_match(&self, text: &str) -> bool {
        let chars: Vec<u32> = text.chars().map(|c| c as u32).collect();
        let n = self.prog.len();
        let mut clist: Vec<usize> = Vec::with_capacity(n);
        let mut nlist: Vec<usize> = Vec::with_capacity(n);
        let mut seen = vec![usize::MAX; n];
        let mut stack = Vec::new();
        for i in 0..=chars.len() {
            let prev = if i == 0 { None } else { Some(chars[i - 1]) };
            let next = chars.get(i).copied();
            // Unanchored search: a new thread starts at every position.
            if self.add(&mut clist, &mut seen, &mut stack, 0, i, prev, next) {
                return true;
            }
            nlist.clear();
            for &pc in &clist {
                let Some(c) = next else { continue };
                let ok = match &self.prog[pc] {
                    Inst::Char(x) => *x == c,
                    Inst::Class(cl) => cl.contains(c),
                    Inst::AnyNotNl => c != '\n' as u32,
                    _ => false,
                };
                if ok
                    && self.add(
                        &mut nlist,
                        &mut seen,
                        &mut stack,
                        pc + 1,
                        i + 1,
                        Some(c),
                        chars.get(i + 1).copied(),
                    )
                {
                    return true;
                }
            }
            std::mem::swap(&mut clist, &mut nlist);
        }
        false
    }

    /// Adds the epsilon closure of `pc` at position `pos` to `list`; returns
    /// true as soon as `Match` is reachable.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &self,
        list: &mut Vec<usize>,
        seen: &mut [usize],
        stack: &mut Vec<usize>,
        pc: usize,
        pos: usize,
        prev: Option<u32>,
        next: Option<u32>,
    ) -> bool {
        stack.clear();
        stack.push(pc);
        while let Some(pc) = stack.pop() {
            if seen[pc] == pos {
                continue;
            }
            seen[pc] = pos;
            match &self.prog[pc] {
                Inst::Match => return true,
                Inst::Jmp(t) => stack.push(*t),
                Inst::Split(a, b) => {
                    stack.push(*b);
                    stack.push(*a);
                }
                Inst::Look(look) => {
                    let word = |c: Option<u32>| {
                        c.is_some_and(|c| {
                            c < 128 && (c as u8 as char).is_ascii_alphanumeric() || c == '_' as u32
                        })
                    };
                    let ok = match look {
                        Look::Begin => prev.is_none(),
                        Look::End => next.is_none(),
                        Look::WordBoundary => word(prev) != word(next),
                        Look::NotWordBoundary => word(prev) == word(next),
                    };
                    if ok {
                        stack.push(pc + 1);
                    }
                }
                _ => list.push(pc),
            }
        }
        false
    }
}

fn emit(node: &Node, prog: &mut Vec<Inst>) {
    match node {
        Node::Empty => {}
        Node::Char(c) => prog.push(Inst::Char(*c)),
        Node::Class(c) => prog.push(Inst::Class(c.clone())),
        Node::AnyNotNl => prog.push(Inst::AnyNotNl),
        Node::Look(l) => prog.push(Inst::Look(*l)),
        Node::Concat(nodes) => nodes.iter().for_each(|n| emit(n, prog)),
        Node::Star(inner) => {
            let split = prog.len();
            prog.push(Inst::Split(0, 0));
            emit(inner, prog);
            prog.push(Inst::Jmp(split));
            let end = prog.len();
            prog[split] = Inst::Split(split + 1, end);
        }
        Node::Plus(inner) => {
            let start = prog.len();
            emit(inner, prog);
            let split = prog.len();
            prog.push(Inst::Split(start, split + 1));
        }
        Node::Quest(inner) => {
            let split = prog.len();
            prog.push(Inst::Split(0, 0));
            emit(inner, prog);
            let end = prog.len();
            prog[split] = Inst::Split(split + 1, end);
        }
    }
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn parse_concat(&mut self, depth: usize) -> PResult<Node> {
        let mut items: Vec<Node> = Vec::new();
        while let Some(c) = self.peek() {
            match c {
                ')' => {
                    if depth == 0 {
                        return err(format!("unexpected ) in `{}`", self.src));
                    }
                    break;
                }
                '|' => return err("alternation is not supported"),
                '*' | '+' | '?' => {
                    self.pos += 1;
                    let Some(last) = items.pop() else {
                        return err(format!("missing argument to repetition operator: `{c}`"));
                    };
                    // A trailing `?` makes the repetition non-greedy, which
                    // cannot change whether the text matches.
                    if self.peek() == Some('?') {
                        self.pos += 1;
                    }
                    items.push(match c {
                        '*' => Node::Star(Box::new(last)),
                        '+' => Node::Plus(Box::new(last)),
                        _ => Node::Quest(Box::new(last)),
                    });
                    if matches!(self.peek(), Some('*' | '+' | '?')) {
                        return err("invalid nested repetition operator");
                    }
                }
                '{' => return err("counted repetition is not supported"),
                '(' => {
                    self.pos += 1;
                    if self.peek() == Some('?') {
                        return err("group flags are not supported");
                    }
                    let inner = self.parse_concat(depth + 1)?;
                    if self.peek() != Some(')') {
                        return err(format!("missing closing ) in `{}`", self.src));
                    }
                    self.pos += 1;
                    // Wrapped so a starred group is not mistaken for a
                    // nested repetition.
                    items.push(Node::Concat(vec![inner]));
                }
                '[' => {
                    self.pos += 1;
                    items.push(Node::Class(self.parse_class()?));
                }
                '.' => {
                    self.pos += 1;
                    items.push(Node::AnyNotNl);
                }
                '^' => {
                    self.pos += 1;
                    items.push(Node::Look(Look::Begin));
                }
                '$' => {
                    self.pos += 1;
                    items.push(Node::Look(Look::End));
                }
                '\\' => {
                    self.pos += 1;
                    items.push(self.parse_escape(false)?);
                }
                c => {
                    self.pos += 1;
                    items.push(Node::Char(c as u32));
                }
            }
        }
        Ok(match items.len() {
            0 => Node::Empty,
            1 => items.pop().unwrap_or(Node::Empty),
            _ => Node::Concat(items),
        })
    }

    /// After a `\`. Inside a class only single characters and Perl classes
    /// are allowed, which the caller checks.
    fn parse_escape(&mut self, in_class: bool) -> PResult<Node> {
        let Some(c) = self.peek() else {
            return err("trailing backslash at end of expression");
        };
        self.pos += 1;
        if c.is_ascii() && !c.is_ascii_alphanumeric() {
            return Ok(Node::Char(c as u32));
        }
        let ctl = |v: u8| Ok(Node::Char(v as u32));
        match c {
            'a' => ctl(7),
            'f' => ctl(12),
            't' => ctl(9),
            'n' => ctl(10),
            'r' => ctl(13),
            'v' => ctl(11),
            'd' | 'D' | 's' | 'S' | 'w' | 'W' => {
                let mut class = Class::default();
                match c.to_ascii_lowercase() {
                    'd' => class.push('0' as u32, '9' as u32),
                    's' => {
                        for ch in ['\t', '\n', '\x0c', '\r', ' '] {
                            class.push(ch as u32, ch as u32);
                        }
                    }
                    _ => {
                        class.push('0' as u32, '9' as u32);
                        class.push('A' as u32, 'Z' as u32);
                        class.push('_' as u32, '_' as u32);
                        class.push('a' as u32, 'z' as u32);
                    }
                }
                if c.is_ascii_uppercase() {
                    class.negate();
                }
                Ok(Node::Class(class))
            }
            'A' if !in_class => Ok(Node::Look(Look::Begin)),
            'z' if !in_class => Ok(Node::Look(Look::End)),
            'b' if !in_class => Ok(Node::Look(Look::WordBoundary)),
            'B' if !in_class => Ok(Node::Look(Look::NotWordBoundary)),
            'x' => {
                let mut digits = String::new();
                if self.peek() == Some('{') {
                    self.pos += 1;
                    while let Some(d) = self.peek() {
                        self.pos += 1;
                        if d == '}' {
                            break;
                        }
                        digits.push(d);
                    }
                } else {
                    for _ in 0..2 {
                        if let Some(d) = self.peek() {
                            self.pos += 1;
                            digits.push(d);
                        }
                    }
                }
                match u32::from_str_radix(&digits, 16) {
                    Ok(v) if v <= 0x10FFFF && !digits.is_empty() => Ok(Node::Char(v)),
                    _ => err("invalid escape sequence: `\\x`"),
                }
            }
            '0'..='7' => {
                // Go: a lone non-zero digit would be a backreference.
                if c != '0' && !matches!(self.peek(), Some('0'..='7')) {
                    return err(format!("invalid escape sequence: `\\{c}`"));
                }
                let mut v = c as u32 - '0' as u32;
                for _ in 0..2 {
                    match self.peek() {
                        Some(d @ '0'..='7') => {
                            self.pos += 1;
                            v = v * 8 + (d as u32 - '0' as u32);
                        }
                        _ => break,
                    }
                }
                Ok(Node::Char(v))
            }
            'p' | 'P' | 'Q' => err(format!(
                "`\\{c}` is not supported in .dockerignore patterns by rbuild"
            )),
            _ => err(format!("invalid escape sequence: `\\{c}`")),
        }
    }

    /// After a `[`: RE2 class syntax.
    fn parse_class(&mut self) -> PResult<Class> {
        let mut class = Class::default();
        let negated = self.peek() == Some('^');
        if negated {
            self.pos += 1;
        }
        let mut first = true;
        loop {
            let Some(c) = self.peek() else {
                return err(format!("missing closing ]: `{}`", self.src));
            };
            // `]` right after `[` or `[^` is a literal.
            if c == ']' && !first {
                self.pos += 1;
                break;
            }
            first = false;
            if c == '[' && self.chars.get(self.pos + 1) == Some(&':') {
                if let Some(posix) = self.parse_posix()? {
                    class.extend(&posix);
                    continue;
                }
            }
            let lo = match self.class_atom()? {
                ClassAtom::Char(lo) => lo,
                ClassAtom::Set(set) => {
                    class.extend(&set);
                    continue;
                }
            };
            if self.peek() == Some('-') && self.chars.get(self.pos + 1).is_some_and(|&n| n != ']') {
                self.pos += 1;
                let hi = match self.class_atom()? {
                    ClassAtom::Char(hi) => hi,
                    ClassAtom::Set(_) => return err("invalid character class range"),
                };
                if hi < lo {
                    return err(format!("invalid character class range in `{}`", self.src));
                }
                class.push(lo, hi);
            } else {
                class.push(lo, lo);
            }
        }
        if negated {
            class.negate();
        } else {
            class.normalize();
        }
        Ok(class)
    }

    fn class_atom(&mut self) -> PResult<ClassAtom> {
        let Some(c) = self.peek() else {
            return err(format!("missing closing ]: `{}`", self.src));
        };
        self.pos += 1;
        if c != '\\' {
            return Ok(ClassAtom::Char(c as u32));
        }
        match self.parse_escape(true)? {
            Node::Char(v) => Ok(ClassAtom::Char(v)),
            Node::Class(set) => Ok(ClassAtom::Set(set)),
            _ => err("invalid escape in character class"),
        }
    }

    /// `[:name:]` or `[:^name:]`; `None` if this `[:` does not close.
    fn parse_posix(&mut self) -> PResult<Option<Class>> {
        let rest: String = self.chars[self.pos..].iter().collect();
        let Some(end) = rest[2..].find(":]") else {
            return Ok(None);
        };
        let name = &rest[2..2 + end];
        let (neg, name) = match name.strip_prefix('^') {
            Some(n) => (true, n),
            None => (false, name),
        };
        let r = |a: char, b: char| (a as u32, b as u32);
        let ranges: Vec<(u32, u32)> = match name {
            "alnum" => vec![r('0', '9'), r('A', 'Z'), r('a', 'z')],
            "alpha" => vec![r('A', 'Z'), r('a', 'z')],
            "ascii" => vec![(0, 0x7f)],
            "blank" => vec![r('\t', '\t'), r(' ', ' ')],
            "cntrl" => vec![(0, 0x1f), (0x7f, 0x7f)],
            "digit" => vec![r('0', '9')],
            "graph" => vec![r('!', '~')],
            "lower" => vec![r('a', 'z')],
            "print" => vec![r(' ', '~')],
            "punct" => vec![r('!', '/'), r(':', '@'), r('[', '`'), r('{', '~')],
            "space" => vec![r('\t', '\r'), r(' ', ' ')],
            "upper" => vec![r('A', 'Z')],
            "word" => vec![r('0', '9'), r('A', 'Z'), r('a', 'z'), r('_', '_')],
            "xdigit" => vec![r('0', '9'), r('A', 'F'), r('a', 'f')],
            _ => return err(format!("invalid character class range: `[:{name}:]`")),
        };
        let mut class = Class { ranges };
        if neg {
            class.negate();
        }
        self.pos += 2 + end + 2;
        Ok(Some(class))
    }
}

enum ClassAtom {
    Char(u32),
    Set(Class),
}

#[cfg(test)]
mod tests {
    use super::Regex;

    fn m(re: &str, text: &str) -> bool {
        Regex::new(re)
            .map(|r| r.is_match(text))
            .unwrap_or_else(|e| panic!("{re}: {e:?}"))
    }

    #[test]
    fn basics() {
        assert!(m("^a[^/]*$", "abc"));
        assert!(!m("^a[^/]*$", "ab/c"));
        assert!(m("^(.*/)?foo$", "x/y/foo"));
        assert!(m("^(.*/)?foo$", "foo"));
        assert!(!m("^(.*/)?foo$", "xfoo"));
        assert!(m("^a[b-d]e$", "ace"));
        assert!(!m("^.*$", "a\nb"));
        assert!(m("^[^a]$", "\n"));
        assert!(m("^[[:digit:]x]+$", "12x"));
        assert!(m("^\\d\\b$", "1"));
        // moby's `[*]` becomes `[[^/]*]`: the class `[[^/]`, starred, then `]`.
        assert!(m("^[[^/]*]$", "^^]"));
        assert!(!m("^[[^/]*]$", "*"));
        assert!(Regex::new("^[l-O]$").is_err());
        assert!(Regex::new("^\\q$").is_err());
        assert!(Regex::new("^a**$").is_err());
    }
}
