//! Shell-style word expansion, the way Dockerfile instructions expand `$VAR`.
//!
//! STUB: the real implementation is being written; the API below is fixed.

use std::collections::BTreeSet;

/// Where expansion looks variables up: the stage's ENV plus the ARGs in scope.
pub trait Env {
    /// The value of `name`, or `None` when it is unset (set-but-empty is `Some("")`).
    fn get(&self, name: &str) -> Option<&str>;
}

impl Env for [(String, String)] {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
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
    /// The message, worded as BuildKit words it.
    pub message: String,
    /// Byte offset in the input word where the problem is.
    pub offset: usize,
}

impl Lexer {
    /// A lexer with the given escape character and default options.
    pub fn new(escape: char) -> Self {
        Lexer { escape, raw_quotes: false, raw_escapes: false, skip_unset_env: false }
    }

    /// Expands one word: quotes removed, escapes processed, variables
    /// substituted, no field splitting.
    pub fn expand_word(&self, word: &str, env: &dyn Env) -> Result<Expanded, ExpandError> {
        let _ = env;
        Ok(Expanded { value: word.to_string(), ..Default::default() })
    }

    /// Expands and splits into words on unquoted whitespace.
    pub fn expand_words(&self, words: &str, env: &dyn Env) -> Result<ExpandedWords, ExpandError> {
        let _ = env;
        Ok(ExpandedWords {
            words: words.split_whitespace().map(str::to_string).collect(),
            ..Default::default()
        })
    }
}
