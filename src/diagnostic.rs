//! Rendering Dockerfile errors and warnings with their source line.
//!
//! The first line always reads `error: FILE:LINE:COLUMN: message` so CI logs
//! and editors can jump to it; the snippet below it is for humans.

use std::fmt::Write as _;

use rbuild_frontend::error::{Error, Warning};
use rbuild_frontend::source::{SourceFile, Span};

/// Formats an error: location, message, the source line(s) and a caret.
pub fn render_error(source: &SourceFile, error: &Error) -> String {
    let mut out = String::new();
    let pos = source.position(error.span.start);
    let _ = writeln!(out, "error: {}:{}: {}", source.name(), pos, error.message);
    snippet(&mut out, source, error.span);
    if let Some(help) = &error.help {
        let _ = writeln!(out, "  = help: {help}");
    }
    out
}

/// Formats a build-check warning the same way, with the rule's name and URL.
pub fn render_warning(source: &SourceFile, warning: &Warning) -> String {
    let mut out = String::new();
    let pos = source.position(warning.span.start);
    let _ = writeln!(
        out,
        "warning: {}:{}: {}: {}",
        source.name(),
        pos,
        warning.rule,
        warning.message
    );
    snippet(&mut out, source, warning.span);
    let _ = writeln!(
        out,
        "  = note: {} (https://docs.docker.com/go/dockerfile/rule/{}/)",
        warning.description,
        rule_slug(warning.rule)
    );
    out
}

/// `JSONArgsRecommended` → `json-args-recommended`, as docs.docker.com names rule pages.
fn rule_slug(rule: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = rule.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev_lower = i > 0 && chars[i - 1].is_ascii_lowercase();
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            let prev_upper = i > 0 && chars[i - 1].is_ascii_uppercase();
            if i > 0 && (prev_lower || (prev_upper && next_lower)) {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Up to three lines of the span, each with carets under the spanned part.
fn snippet(out: &mut String, source: &SourceFile, span: Span) {
    let start = source.position(span.start);
    let end = source.position(span.end.max(span.start));
    let last_line = if span.end > span.start && end.column == 1 && end.line > start.line {
        end.line - 1
    } else {
        end.line
    };
    let shown_last = last_line.min(start.line + 2);
    let width = shown_last.to_string().len();
    let _ = writeln!(out, "{:width$} |", "");
    for line in start.line..=shown_last {
        let text = source.line_text(line);
        let display: String = text
            .chars()
            .map(|c| if c == '\t' { ' ' } else { c })
            .collect();
        let _ = writeln!(out, "{line:>width$} | {display}");
        let from = if line == start.line {
            start.column - 1
        } else {
            0
        };
        let chars = text.chars().count();
        let to = if line == last_line && line == end.line {
            end.column - 1
        } else {
            chars
        };
        let carets = to.saturating_sub(from).max(1);
        let _ = writeln!(
            out,
            "{:width$} | {}{}",
            "",
            " ".repeat(from),
            "^".repeat(carets)
        );
    }
    if shown_last < last_line {
        let _ = writeln!(out, "{:width$} | ...", "");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(rule_slug("JSONArgsRecommended"), "json-args-recommended");
        assert_eq!(rule_slug("FromAsCasing"), "from-as-casing");
        assert_eq!(rule_slug("UndefinedVar"), "undefined-var");
    }

    #[test]
    fn error_names_file_line_column() {
        let src = SourceFile::new("Dockerfile", "FROM x\nRUNN echo\n");
        let err = Error::new("unknown instruction: RUNN", Span::new(7, 11));
        let text = render_error(&src, &err);
        assert!(
            text.starts_with("error: Dockerfile:2:1: unknown instruction: RUNN\n"),
            "{text}"
        );
        assert!(text.contains("2 | RUNN echo\n"), "{text}");
        assert!(text.contains("  | ^^^^\n"), "{text}");
    }
}
