//! `.dockerignore` semantics, checked against moby/patternmatcher's own test
//! tables. Each row is tagged with where it comes from:
//!
//! - `pm:TestMatches` / `pm:multi`: patternmatcher_test.go `TestMatches`
//!   (`tests` and `multiPatternTests`), evaluated the way BuildKit's context
//!   walker does (`MatchesUsingParentResults`, the "MatchesUsingParentResults"
//!   subtest there).
//! - `pm:TestMatch`: the Go `filepath.Match` cases patternmatcher replays
//!   through `Matches` (single path components, so parent handling agrees).
//! - `ignorefile`: ignorefile_test.go `TestReadAll`.
//! - `rbuild`: corners derived by reading patternmatcher.go and fsutil's
//!   filter.go (regex pass-through quirks, parent-result inheritance).
#![cfg(feature = "exec")]

use rbuild_solver::context::DockerIgnore;

const WHL: &str = "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl";

/// (tag, patterns, path, excluded)
fn table() -> Vec<(&'static str, Vec<&'static str>, &'static str, bool)> {
    let one = |tag, p, path, ex| (tag, vec![p], path, ex);
    vec![
        one("pm:TestMatches", "**", "file", true),
        one("pm:TestMatches", "**", "file/", true),
        one("pm:TestMatches", "**/", "file", true),
        one("pm:TestMatches", "**/", "file/", true),
        one("pm:TestMatches", "**", "dir/file", true),
        one("pm:TestMatches", "**/", "dir/file", true),
        one("pm:TestMatches", "**", "dir/file/", true),
        one("pm:TestMatches", "**/", "dir/file/", true),
        one("pm:TestMatches", "**/**", "dir/file", true),
        one("pm:TestMatches", "**/**", "dir/file/", true),
        one("pm:TestMatches", "dir/**", "dir/file", true),
        one("pm:TestMatches", "dir/**", "dir/file/", true),
        one("pm:TestMatches", "dir/**", "dir/dir2/file", true),
        one("pm:TestMatches", "dir/**", "dir/dir2/file/", true),
        one("pm:TestMatches", "**/dir", "dir", true),
        one("pm:TestMatches", "**/dir", "dir/file", true),
        one("pm:TestMatches", "**/dir2/*", "dir/dir2/file", true),
        one("pm:TestMatches", "**/dir2/*", "dir/dir2/file/", true),
        one("pm:TestMatches", "**/dir2/**", "dir/dir2/dir3/file", true),
        one("pm:TestMatches", "**/dir2/**", "dir/dir2/dir3/file/", true),
        one("pm:TestMatches", "**file", "file", true),
        one("pm:TestMatches", "**file", "dir/file", true),
        one("pm:TestMatches", "**/file", "dir/file", true),
        one("pm:TestMatches", "**file", "dir/dir/file", true),
        one("pm:TestMatches", "**/file", "dir/dir/file", true),
        one("pm:TestMatches", "**/file*", "dir/dir/file", true),
        one("pm:TestMatches", "**/file*", "dir/dir/file.txt", true),
        one("pm:TestMatches", "**/file*txt", "dir/dir/file.txt", true),
        one("pm:TestMatches", "**/file*.txt", "dir/dir/file.txt", true),
        one("pm:TestMatches", "**/file*.txt*", "dir/dir/file.txt", true),
        one("pm:TestMatches", "**/**/*.txt", "dir/dir/file.txt", true),
        one("pm:TestMatches", "**/**/*.txt2", "dir/dir/file.txt", false),
        one("pm:TestMatches", "**/*.txt", "file.txt", true),
        one("pm:TestMatches", "**/**/*.txt", "file.txt", true),
        one("pm:TestMatches", "a**/*.txt", "a/file.txt", true),
        one("pm:TestMatches", "a**/*.txt", "a/dir/file.txt", true),
        one("pm:TestMatches", "a**/*.txt", "a/dir/dir/file.txt", true),
        one("pm:TestMatches", "a/*.txt", "a/dir/file.txt", false),
        one("pm:TestMatches", "a/*.txt", "a/file.txt", true),
        one("pm:TestMatches", "a/*.txt**", "a/file.txt", true),
        one("pm:TestMatches", "a[b-d]e", "ae", false),
        one("pm:TestMatches", "a[b-d]e", "ace", true),
        one("pm:TestMatches", "a[b-d]e", "aae", false),
        one("pm:TestMatches", "a[^b-d]e", "aze", true),
        one("pm:TestMatches", ".*", ".foo", true),
        one("pm:TestMatches", ".*", "foo", false),
        one("pm:TestMatches", "abc.def", "abcdef", false),
        one("pm:TestMatches", "abc.def", "abc.def", true),
        one("pm:TestMatches", "abc.def", "abcZdef", false),
        one("pm:TestMatches", "abc?def", "abcZdef", true),
        one("pm:TestMatches", "abc?def", "abcdef", false),
        one("pm:TestMatches", "**/foo/bar", "foo/bar", true),
        one("pm:TestMatches", "**/foo/bar", "dir/foo/bar", true),
        one("pm:TestMatches", "**/foo/bar", "dir/dir2/foo/bar", true),
        one("pm:TestMatches", "abc/**", "abc", false),
        one("pm:TestMatches", "abc/**", "abc/def", true),
        one("pm:TestMatches", "abc/**", "abc/def/ghi", true),
        one("pm:TestMatches", "**/.foo", ".foo", true),
        one("pm:TestMatches", "**/.foo", "bar.foo", false),
        one("pm:TestMatches", "a(b)c/def", "a(b)c/def", true),
        one("pm:TestMatches", "a(b)c/def", "a(b)c/xyz", false),
        one("pm:TestMatches", "a.|)$(}+{bc", "a.|)$(}+{bc", true),
        one("pm:TestMatches", WHL, WHL, true),
        one("pm:TestMatches", "dist/*.whl", WHL, true),
        one("pm:TestMatches", "a\\\\", "a\\", true),
        one("pm:TestMatches", "a\\*b", "a*b", true),
        (
            "pm:multi",
            vec!["**", "!util/docker/web"],
            "util/docker/web/foo",
            false,
        ),
        (
            "pm:multi",
            vec!["**", "!util/docker/web", "util/docker/web/foo"],
            "util/docker/web/foo",
            true,
        ),
        (
            "pm:multi",
            vec!["**", &*Box::leak(format!("!{WHL}").into_boxed_str())],
            WHL,
            false,
        ),
        ("pm:multi", vec!["**", "!dist/*.whl"], WHL, false),
        one("pm:TestMatch", "abc", "abc", true),
        one("pm:TestMatch", "*", "abc", true),
        one("pm:TestMatch", "*c", "abc", true),
        one("pm:TestMatch", "a*", "a", true),
        one("pm:TestMatch", "a*", "abc", true),
        one("pm:TestMatch", "a*", "ab/c", true),
        one("pm:TestMatch", "a*/b", "abc/b", true),
        one("pm:TestMatch", "a*/b", "a/c/b", false),
        one("pm:TestMatch", "a*b*c*d*e*/f", "axbxcxdxe/f", true),
        one("pm:TestMatch", "a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
        one("pm:TestMatch", "a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
        one("pm:TestMatch", "a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
        one("pm:TestMatch", "a*b?c*x", "abxbbxdbxebxczzx", true),
        one("pm:TestMatch", "a*b?c*x", "abxbbxdbxebxczzy", false),
        one("pm:TestMatch", "ab[c]", "abc", true),
        one("pm:TestMatch", "ab[b-d]", "abc", true),
        one("pm:TestMatch", "ab[e-g]", "abc", false),
        one("pm:TestMatch", "ab[^c]", "abc", false),
        one("pm:TestMatch", "ab[^b-d]", "abc", false),
        one("pm:TestMatch", "ab[^e-g]", "abc", true),
        one("pm:TestMatch", "a\\*b", "ab", false),
        one("pm:TestMatch", "a?b", "a☺b", true),
        one("pm:TestMatch", "a[^a]b", "a☺b", true),
        one("pm:TestMatch", "a???b", "a☺b", false),
        one("pm:TestMatch", "a[^a][^a][^a]b", "a☺b", false),
        one("pm:TestMatch", "[a-ζ]*", "α", true),
        one("pm:TestMatch", "*[a-ζ]", "A", false),
        one("pm:TestMatch", "a?b", "a/b", false),
        one("pm:TestMatch", "a*b", "a/b", false),
        one("pm:TestMatch", "[\\]a]", "]", true),
        one("pm:TestMatch", "[\\-]", "-", true),
        one("pm:TestMatch", "[x\\-]", "x", true),
        one("pm:TestMatch", "[x\\-]", "-", true),
        one("pm:TestMatch", "[x\\-]", "z", false),
        one("pm:TestMatch", "[\\-x]", "x", true),
        one("pm:TestMatch", "[\\-x]", "-", true),
        one("pm:TestMatch", "[\\-x]", "a", false),
        one("pm:TestMatch", "*x", "xxx", true),
        // Folder patterns with exceptions (pm TestPatternMatchesFolder*).
        (
            "pm:TestPatternMatchesFolderExclusions",
            vec!["docs", "!docs/README.md"],
            "docs/README.md",
            false,
        ),
        (
            "pm:TestPatternMatchesFolderWithSlashExclusions",
            vec!["docs/", "!docs/README.md"],
            "docs/README.md",
            false,
        ),
        (
            "pm:TestPatternMatchesFolderWildcardExclusions",
            vec!["docs/*", "!docs/README.md"],
            "docs/README.md",
            false,
        ),
        (
            "pm:TestExclusionPatternMatchesPatternBefore",
            vec!["!fileutils.go", "*.go"],
            "fileutils.go",
            true,
        ),
        (
            "pm:TestExclusionPatternMatchesPatternAfter",
            vec!["*.go", "!fileutils.go"],
            "fileutils.go",
            false,
        ),
        (
            "pm:TestExclusionPatternMatchesWholeDirectory",
            vec!["*.go"],
            ".",
            false,
        ),
        // rbuild: BuildKit's parent-result inheritance. The third pattern is
        // skipped for `dir` (already excluded) so `dir/keep/x` does not
        // inherit it; MatchesOrParentMatches would say excluded.
        (
            "rbuild",
            vec!["dir", "!dir/keep", "dir"],
            "dir/keep/x",
            false,
        ),
        ("rbuild", vec!["dir", "!dir/keep", "dir"], "dir/other", true),
        ("rbuild", vec!["*", "!keep/**"], "keep", true),
        ("rbuild", vec!["*", "!keep/**"], "keep/a/b", false),
        ("rbuild", vec!["*", "!keep"], "keep/a/b", false),
        (
            "rbuild",
            vec!["**/*.log", "!important.log"],
            "important.log",
            false,
        ),
        (
            "rbuild",
            vec!["**/*.log", "!important.log"],
            "sub/important.log",
            true,
        ),
        // rbuild: `.` cleans to "." and matches nothing; `/x` is `x`.
        ("rbuild", vec!["."], "anything", false),
        ("rbuild", vec!["/secret"], "secret", true),
        ("rbuild", vec!["build/"], "build/out/a.o", true),
        // rbuild: `**foo` is a suffix match, so it also takes `xfoo`.
        ("rbuild", vec!["**foo"], "xfoo", true),
        ("rbuild", vec!["**/foo"], "xfoo", false),
        // rbuild: `^` is passed to the regex as an anchor in regex patterns
        // but compared literally in exact ones.
        ("rbuild", vec!["^foo*"], "foobar", true),
        ("rbuild", vec!["^foo*"], "^foobar", false),
        ("rbuild", vec!["a^b*"], "a^bc", false),
        ("rbuild", vec!["a^b"], "a^b", true),
        // rbuild: `[*]` becomes the regex `[[^/]*]`.
        ("rbuild", vec!["[*]"], "*", false),
        ("rbuild", vec!["[*]"], "]", true),
        // rbuild: `\d` is a Go regex digit class, not a literal `d`.
        ("rbuild", vec!["foo\\d"], "foo1", true),
        ("rbuild", vec!["foo\\d"], "food", false),
        // rbuild: `*` never crosses `/`, but parent matching covers it.
        ("rbuild", vec!["*.md"], "docs/x.md", false),
        ("rbuild", vec!["*/*.md"], "docs/x.md", true),
        (
            "rbuild",
            vec!["node_modules"],
            "node_modules/a/b/c.js",
            true,
        ),
        ("rbuild", vec!["node_modules"], "src/node_modules/x", false),
        (
            "rbuild",
            vec!["**/node_modules"],
            "src/node_modules/x",
            true,
        ),
    ]
}

#[test]
fn pattern_table() {
    let rows = table();
    assert!(rows.len() >= 60, "only {} rows", rows.len());
    let mut failures = Vec::new();
    for (tag, patterns, path, want) in &rows {
        let text = patterns.join("\n");
        let ig = match DockerIgnore::parse(&text) {
            Ok(ig) => ig,
            Err(e) => {
                failures.push(format!("[{tag}] {patterns:?}: parse error {e}"));
                continue;
            }
        };
        let got = ig.is_excluded(path, false);
        if got != *want {
            failures.push(format!(
                "[{tag}] {patterns:?} on {path:?}: got {got}, want {want}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn malformed_patterns_are_errors() {
    // pm:TestMatch error rows, pm:TestSingleExclamationError, and the
    // `[Local-Only]` regression (valid for filepath.Match, refused by Go's
    // regexp because `l-O` is a reversed range).
    for bad in [
        "[]a]",
        "[-]",
        "[x-]",
        "[-x]",
        "\\",
        "[a-b-c]",
        "[",
        "[^",
        "[^bc",
        "a[",
        "!",
        "[Local-Only]/",
    ] {
        assert!(
            DockerIgnore::parse(bad).is_err(),
            "{bad:?} should be refused"
        );
    }
    let err = DockerIgnore::parse("ok\n!").unwrap_err().to_string();
    assert!(err.contains("illegal exclusion pattern"), "{err}");
}

#[test]
fn read_all_like_ignorefile() {
    // ignorefile: TestReadAll.
    let content =
        "test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n!\n! ";
    assert_eq!(
        DockerIgnore::read_all(content),
        [
            "test1",
            "test2",
            "a/file/here",
            "lastfile",
            "!inverted/abs/path",
            "!",
            "!"
        ]
    );
    // BOM, CRLF, indented `#` is a pattern, Clean applied.
    assert_eq!(
        DockerIgnore::read_all("\u{feff}a/./b/\r\n  # not a comment\r\n#comment\n\t\n/\n./x/../y"),
        ["a/b", "# not a comment", "/", "y"]
    );
    let ig = DockerIgnore::parse("  # hash\n").unwrap();
    assert!(ig.is_excluded("# hash", false));
}

#[test]
fn may_include_under_follows_fsutil() {
    let ig = DockerIgnore::parse("dir\nother\n!dir/keep/**").unwrap();
    assert!(ig.may_include_under("dir"));
    assert!(!ig.may_include_under("other"));
    // Without exceptions nothing under an excluded dir can come back.
    assert!(!DockerIgnore::parse("dir").unwrap().may_include_under("dir"));
    // A wildcard exception could match anywhere: always walk.
    assert!(DockerIgnore::parse("*\n!**/*.go")
        .unwrap()
        .may_include_under("vendor"));
    assert_eq!(
        DockerIgnore::parse("a\n!b").unwrap().patterns(),
        ["a", "!b"]
    );
}
