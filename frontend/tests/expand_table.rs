//! Table-driven tests for `rbuild_frontend::shell`.
//!
//! The expectations encode BuildKit's behaviour (frontend/dockerfile/shell),
//! not a POSIX shell's. Rows tagged `// BK envVarTest` come from the
//! envVarTest data file (as found in moby/moby builder/dockerfile/shell, the
//! file BuildKit's grew from), `// BK lex_test: Name` from that Go test
//! function; untagged rows were worked out by reading lex.go, and the
//! comment on a row says which quirk it pins down.

use std::panic::Location;

use rbuild_frontend::shell::{Env, Lexer};

#[derive(Debug, Clone)]
enum Expect {
    Value(&'static str),
    Words(Vec<&'static str>),
    Error {
        message: &'static str,
        offset: Option<usize>,
    },
}

#[derive(Debug, Clone)]
struct Row {
    at: &'static Location<'static>,
    input: &'static str,
    env: Vec<(String, String)>,
    lexer: Lexer,
    split: bool,
    expect: Option<Expect>,
    matched: Option<Vec<&'static str>>,
    unmatched: Option<Vec<&'static str>>,
}

/// A row for `expand_word` with `\` as escape and no variables.
#[track_caller]
fn word(input: &'static str) -> Row {
    Row {
        at: Location::caller(),
        input,
        env: Vec::new(),
        lexer: Lexer::new('\\'),
        split: false,
        expect: None,
        matched: None,
        unmatched: None,
    }
}

/// A row for `expand_words`.
#[track_caller]
fn words(input: &'static str) -> Row {
    Row {
        split: true,
        at: Location::caller(),
        ..word(input)
    }
}

impl Row {
    fn env(mut self, vars: &[(&str, &str)]) -> Self {
        self.env
            .extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// The environment BuildKit's envVarTest runs with.
    fn bk(self) -> Self {
        self.env(&[
            ("PWD", "/home"),
            ("SHELL", "bash"),
            ("KOREAN", "한국어"),
            ("NULL", ""),
        ])
    }

    fn escape(mut self, c: char) -> Self {
        self.lexer.escape = c;
        self
    }

    fn raw_quotes(mut self) -> Self {
        self.lexer.raw_quotes = true;
        self
    }

    fn raw_escapes(mut self) -> Self {
        self.lexer.raw_escapes = true;
        self
    }

    fn skip_unset(mut self) -> Self {
        self.lexer.skip_unset_env = true;
        self
    }

    fn gives(mut self, value: &'static str) -> Self {
        self.expect = Some(Expect::Value(value));
        self
    }

    fn gives_words(mut self, words: &[&'static str]) -> Self {
        self.expect = Some(Expect::Words(words.to_vec()));
        self
    }

    fn fails(mut self, message: &'static str) -> Self {
        self.expect = Some(Expect::Error {
            message,
            offset: None,
        });
        self
    }

    fn fails_at(mut self, message: &'static str, offset: usize) -> Self {
        self.expect = Some(Expect::Error {
            message,
            offset: Some(offset),
        });
        self
    }

    fn matched(mut self, names: &[&'static str]) -> Self {
        self.matched = Some(names.to_vec());
        self
    }

    fn unmatched(mut self, names: &[&'static str]) -> Self {
        self.unmatched = Some(names.to_vec());
        self
    }
}

#[rustfmt::skip]
fn rows() -> Vec<Row> {
    vec![
        // ---- quoting and escapes, `\` as escape ----
        word("hello").bk().gives("hello"), // BK envVarTest
        word("he'll'o").bk().gives("hello"), // BK envVarTest
        word("he'llo").bk().fails_at("unexpected end of statement while looking for matching single-quote", 2), // BK envVarTest
        word(r"he\'llo").bk().gives("he'llo"), // BK envVarTest
        word(r"he\\'llo").bk().fails_at("unexpected end of statement while looking for matching single-quote", 4), // BK envVarTest
        word(r"abc\tdef").bk().gives("abctdef"), // BK envVarTest
        word(r#""abc\tdef""#).bk().gives(r"abc\tdef"), // BK envVarTest
        word(r#""abc\\tdef""#).bk().gives(r"abc\tdef"), // BK envVarTest
        word(r"'abc\tdef'").bk().gives(r"abc\tdef"), // BK envVarTest
        word(r"hello\").bk().gives("hello"), // BK envVarTest
        word(r"hello\\").bk().gives(r"hello\"), // BK envVarTest
        word(r#""hello"#).bk().fails_at("unexpected end of statement while looking for matching double-quote", 0), // BK envVarTest
        word(r#""hello\""#).bk().fails_at("unexpected end of statement while looking for matching double-quote", 0), // BK envVarTest
        word(r#""hel'lo""#).bk().gives("hel'lo"), // BK envVarTest
        word(r"'hello\'").bk().gives(r"hello\"), // BK envVarTest
        word(r"'hello\\there'").bk().gives(r"hello\\there"), // BK envVarTest
        word(r#""''""#).bk().gives("''"), // BK envVarTest
        word(r#"'"hello"'"#).bk().gives(r#""hello""#), // BK envVarTest
        word(r"'\$PWD'").bk().gives(r"\$PWD"), // BK envVarTest
        word(r"'he${XX}'").bk().gives("he${XX}"), // BK envVarTest
        word(r#""he'$PWD'""#).bk().gives("he'/home'"), // BK envVarTest
        word(r"안녕\'하세요").bk().gives("안녕'하세요"), // BK envVarTest
        word(r"'안녕\t하세요").bk().fails("unexpected end of statement while looking for matching single-quote"), // BK envVarTest
        // Inside double quotes only `"`, `$` and the escape character can be escaped.
        word(r#""a\$b\"c\\d\e""#).gives(r#"a$b"c\d\e"#),
        // A trailing escape inside an open double quote is dropped, then the quote is unterminated.
        word(r#""abc\"#).fails_at("unexpected end of statement while looking for matching double-quote", 0),
        // BuildKit quirk: a leading byte-order mark is silently dropped (Go's text/scanner).
        word("\u{FEFF}a\u{FEFF}b").gives("a\u{FEFF}b"),

        // ---- plain variables ----
        word("$.").bk().gives("$."), // BK envVarTest
        word("$1").bk().gives("").unmatched(&["1"]), // BK envVarTest
        word("he$1x").bk().gives("hex"), // BK envVarTest
        word("he$.x").bk().gives("he$.x"), // BK envVarTest
        word("he$pwd.").bk().gives("he.").unmatched(&["pwd"]), // BK envVarTest (Unix)
        word("he$PWD").bk().gives("he/home").matched(&["PWD"]).unmatched(&[]), // BK envVarTest
        word(r"he\$PWD").bk().gives("he$PWD").matched(&[]), // BK envVarTest
        word(r"he\\$PWD").bk().gives(r"he\/home"), // BK envVarTest
        word(r#""he\$PWD""#).bk().gives("he$PWD"), // BK envVarTest
        word(r#""he\\$PWD""#).bk().gives(r"he\/home"), // BK envVarTest
        word(r"\${}").bk().gives("${}"), // BK envVarTest
        word(r"he\${}xx").bk().gives("he${}xx"), // BK envVarTest
        word("he${hi}xx").bk().gives("hexx").unmatched(&["hi"]), // BK envVarTest
        word("he${PWD}").bk().gives("he/home"), // BK envVarTest
        word("$KOREAN").bk().gives("한국어"), // BK envVarTest
        word("안녕$KOREAN").bk().gives("안녕한국어"), // BK envVarTest
        word("${aaa}}").bk().gives("}"), // BK envVarTest
        word("x").env(&[("DUMMY", "dummy")]).gives("x").matched(&[]).unmatched(&[]), // BK lex_test: TestProcessWithMatches
        word("x ${UNUSED}").env(&[("DUMMY", "dummy")]).gives("x ").matched(&[]).unmatched(&["UNUSED"]), // BK lex_test: TestProcessWithMatches
        word("x ${FOO}").env(&[("FOO", "y")]).gives("x y").matched(&["FOO"]).unmatched(&[]), // BK lex_test: TestProcessWithMatches
        // A lone `$`, or one before a non-name character, is literal.
        word("a$").gives("a$").matched(&[]).unmatched(&[]),
        word("$ x$/").gives("$ x$/"),
        // Later entries of a Vec env win.
        word("$A").env(&[("A", "1"), ("A", "2")]).gives("2"),
        // Names may contain non-ASCII letters and digits (Go's unicode.IsLetter/IsDigit)...
        word("$é1_x.").env(&[("é1_x", "v")]).gives("v.").matched(&["é1_x"]),
        // ...but stop at a combining mark (U+093E), unlike Rust's is_alphabetic.
        word("$नाम").env(&[("न", "N")]).gives("Nाम").matched(&["न"]),
        // A superscript two is No, not Nd: it ends the name.
        word("$x²").env(&[("x", "X")]).gives("X²"),
        // Positional parameters are a run of digits, looked up like any name.
        word("$10a").env(&[("10", "ten")]).gives("tena").matched(&["10"]),

        // ---- special parameters: looked up as names, so normally empty ----
        word("[$$][$@][$*][$#][$?][$!][$-][$0]").gives("[][][][][][][][]").unmatched(&["!", "#", "$", "*", "-", "0", "?", "@"]),
        word("$00").gives("").unmatched(&["00"]),
        word("${#}${@}${1}").gives("").unmatched(&["#", "1", "@"]),
        word("$-x").gives("x").unmatched(&["-"]),
        // `${#FOO}` (length) is not supported: `#` is read as the name.
        word("${#FOO}").env(&[("FOO", "abc")]).fails_at("unsupported modifier (F) in substitution", 0),
        // BuildKit quirk: with no name at all the operator still applies, to variable "".
        word("${+x}").gives("").unmatched(&[""]),

        // ---- ${VAR:-word} / ${VAR-word} ----
        word("he${XXX:-000}xx").bk().gives("he000xx"), // BK envVarTest
        word("he${PWD:-000}xx").bk().gives("he/homexx"), // BK envVarTest
        word("he${XXX:-$PWD}xx").bk().gives("he/homexx"), // BK envVarTest
        word("he${XXX:-${PWD:-yyy}}xx").bk().gives("he/homexx"), // BK envVarTest
        word("he${XXX:-${YYY:-yyy}}xx").bk().gives("heyyyxx").unmatched(&["XXX", "YYY"]), // BK envVarTest
        word(r"he${XXX:-\$PWD:}xx").bk().gives("he$PWD:xx"), // BK envVarTest
        word(r"he${XXX:-\${PWD}z}xx").bk().gives("he${PWDz}xx"), // BK envVarTest
        word("${aaa:-bbb}}").bk().gives("bbb}"), // BK envVarTest
        word("${aaa:-${bbb:-ccc}}").bk().gives("ccc"), // BK envVarTest
        word("${aaa:-bbb {foo}").bk().gives("bbb {foo"), // BK envVarTest
        word("${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}").env(&[("FOO", "xxx"), ("BAR", "")]).gives("xxx  ccc").matched(&["BAR", "FOO"]).unmatched(&["BAZ"]), // BK lex_test: TestProcessWithMatches
        word("${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}").env(&[("FOO", "xxx"), ("BAR", "")]).gives("xxx bbb ccc").matched(&["BAR", "FOO"]).unmatched(&["BAZ"]), // BK lex_test: TestProcessWithMatches
        word("${FOO:-}").env(&[("FOO", "xxx"), ("BAR", "")]).gives("xxx").matched(&["FOO"]).unmatched(&[]), // BK lex_test: TestProcessWithMatches
        word("${FOO:-}").gives("").matched(&[]).unmatched(&["FOO"]), // BK lex_test: TestProcessWithMatches
        // The default word is expanded even when it is not used, so its names are reported too.
        word("${FOO:-$BAR}").env(&[("FOO", "f")]).gives("f").matched(&["FOO"]).unmatched(&["BAR"]),
        // ...and its errors are raised even when it is not used.
        word("${FOO:-${BAR?missing}}").env(&[("FOO", "f")]).fails_at("BAR: missing", 7),
        // Quotes and escapes in the word are processed.
        word(r#"${FOO:-"a }" 'b\'\}}"#).gives(r"a } b\}"),
        word("${X:-a b}").gives("a b"),

        // ---- ${VAR:+word} / ${VAR+word} ----
        word("he${XXX:+${PWD}}xx").bk().gives("hexx"), // BK envVarTest
        word("he${PWD:+${XXX}}xx").bk().gives("hexx"), // BK envVarTest
        word("he${PWD:+${SHELL}}xx").bk().gives("hebashxx"), // BK envVarTest
        word("he${XXX:+000}xx").bk().gives("hexx"), // BK envVarTest
        word("he${PWD:+000}xx").bk().gives("he000xx"), // BK envVarTest
        word("he${PWD:+${PWD}:}xx").bk().gives("he/home:xx"), // BK envVarTest
        word("${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}").env(&[("FOO", "xxx"), ("BAR", "")]).gives("aaa bbb ").matched(&["BAR", "FOO"]).unmatched(&["BAZ"]), // BK lex_test: TestProcessWithMatches
        word("${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}").env(&[("FOO", "xxx"), ("BAR", "")]).gives("aaa  ").matched(&["BAR", "FOO"]).unmatched(&["BAZ"]), // BK lex_test: TestProcessWithMatches
        word("something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz").env(&[("VERSION", "v1.2.3"), ("TARGETOS", "linux"), ("TARGETARCH", "arm"), ("TARGETVARIANT", "v7")]).gives("something-v1.2.3.linux-arm-v7.tar.gz"), // BK lex_test: TestProcessWithMatchesPlatform
        word("something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz").env(&[("VERSION", "v1.2.3"), ("TARGETOS", "linux"), ("TARGETARCH", "arm64"), ("TARGETVARIANT", "")]).gives("something-v1.2.3.linux-arm64.tar.gz"), // BK lex_test: TestProcessWithMatchesPlatform
        word("something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz").env(&[("VERSION", "v1.2.3"), ("TARGETOS", "linux"), ("TARGETARCH", "arm64")]).gives("something-v1.2.3.linux-arm64.tar.gz").unmatched(&["TARGETVARIANT"]), // BK lex_test: TestProcessWithMatchesPlatform

        // ---- ${VAR:?msg} / ${VAR?msg} ----
        word("${VAR:?message here$ARG}").env(&[("VAR", "plain"), ("ARG", "x")]).gives("plain"), // BK lex_test: TestShellParserMandatoryEnvVars
        word("${VAR:?message here$ARG}").env(&[("VAR", ""), ("ARG", "x")]).fails_at("VAR: message herex", 0), // BK lex_test: TestShellParserMandatoryEnvVars
        word("${VAR:?message here$ARG}").env(&[("ARG", "x")]).fails_at("VAR: message herex", 0), // BK lex_test: TestShellParserMandatoryEnvVars
        word("${VAR?message here$ARG}").env(&[("VAR", "plain"), ("ARG", "x")]).gives("plain"), // BK lex_test: TestShellParserMandatoryEnvVars
        word("${VAR?message here$ARG}").env(&[("VAR", ""), ("ARG", "x")]).gives(""), // BK lex_test: TestShellParserMandatoryEnvVars
        word("${VAR?message here$ARG}").env(&[("ARG", "x")]).fails("VAR: message herex"), // BK lex_test: TestShellParserMandatoryEnvVars
        word("${FOO?aaa}").env(&[("FOO", "xxx"), ("BAR", "")]).gives("xxx").matched(&["FOO"]), // BK lex_test: TestProcessWithMatches
        word("${BAR?bbb}").env(&[("FOO", "xxx"), ("BAR", "")]).gives("").matched(&["BAR"]), // BK lex_test: TestProcessWithMatches
        word("${BAZ?ccc}").env(&[("FOO", "xxx"), ("BAR", "")]).fails("BAZ: ccc"), // BK lex_test: TestProcessWithMatches
        word("${BAR:?bbb}").env(&[("FOO", "xxx"), ("BAR", "")]).fails("BAR: bbb"), // BK lex_test: TestProcessWithMatches
        word("${BAZ:?}").env(&[("FOO", "xxx"), ("BAR", "")]).fails("BAZ: is not allowed to be unset"), // BK lex_test: TestProcessWithMatches
        word("he${NULL:?}").bk().fails_at("NULL: is not allowed to be empty", 2),
        word("he${NULL?}").bk().gives("he"),
        word("he${PWD:?}").bk().gives("he/home"),
        word("x${XXX?}").bk().fails_at("XXX: is not allowed to be unset", 1),

        // ---- ${VAR#p} ${VAR##p} ${VAR%p} ${VAR%%p} ----
        word(r"${FOO#()[]{\}^$.\*\?|\\}").env(&[("FOO", r"()[]{}^$.*?|\x")]).gives("x").matched(&["FOO"]), // BK lex_test: TestProcessWithMatches
        word(r"${FOO%%\**}").env(&[("FOO", "xx**")]).gives("xx"), // BK lex_test: TestProcessWithMatches
        word("${FOO#*x*y}").env(&[("FOO", "xxyy")]).gives("y"), // BK lex_test: TestProcessWithMatches
        word("${FOO#*}").env(&[("FOO", "xxyy")]).gives("xxyy"), // BK lex_test: TestProcessWithMatches
        word("${FOO#$BAR}").env(&[("FOO", "xxyy"), ("BAR", "x")]).gives("xyy").matched(&["BAR", "FOO"]), // BK lex_test: TestProcessWithMatches
        word("${FOO#$BAR}").env(&[("FOO", "xxyy"), ("BAR", "")]).gives("xxyy").matched(&["BAR", "FOO"]), // BK lex_test: TestProcessWithMatches
        word("${FOO#}").env(&[("FOO", "xxyy")]).gives("xxyy"), // BK lex_test: TestProcessWithMatches
        word("${FOO##*x}").env(&[("FOO", "xxyy")]).gives("yy"), // BK lex_test: TestProcessWithMatches
        word("${FOO##}").env(&[("FOO", "xxyy")]).gives("xxyy"), // BK lex_test: TestProcessWithMatches
        word(r"${FOO#?\?}").env(&[("FOO", "???y")]).gives("?y"), // BK lex_test: TestProcessWithMatches
        word("${ABC:-.}${FOO%x}${ABC:-.}").env(&[("FOO", "xxyy")]).gives(".xxyy.").matched(&["FOO"]).unmatched(&["ABC"]), // BK lex_test: TestProcessWithMatches
        word(r"${FOO%%\**\*}").env(&[("FOO", "a***yy*")]).gives("a"), // BK lex_test: TestProcessWithMatches
        word("${FOO%}").env(&[("FOO", "xxyy")]).gives("xxyy"), // BK lex_test: TestProcessWithMatches
        word("${FOO%%$BAR}").env(&[("FOO", "xxyy"), ("BAR", "")]).gives("xxyy"), // BK lex_test: TestProcessWithMatches
        word("${FOO:#}").fails_at("unsupported modifier (:#) in substitution", 0), // BK lex_test: TestProcessWithMatches
        word("${FOO:##}").fails("unsupported modifier (:#) in substitution"), // BK lex_test: TestProcessWithMatches
        word("${FOO:%}").fails("unsupported modifier (:%) in substitution"), // BK lex_test: TestProcessWithMatches
        word("${FOO:%%}").fails("unsupported modifier (:%) in substitution"), // BK lex_test: TestProcessWithMatches
        word("${F#*/}|${F##*/}|${F%/*}|${F%%/*}").env(&[("F", "/usr/local/bin")]).gives("usr/local/bin|bin|/usr/local|"),
        word("${F%.*}|${F%%.*}|${F#*.}|${F##*.}").env(&[("F", "a.tar.gz")]).gives("a.tar|a|tar.gz|gz"),
        // An unset variable is trimmed as the empty string.
        word("[${NOPE#x}]").gives("[]").unmatched(&["NOPE"]),
        // No bracket expressions: `[` and `]` are literal.
        word("${F#[ab]}|${G#[ab]}").env(&[("F", "[ab]c"), ("G", "ac")]).gives("c|ac"),
        // `?` and `*` never match a newline (Go's `.`).
        word("${F#*}|${F##*}|${F#?}").env(&[("F", "a\nb")]).gives("a\nb|\nb|\nb"),
        // Only `*`, `?`, `\` may be escaped in a pattern.
        word(r"${F#a\x}").env(&[("F", "ax")]).fails_at(r"invalid pattern (a\x) in substitution: invalid escape '\x'", 0),
        // BuildKit quirk: for `%` the message shows the pattern reversed.
        word(r"${F%a\x}").env(&[("F", "ax")]).fails(r"invalid pattern (\xa) in substitution: invalid escape '\x'"),
        // A pattern ending in a lone `\` (here from a variable) has no escaped character.
        word("${F#$P}").env(&[("F", "ab"), ("P", "a\\")]).fails("invalid pattern (a\\) in substitution: invalid escape '\\\u{FFFD}'"),
        // BuildKit quirk: `##` is recognised after expansion, so a pattern expanding to `#...` is greedy.
        word("${F#$P}").env(&[("F", "xaxa"), ("P", "#*a")]).gives(""),
        // Trimming works on characters, not bytes.
        word("${F%?}|${F#?}").env(&[("F", "é🚀")]).gives("é|🚀"),

        // ---- ${VAR/p/r} ${VAR//p/r} ----
        word("${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}").env(&[("FOO", "/foo*/*/*.txt"), ("NEEDLE", r"\*/")]).gives("/foo.*/*.txt - /foo..*.txt"), // BK lex_test: TestProcessWithMatches
        word("${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}").env(&[("FOO", "/tmp/tmp/bar.txt"), ("NEEDLE", "/tmp")]).gives("/tmp/bar.txt - /bar.txt"), // BK lex_test: TestProcessWithMatches
        word("${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}").env(&[("FOO", "/a/foo/b/c.txt"), ("NEEDLE", "/?/"), ("REPLACEMENT", "/")]).gives("/foo/b/c.txt - /foo/c.txt").matched(&["FOO", "NEEDLE", "REPLACEMENT"]), // BK lex_test: TestProcessWithMatches
        word("${FOO/$NEEDLE/$REPLACEMENT}").env(&[("FOO", "http://google.de"), ("NEEDLE", "http://"), ("REPLACEMENT", "https://")]).gives("https://google.de"), // BK lex_test: TestProcessWithMatches
        word(r"${FOO//\//\/}").env(&[("FOO", "/tmp/foo.txt")]).gives(r"\/tmp\/foo.txt"), // BK lex_test: TestProcessWithMatches
        word("${FOO/$BAR/ww}").env(&[("FOO", "xxyy"), ("BAR", "")]).gives("wwxxyy"), // BK lex_test: TestProcessWithMatches
        word("${FOO//ww}").env(&[("FOO", "xxyy")]).fails_at("syntax error: missing '/' in ${}", 0), // BK lex_test: TestProcessWithMatches
        word("${FOO//}").env(&[("FOO", "xxyy")]).fails("syntax error: missing '/' in ${}"), // BK lex_test: TestProcessWithMatches
        word("${FOO///}").env(&[("FOO", "xxyy")]).gives("xxyy").matched(&["FOO"]), // BK lex_test: TestProcessWithMatches
        word("${FOO///}").gives("").unmatched(&["FOO"]), // BK lex_test: TestProcessWithMatches
        // The pattern runs to the next `/`, even past a `}`.
        word("${F/a}b/c}").env(&[("F", "xa}by")]).gives("xcy"),
        word("${F/a/b").env(&[("F", "a")]).fails_at("syntax error: missing '}'", 0),
        // Go's ReplaceAllString: an empty pattern matches between every character.
        word("${F//$E/-}").env(&[("F", "ab"), ("E", "")]).gives("-a-b-"),
        // `*` is greedy in replacements, and stops at a newline.
        word("${F/b*/X}|${G//b*/X}").env(&[("F", "abcb"), ("G", "ab\nab")]).gives("aX|aX\naX"),
        // BuildKit quirk: `//` treats the replacement as a Go template ($0 is the match)...
        word("${F//o/$R}").env(&[("F", "foo"), ("R", "<$0|${0}|$$|$1|$x|${x|$>")]).gives("f<o|o|$|||${x|$><o|o|$|||${x|$>"),
        // ...but a single `/` inserts it literally.
        word("${F/o/$R}").env(&[("F", "foo"), ("R", "<$0>")]).gives("f<$0>o"),
        // Escapes in the replacement are kept.
        word(r"${F/o/\x}").env(&[("F", "foo")]).gives(r"f\xo"),

        // ---- syntax errors ----
        word("${}").bk().fails_at("syntax error: bad substitution", 0), // BK envVarTest
        word("he${}xx").bk().fails_at("syntax error: bad substitution", 2), // BK envVarTest
        word("he${.}").bk().fails_at("unsupported modifier (.) in substitution", 2), // BK envVarTest
        word("he${XXX:YYY}").bk().fails("unsupported modifier (:Y) in substitution"), // BK envVarTest
        word("${{aaa}").bk().fails("syntax error: bad substitution"), // BK envVarTest
        word("${:}").bk().fails("syntax error: bad substitution"), // BK envVarTest
        word("${:-bbb}").bk().fails("syntax error: bad substitution"), // BK envVarTest
        word("${aaa:-bbb").bk().fails_at("syntax error: missing '}'", 0), // BK envVarTest
        word("${aaa:-bbb ${foo}").bk().fails_at("syntax error: missing '}'", 0), // BK envVarTest
        word("he${PWD:=000}xx").bk().fails("unsupported modifier (:=) in substitution"), // BK envVarTest
        // BuildKit quirk: an unclosed `${NAME` reads end-of-input as the operator.
        word("he${PWD").bk().fails_at("unsupported modifier (\u{FFFD}) in substitution", 2), // BK envVarTest (error text from lex.go)
        word("${aaa").bk().fails("unsupported modifier (\u{FFFD}) in substitution"), // BK envVarTest (error text from lex.go)
        word("x${").fails_at("syntax error: missing '}'", 1),
        word("${A:").fails("syntax error: missing '}'"),
        word("${FOO=aaa}").env(&[("FOO", "xxx"), ("BAR", "")]).fails("unsupported modifier (=) in substitution"), // BK lex_test: TestProcessWithMatches
        word("${FOO=:aaa}").env(&[("FOO", "xxx"), ("BAR", "")]).fails("unsupported modifier (=) in substitution"), // BK lex_test: TestProcessWithMatches
        word("${FOO=}").fails("unsupported modifier (=) in substitution"), // BK lex_test: TestProcessWithMatches
        // An inner error at the end of input is reported as the outer `${` being unclosed.
        word("ab${A:-'q}").fails_at("syntax error: missing '}'", 2),
        word("${A:-${B?no}").fails_at("syntax error: missing '}'", 0),
        // Otherwise the inner error comes through.
        word("${A:-${B?no}}x").fails_at("B: no", 5),
        word("${A:-'q}'").fails_at("syntax error: missing '}'", 0),

        // ---- `` ` `` as the escape character ----
        word("he`$PWD").bk().escape('`').gives("he$PWD"),
        word(r"C:\dir\$PWD").bk().escape('`').gives(r"C:\dir\/home"),
        word(r#""a`"b\""#).escape('`').gives(r#"a"b\"#),
        word("a``b` c").escape('`').gives("a`b c"),
        word("${X:-`}}").escape('`').gives("}"),
        // The pattern compiler hard-codes `\`, whatever the escape character.
        word(r"${F#\*}").env(&[("F", "*a")]).escape('`').gives("a"),
        word(r"${F#`*}").env(&[("F", "*a")]).escape('`').gives("*a"),

        // ---- raw_quotes / raw_escapes ----
        word(r#"'a b'"c$X"d"#).env(&[("X", "x")]).raw_quotes().gives(r#"'a b'"cx"d"#),
        word("'unterminated").raw_quotes().fails_at("unexpected end of statement while looking for matching single-quote", 0),
        word(r"he\$PWD\").bk().raw_escapes().gives(r"he\$PWD\"),
        word(r#""a\"b\$c""#).raw_escapes().gives(r#"a\"b\$c"#),
        // BuildKit quirk: a non-special escape in double quotes comes out doubled in raw mode.
        word(r#""a\tb""#).raw_escapes().gives(r"a\\tb"),
        // The word of `:-` is always processed with escapes removed.
        word(r"${X:-a\$b}").raw_escapes().gives("a$b"),
        word(r#""a\tb"'c'"#).raw_quotes().raw_escapes().gives(r#""a\\tb"'c'"#),

        // ---- skip_unset_env ----
        word("$FOO|${FOO}|$1|$$|$PWD").bk().skip_unset().gives("$FOO|${FOO}|$1|$$|/home").matched(&["PWD"]).unmatched(&["$", "1", "FOO"]),
        word("${FOO:-bar}|${NULL:-d}|${PWD:-x}").bk().skip_unset().gives("${FOO:-bar}|d|/home"),
        // The text is rebuilt from the expanded word, not the source.
        word(r#"${FOO:-"a b" $PWD \$X}"#).bk().skip_unset().gives("${FOO:-a b /home $X}"),
        word("${FOO##*/}|${FOO%.*}").skip_unset().gives("${FOO##*/}|${FOO%.*}"),
        // BuildKit quirk: `//` comes back as `/`.
        word("${FOO//a/b}|${FOO/a/b}").skip_unset().gives("${FOO/a/b}|${FOO/a/b}"),
        // BuildKit quirk: no error for an unset variable, even for `?` or an unknown operator after `:`.
        word("${FOO:?msg}|${FOO:=x}").skip_unset().gives("${FOO:?msg}|${FOO:=x}").unmatched(&["FOO"]),
        // Without a colon an unknown operator is rejected before the lookup.
        word("${FOO=x}").skip_unset().fails("unsupported modifier (=) in substitution"),
        word("$FOO \"$BAR\" '$BAZ'").env(&[("BAR", "b")]).skip_unset().raw_quotes().gives("$FOO \"b\" '$BAZ'"),

        // ---- expand_words ----
        words("hello").gives_words(&["hello"]),
        words("hello${hi}bye").gives_words(&["hellobye"]).unmatched(&["hi"]),
        words("hello${hi}bye").env(&[("hi", "hi")]).gives_words(&["hellohibye"]).matched(&["hi"]),
        words("hello${space}bye").env(&[("space", "abc  def")]).gives_words(&["helloabc", "defbye"]),
        words("hello\"${space}\"bye").env(&[("space", "abc  def")]).gives_words(&["helloabc  defbye"]),
        words("hello \"${space}\"bye").env(&[("space", "abc  def")]).gives_words(&["hello", "abc  defbye"]),
        words("hello${leading}def").env(&[("leading", "  ab c")]).gives_words(&["hello", "ab", "cdef"]),
        words("hello\"${leading}\" def").env(&[("leading", "  ab c")]).gives_words(&["hello  ab c", "def"]),
        words("hello${trailing}d").env(&[("trailing", "ab c   ")]).gives_words(&["helloab", "c", "d"]),
        words("hello\" there  \"").gives_words(&["hello there  "]),
        words("  hello \t there\n ").gives_words(&["hello", "there"]),
        words(r"hello\ there").gives_words(&["hello there"]),
        words("hello\" there").fails_at("unexpected end of statement while looking for matching double-quote", 5),
        words(r#"hello\" there"#).gives_words(&["hello\"", "there"]),
        words(r"'a\ b' c'd e'").gives_words(&[r"a\ b", "cd e"]),
        // Empty quotes never produce a word (a POSIX shell would give "").
        words(r#"a "" b ''"#).gives_words(&["a", "b"]),
        words(r#""""#).gives_words(&[]),
        words("$EMPTY $SPACES").env(&[("EMPTY", ""), ("SPACES", "   ")]).gives_words(&[]),
        words("${X:-a b}").gives_words(&["a", "b"]),
        // BuildKit quirk: a nested `${...}` word discards the word being built before it.
        words("a${X:-b}c").gives_words(&["bc"]),
        words("x y${X#z}").env(&[("X", "zq")]).gives_words(&["x", "q"]),
        words("pre\"${X:-in}\"").gives_words(&["in"]),
        // Plain `$X` and `${X}` do not have that problem.
        words("a${X}b$X").env(&[("X", "1 2")]).gives_words(&["a1", "2b1", "2"]),
        // BuildKit's wordsTest modeOnlySetEnv options: quotes kept, unset variables kept.
        words("hello\"${space}\" $unset").env(&[("space", "a  b")]).raw_quotes().skip_unset().gives_words(&["hello\"a  b\"", "$unset"]),
        words("80/tcp ${P:-443}").gives_words(&["80/tcp", "443"]),
        words(r"a\").raw_escapes().gives_words(&[r"a\"]),
    ]
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn check(row: &Row) -> Result<(), String> {
    let env: &dyn Env = &row.env;
    let expect = row.expect.as_ref().ok_or("row has no expectation")?;
    let (outcome, matched, unmatched) = if row.split {
        match row.lexer.expand_words(row.input, env) {
            Ok(r) => (Ok(r.words), r.matched, r.unmatched),
            Err(e) => (Err(e), Default::default(), Default::default()),
        }
    } else {
        match row.lexer.expand_word(row.input, env) {
            Ok(r) => (Ok(vec![r.value]), r.matched, r.unmatched),
            Err(e) => (Err(e), Default::default(), Default::default()),
        }
    };
    match (expect, &outcome) {
        (Expect::Value(want), Ok(got)) if got.len() == 1 && got[0] == *want => {}
        (Expect::Words(want), Ok(got)) if got == want => {}
        (Expect::Error { message, offset }, Err(e))
            if e.message == *message && offset.is_none_or(|o| o == e.offset) => {}
        _ => return Err(format!("expected {expect:?}, got {outcome:?}")),
    }
    if let Some(want) = &row.matched {
        let got: Vec<String> = matched.into_iter().collect();
        if got != sorted(want) {
            return Err(format!("matched: expected {want:?}, got {got:?}"));
        }
    }
    if let Some(want) = &row.unmatched {
        let got: Vec<String> = unmatched.into_iter().collect();
        if got != sorted(want) {
            return Err(format!("unmatched: expected {want:?}, got {got:?}"));
        }
    }
    Ok(())
}

#[test]
fn expansion_table() {
    let rows = rows();
    assert!(rows.len() >= 100, "table shrank to {} rows", rows.len());
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|row| {
            check(row)
                .err()
                .map(|why| format!("line {}: {:?}: {why}", row.at.line(), row.input))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

/// Expansion runs on untrusted Dockerfile text: no input may panic, and
/// error offsets must point inside the input.
#[test]
fn arbitrary_input_never_panics() {
    const ALPHABET: &[&str] = &[
        "$", "{", "}", ":", "-", "+", "?", "#", "%", "/", "\\", "`", "'", "\"", "*", "[", "]", "a",
        "B", "1", "é", "🚀", " ", "\n", "\u{FEFF}", "=", "@", "0",
    ];
    let env = vec![
        ("a".to_string(), "x*y/z".to_string()),
        ("B".to_string(), String::new()),
    ];
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..40_000 {
        let len = (next() % 14) as usize;
        let input: String = (0..len)
            .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
            .collect();
        let bits = next();
        let lexer = Lexer {
            escape: if bits & 1 == 0 { '\\' } else { '`' },
            raw_quotes: bits & 2 != 0,
            raw_escapes: bits & 4 != 0,
            skip_unset_env: bits & 8 != 0,
        };
        for result in [
            lexer.expand_word(&input, &env).err(),
            lexer.expand_words(&input, &env).err(),
            lexer.expand_word_ignoring_quotes(&input, &env).err(),
        ]
        .into_iter()
        .flatten()
        {
            assert!(
                result.offset <= input.len() && input.is_char_boundary(result.offset),
                "{input:?}: offset {} out of place",
                result.offset
            );
        }
    }
}

/// BuildKit recurses without limit (Go stacks grow); we must not overflow.
#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let lexer = Lexer::new('\\');
    let env: Vec<(String, String)> = Vec::new();
    let nest = |depth: usize| format!("{}x{}", "${A:-".repeat(depth), "}".repeat(depth));
    assert_eq!(
        lexer.expand_word(&nest(99), &env).map(|r| r.value),
        Ok("x".to_string())
    );
    let err = lexer.expand_word(&nest(100_000), &env).unwrap_err();
    assert_eq!(err.message, "syntax error: expansions nested too deeply");
    let quoted = format!("{}x{}", "${A:-\"".repeat(99), "\"}".repeat(99));
    assert_eq!(
        lexer.expand_word(&quoted, &env).map(|r| r.value),
        Ok("x".to_string())
    );
    let patterns = format!("{}x{}", "${A/\"".repeat(99), "\"/r}".repeat(99));
    assert_eq!(
        lexer.expand_word(&patterns, &env).map(|r| r.value),
        Ok(String::new())
    );
}

/// SkipProcessQuotes (heredoc bodies): quotes are plain text, `$` still expands.
#[test]
fn ignoring_quotes() {
    let lexer = Lexer::new('\\');
    let env = vec![("X".to_string(), "1".to_string())];
    let got = lexer
        .expand_word_ignoring_quotes(r#"echo "$X" '$X' \$X ${Y:-"d"}"#, &env)
        .map(|r| r.value);
    assert_eq!(got, Ok(r#"echo "1" '1' $X "d""#.to_string()));
}

/// A direct backtracking definition of Go's leftmost-first semantics for
/// BuildKit's glob subset (`*` → `.*`/`.*?`, `?` → `.`, `.` not matching a
/// newline), to cross-check the trimming and replacement operators.
mod reference {
    fn step(p: &[char], greedy: bool, t: &[char], pi: usize, ti: usize) -> Option<usize> {
        let eats = t.get(ti).is_some_and(|&c| c != '\n');
        match p.get(pi) {
            None => Some(ti),
            Some('*') => {
                let eat = || eats.then(|| step(p, greedy, t, pi, ti + 1)).flatten();
                let skip = || step(p, greedy, t, pi + 1, ti);
                if greedy {
                    eat().or_else(skip)
                } else {
                    skip().or_else(eat)
                }
            }
            Some('?') => eats.then(|| step(p, greedy, t, pi + 1, ti + 1)).flatten(),
            Some(&c) => (t.get(ti) == Some(&c))
                .then(|| step(p, greedy, t, pi + 1, ti + 1))
                .flatten(),
        }
    }

    fn trim_prefix(p: &[char], t: &[char], greedy: bool) -> Vec<char> {
        match step(p, greedy, t, 0, 0) {
            Some(end) => t[end..].to_vec(),
            None => t.to_vec(),
        }
    }

    pub fn trim(op: &str, pattern: &str, value: &str) -> String {
        let p: Vec<char> = pattern.chars().collect();
        let t: Vec<char> = value.chars().collect();
        let greedy = op.len() == 2;
        if op.starts_with('#') {
            return trim_prefix(&p, &t, greedy).into_iter().collect();
        }
        let rp: Vec<char> = p.into_iter().rev().collect();
        let rt: Vec<char> = t.into_iter().rev().collect();
        trim_prefix(&rp, &rt, greedy).into_iter().rev().collect()
    }

    fn find(p: &[char], t: &[char], from: usize) -> Option<(usize, usize)> {
        (from..=t.len()).find_map(|s| step(p, true, t, 0, s).map(|e| (s, e)))
    }

    /// `${F/p/<$0>}` and `${F//p/<$0>}` with the replacement from a variable.
    pub fn replace(all: bool, pattern: &str, value: &str) -> String {
        let p: Vec<char> = pattern.chars().collect();
        let t: Vec<char> = value.chars().collect();
        let s = |a: usize, b: usize| t[a..b].iter().collect::<String>();
        if !all {
            return match find(&p, &t, 0) {
                Some((a, b)) => format!("{}<$0>{}", s(0, a), s(b, t.len())),
                None => value.to_string(),
            };
        }
        let (mut out, mut last, mut from) = (String::new(), 0, 0);
        while from <= t.len() {
            let Some((a, b)) = find(&p, &t, from) else {
                break;
            };
            out += &s(last, a);
            if b > last || a == 0 {
                out += &format!("<{}>", s(a, b));
            }
            last = b;
            from = if b == from { from + 1 } else { b };
        }
        out + &s(last, t.len())
    }
}

#[test]
fn patterns_agree_with_backtracking_reference() {
    let lexer = Lexer::new('\\');
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut pick = |alphabet: &[char], max: u64| -> String {
        let len = next() % (max + 1);
        (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect()
    };
    for _ in 0..20_000 {
        let pattern = pick(&['a', 'b', '*', '?'], 5);
        let value = pick(&['a', 'b', '\n', 'é'], 7);
        let env = vec![
            ("F".to_string(), value.clone()),
            ("P".to_string(), pattern.clone()),
            ("R".to_string(), "<$0>".to_string()),
        ];
        for op in ["#", "##", "%", "%%"] {
            let input = format!("${{F{op}$P}}");
            let got = lexer.expand_word(&input, &env).map(|r| r.value);
            assert_eq!(
                got,
                Ok(reference::trim(op, &pattern, &value)),
                "{input} F={value:?} P={pattern:?}"
            );
        }
        for all in [false, true] {
            let input = if all { "${F//$P/$R}" } else { "${F/$P/$R}" };
            let got = lexer.expand_word(input, &env).map(|r| r.value);
            assert_eq!(
                got,
                Ok(reference::replace(all, &pattern, &value)),
                "{input} F={value:?} P={pattern:?}"
            );
        }
    }
}
