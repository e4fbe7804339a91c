//! Every Dockerfile error names the right place: each row is a Dockerfile,
//! the exact message, and the line:column the error points at.

use rbuild_frontend::{lower, parse, NoImages, Options, SourceFile};
use rbuild_solver::graph::Platform;

/// (Dockerfile, expected message, expected "line:column").
const CASES: &[(&str, &str, &str)] = &[
    // --- syntax layer ---
    ("FROM alpine\nRUNN echo hi\n", "unknown instruction: RUNN (did you mean RUN?)", "2:1"),
    ("FROM alpine\ncopyy a b\n", "unknown instruction: copyy (did you mean copy?)", "2:1"),
    ("FROM alpine\nFROBNICATE\n", "unknown instruction: FROBNICATE", "2:1"),
    ("# only a comment\n\n", "file with no instructions", "3:1"),
    ("RUN echo hi\nFROM alpine\n", "no build stage in current context", "1:1"),
    ("# escape=x\nFROM alpine\n", "invalid escape token 'x' does not match ` or \\", "1:10"),
    ("# syntax=a\n# syntax=b\nFROM alpine\n", "only one syntax parser directive can be used", "2:10"),
    ("FROM alpine\nRUN <<EOF\necho hi\n", "unterminated heredoc", "2:5"),
    ("FROM alpine\nCOPY <<A <<B /dst/\na\nA\nb\n", "unterminated heredoc", "2:10"),
    ("FROM alpine\nRUN [\"echo\", 1]\n", "when using JSON array syntax, arrays must be comprised of strings only", "2:5"),
    ("FROM alpine\nENV FOO\n", "ENV must have two arguments", "2:5"),
    ("FROM alpine\nENV A=1 B\n", "Syntax error - can't find = in \"B\". Must be of the form: name=value", "2:9"),
    ("FROM alpine\nLABEL =x\n", "LABEL names can not be blank", "2:7"),
    ("FROM alpine\nARG =x\n", "ARG names can not be blank", "2:5"),
    // --- flags ---
    ("FROM alpine\nCOPY --form=build a b\n", "unknown flag: --form (did you mean from?)", "2:6"),
    ("FROM alpine\nCOPY --link=yes a b\n", "expecting boolean value for flag --link, not: yes", "2:6"),
    ("FROM alpine\nCOPY --chown a b\n", "missing a value on flag: --chown", "2:6"),
    ("FROM alpine\nCOPY --chmod=644 --chmod=600 a b\n", "duplicate flag specified: --chmod", "2:18"),
    ("FROM alpine\nENV --x=1 A=B\n", "unknown flag: --x", "2:5"),
    ("FROM alpine\nRUN --network=Host echo\n", "invalid network mode \"Host\"", "2:5"),
    ("FROM alpine\nRUN --security=root echo\n", "security \"root\" is not valid", "2:5"),
    ("FROM alpine\nRUN --mount=type=secret echo\n", "invalid secret mount. one of source, target required", "2:5"),
    ("FROM alpine\nRUN --mount=type=cache,target=/c,sharing=lockd echo\n", "unsupported sharing value \"lockd\" (did you mean locked?)", "2:5"),
    ("FROM alpine\nRUN --mount=type=bind,target=/x,mode=0755 echo\n", "mode not allowed for \"bind\" type mounts", "2:5"),
    ("FROM alpine\nRUN --mount=type=bind,from=$X,target=/x echo\n", "'from' doesn't support variable expansion, define alias stage instead", "2:5"),
    // --- instructions ---
    ("FROM alpine\nCOPY onlyone\n", "COPY requires at least two arguments, but only one was provided. Destination could not be determined", "2:6"),
    ("FROM alpine\nADD\n", "ADD requires at least two arguments, but only one was provided. Destination could not be determined", "2:1"),
    ("FROM alpine\nCOPY a <<EOF\nhi\nEOF\n", "COPY cannot accept a heredoc as a destination", "2:8"),
    ("FROM a b\n", "FROM requires either one or three arguments", "1:6"),
    ("FROM alpine AS 1stage\n", "invalid name for build stage: \"1stage\", name can't start with a number or contain symbols", "1:16"),
    ("FROM alpine\nSHELL /bin/bash -c\n", "SHELL requires the arguments to be in JSON form", "2:7"),
    ("FROM alpine\nWORKDIR\n", "WORKDIR requires exactly one argument", "2:1"),
    ("FROM alpine\nEXPOSE\n", "EXPOSE requires at least one argument", "2:1"),
    ("FROM alpine\nVOLUME [\"\"]\n", "VOLUME specified can not be an empty string", "2:8"),
    ("FROM alpine\nHEALTHCHECK --interval=1us CMD true\n", "Interval \"interval\" cannot be less than 1ms", "2:13"),
    ("FROM alpine\nHEALTHCHECK --timeout=5 CMD true\n", "time: missing unit in duration \"5\"", "2:13"),
    ("FROM alpine\nHEALTHCHECK --retries=-1 CMD true\n", "--retries cannot be negative (-1)", "2:13"),
    ("FROM alpine\nHEALTHCHECK CMD-SHELL true\n", "Unknown type \"CMD-SHELL\" in HEALTHCHECK (try CMD)", "2:13"),
    ("FROM alpine\nHEALTHCHECK NONE true\n", "HEALTHCHECK NONE takes no arguments", "2:13"),
    ("FROM alpine\nONBUILD ONBUILD RUN x\n", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed", "2:9"),
    ("FROM alpine\nONBUILD FROM busybox\n", "FROM isn't allowed as an ONBUILD trigger", "2:9"),
    // --- lowering: stages, expansion, values ---
    ("FROM alpine\nCOPY --from=image:with:colons a b\n", "failed to parse stage name \"image:with:colons\": invalid reference format", "2:6"),
    ("FROM alpine AS a\nCOPY --from=a /x /y\n", "circular dependency detected on stage: a", "2:6"),
    ("FROM alpine AS a\nCOPY --from=b /x /y\nFROM alpine AS b\nCOPY --from=a /y /z\n", "circular dependency detected on stage: a", "4:6"),
    ("FROM alpine AS a\nCOPY --from=b /x /y\nFROM alpine AS b\nFROM alpine\nCOPY --from=a /y /z\n", "cannot copy from stage \"b\", it needs to be defined before current stage \"a\"", "2:6"),
    ("FROM alpine\nCOPY --from=3 /x /y\n", "invalid stage index 3", "2:6"),
    ("FROM alpine\nARG SRC=a\nCOPY --from=$SRC /x /y\n", "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround", "3:6"),
    ("FROM --platform=linux/bogus alpine\n", "failed to parse platform linux/bogus: \"linux/bogus\": unknown operating system or architecture: invalid argument", "1:6"),
    ("ARG IMAGE\nFROM $IMAGE\n", "base name ($IMAGE) should not be blank", "2:6"),
    ("FROM Alpine\n", "failed to parse stage name \"Alpine\": invalid reference format: repository name (library/Alpine) must be lowercase", "1:6"),
    ("FROM alpine\nWORKDIR ${DIR:?set DIR first}\n", "failed to process \"${DIR:?set DIR first}\": DIR: set DIR first", "2:9"),
    // BuildKit's own wording for an unclosed `${`.
    ("FROM alpine\nENV A=${B\n", "failed to process \"${B\": unsupported modifier (\u{FFFD}) in substitution", "2:7"),
    ("FROM alpine\nENV A=${\n", "failed to process \"${\": syntax error: missing '}'", "2:7"),
    ("FROM alpine\nCOPY --chmod=999 a b\n", "invalid chmod parameter: '999'. it should be octal string and between 0 and 07777", "2:6"),
    ("FROM alpine\nCOPY https://example.com/f.txt /f\n", "source can't be a URL for COPY", "2:6"),
    ("FROM alpine AS first\nCOPY --from=LATER a b\nFROM alpine AS later\nFROM alpine\nCOPY --from=first / /\n", "cannot copy from stage \"LATER\", it needs to be defined before current stage \"first\"", "2:6"),
    ("FROM alpine\nCOPY ../secret /x\n", "forbidden path outside the build context: ../secret", "2:6"),
    ("FROM alpine\nWORKDIR /app\nCOPY sub/../../x /x\n", "forbidden path outside the build context: sub/../../x", "3:6"),
    ("FROM alpine\nSTOPSIGNAL SIGFOO\n", "invalid signal: SIGFOO", "2:12"),
    ("FROM alpine\nEXPOSE 80/xyz\n", "invalid proto: xyz", "2:8"),
    ("FROM alpine\nADD --checksum=sha256:abc https://example.com/f /f\n", "invalid checksum digest \"sha256:abc\"", "2:1"),
    ("FROM alpine\nCOPY --checksum=sha256:abc a b\n", "unknown flag: --checksum", "2:6"),
    ("FROM alpine\nRUN --mount=type=cache echo\n", "invalid mount target \"/\"", "2:5"),
];

fn check(text: &str) -> Result<(), (String, String)> {
    let source = SourceFile::new("Dockerfile", text);
    let at = |span: rbuild_frontend::Span| source.position(span.start).to_string();
    let df = parse(text).map_err(|e| (e.message.clone(), at(e.span)))?;
    let options = Options {
        build_platform: Platform::parse("linux/amd64").unwrap(),
        ..Options::default()
    };
    lower(&df, &options, &NoImages).map_err(|e| (e.message.clone(), at(e.span)))?;
    Ok(())
}

#[test]
fn errors_name_message_and_position() {
    let mut failures = Vec::new();
    for (text, message, position) in CASES {
        match check(text) {
            Ok(()) => failures.push(format!("{text:?}: no error, expected {message:?}")),
            Err((m, p)) if m == *message && p == *position => {}
            Err((m, p)) => failures.push(format!(
                "{text:?}:\n   got {p} {m:?}\n  want {position} {message:?}"
            )),
        }
    }
    assert!(CASES.len() >= 25);
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn no_input_panics() {
    // Truncations of every case, and some byte soup, must give errors or
    // graphs, never a panic.
    for (text, _, _) in CASES {
        for end in 0..=text.len() {
            if text.is_char_boundary(end) {
                let _ = check(&text[..end]);
            }
        }
    }
    let soup = [
        "\\",
        "`",
        "$",
        "${",
        "<<",
        "<<-",
        "\"",
        "'",
        "--",
        "--mount=",
        "--from=",
        "=",
        "[",
        "]",
        ",",
        "\r\n",
        "\n",
        " ",
        "\t",
        "#",
        "# escape=`\n",
        "FROM",
        "RUN",
        "COPY",
        "ADD",
        "ARG",
        "ENV",
        "ONBUILD",
        "HEALTHCHECK",
        "EXPOSE",
        "WORKDIR",
        "AS",
        "EOF",
        "a",
        "0",
        ":",
        "/",
        "ü",
        "}",
        "type=cache,target=/x",
        "type=secret,id=x",
    ];
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    // RBUILD_FUZZ_ITERATIONS raises the count for a longer local run.
    let iterations = std::env::var("RBUILD_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    for _ in 0..iterations {
        let mut s = String::from("FROM x\n");
        for _ in 0..(4 + seed % 24) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            s.push_str(soup[(seed % soup.len() as u64) as usize]);
        }
        let _ = check(&s);
    }
}
