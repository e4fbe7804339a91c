//! Build checks: BuildKit's lint rules, and the `# check=` configuration.

use std::collections::BTreeSet;

use crate::error::Warning;
use crate::source::Span;

/// A build check rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The rule's name, as BuildKit names it.
    pub name: &'static str,
    /// BuildKit's one-line description.
    pub description: &'static str,
    /// Experimental rules only run when enabled by `# check=experimental=…`.
    pub experimental: bool,
}

macro_rules! rules {
    ($($id:ident = $name:literal, $desc:literal, $exp:literal;)*) => {
        $(
            #[doc = $desc]
            pub const $id: Rule = Rule { name: $name, description: $desc, experimental: $exp };
        )*
        /// Every rule.
        pub const ALL: &[Rule] = &[$($id),*];
    };
}

rules! {
    STAGE_NAME_CASING = "StageNameCasing", "Stage names should be lowercase", false;
    FROM_AS_CASING = "FromAsCasing", "The 'as' keyword should match the case of the 'from' keyword", false;
    NO_EMPTY_CONTINUATION = "NoEmptyContinuation", "Empty continuation lines will become errors in a future release", false;
    CONSISTENT_INSTRUCTION_CASING = "ConsistentInstructionCasing", "All commands within the Dockerfile should use the same casing (either upper or lower)", false;
    DUPLICATE_STAGE_NAME = "DuplicateStageName", "Stage names should be unique", false;
    RESERVED_STAGE_NAME = "ReservedStageName", "Reserved words should not be used as stage names", false;
    JSON_ARGS_RECOMMENDED = "JSONArgsRecommended", "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals", false;
    MAINTAINER_DEPRECATED = "MaintainerDeprecated", "The MAINTAINER instruction is deprecated, use a label instead to define an image author", false;
    UNDEFINED_ARG_IN_FROM = "UndefinedArgInFrom", "FROM command must use declared ARGs", false;
    WORKDIR_RELATIVE_PATH = "WorkdirRelativePath", "Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes", false;
    UNDEFINED_VAR = "UndefinedVar", "Variables should be defined before their use", false;
    MULTIPLE_INSTRUCTIONS_DISALLOWED = "MultipleInstructionsDisallowed", "Multiple instructions of the same type should not be used in the same stage", false;
    LEGACY_KEY_VALUE_FORMAT = "LegacyKeyValueFormat", "Legacy key/value format with whitespace separator should not be used", false;
    REDUNDANT_TARGET_PLATFORM = "RedundantTargetPlatform", "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior", false;
    SECRETS_USED_IN_ARG_OR_ENV = "SecretsUsedInArgOrEnv", "Sensitive data should not be used in the ARG or ENV commands", false;
    INVALID_DEFAULT_ARG_IN_FROM = "InvalidDefaultArgInFrom", "Default value for global ARG results in an empty or invalid base image name", false;
    FROM_PLATFORM_FLAG_CONST_DISALLOWED = "FromPlatformFlagConstDisallowed", "FROM --platform flag should not use a constant value", false;
    EXPOSE_PROTO_CASING = "ExposeProtoCasing", "Protocol in EXPOSE instruction should be lowercase", false;
    EXPOSE_INVALID_FORMAT = "ExposeInvalidFormat", "IP address and host-port mapping should not be used in EXPOSE instruction. This will become an error in a future release", false;
    COPY_IGNORED_FILE = "CopyIgnoredFile", "Attempting to Copy file that is excluded by .dockerignore", true;
    INVALID_DEFINITION_DESCRIPTION = "InvalidDefinitionDescription", "Comment for build stage or argument should follow the format: `# <arg/stage name> <description>`. If this is not intended to be a description comment, add an empty line or comment between the instruction and the comment.", true;
}

/// Which rules run, from `# check=` or the BUILDKIT_DOCKERFILE_CHECK build-arg.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LintConfig {
    /// `skip=all`.
    pub skip_all: bool,
    /// `skip=A,B`.
    pub skip: BTreeSet<String>,
    /// `experimental=all`.
    pub experimental_all: bool,
    /// `experimental=A,B`.
    pub experimental: BTreeSet<String>,
    /// `error=true`: any finding fails the build.
    pub error: bool,
}

impl LintConfig {
    /// Parses `skip=…;experimental=…;error=…` with BuildKit's messages.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut config = LintConfig::default();
        let value = value.trim();
        if value.is_empty() {
            return Ok(config);
        }
        for part in value.splitn(3, ';') {
            let Some((key, v)) = part.split_once('=') else {
                return Err(format!("invalid check option {part:?}"));
            };
            let v = v.trim();
            match key.trim() {
                "skip" => {
                    if v == "all" {
                        config.skip_all = true;
                    } else {
                        config.skip.extend(v.split(',').map(|s| s.trim().to_string()));
                    }
                }
                "experimental" => {
                    if v == "all" {
                        config.experimental_all = true;
                    } else {
                        config.experimental.extend(v.split(',').map(|s| s.trim().to_string()));
                    }
                }
                "error" => {
                    config.error = match v {
                        "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
                        "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
                        _ => {
                            return Err(format!(
                                "failed to parse check option {part:?}: strconv.ParseBool: parsing {v:?}: invalid syntax"
                            ))
                        }
                    }
                }
                other => return Err(format!("invalid check option {other:?}")),
            }
        }
        Ok(config)
    }

    fn enabled(&self, rule: &Rule) -> bool {
        if rule.experimental {
            self.experimental_all || self.experimental.contains(rule.name)
        } else {
            !self.skip_all && !self.skip.contains(rule.name)
        }
    }
}

/// Collects findings for enabled rules.
#[derive(Debug, Default)]
pub struct Linter {
    config: LintConfig,
    warnings: Vec<Warning>,
}

impl Linter {
    /// A linter with the given configuration.
    pub fn new(config: LintConfig) -> Self {
        Linter {
            config,
            warnings: Vec::new(),
        }
    }

    /// Records a finding if the rule is enabled.
    pub fn report(&mut self, rule: &Rule, span: Span, message: impl Into<String>) {
        if self.config.enabled(rule) {
            self.warnings.push(Warning {
                rule: rule.name,
                description: rule.description,
                message: message.into(),
                span,
            });
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LintConfig {
        &self.config
    }

    /// The findings so far, sorted by position and de-duplicated.
    pub fn finish(mut self) -> Vec<Warning> {
        self.warnings.sort_by_key(|w| (w.span.start, w.rule));
        self.warnings.dedup();
        self.warnings
    }
}

/// SecretsUsedInArgOrEnv: does this ARG/ENV name look like it holds a secret?
pub fn looks_secret(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let tokens: Vec<&str> = lower.split('_').collect();
    const SECRET: &[&str] = &[
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "pword",
        "passwd",
        "secret",
        "token",
    ];
    const ALLOWED: &[&str] = &["public", "file", "version"];
    tokens.iter().any(|t| SECRET.contains(t)) && !tokens.iter().any(|t| ALLOWED.contains(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_directive() {
        let c = LintConfig::parse("skip=JSONArgsRecommended,UndefinedVar;error=true").unwrap();
        assert!(c.error);
        assert!(c.skip.contains("UndefinedVar"));
        assert!(LintConfig::parse("skip=all").unwrap().skip_all);
        assert_eq!(
            LintConfig::parse("bogus").unwrap_err(),
            "invalid check option \"bogus\""
        );
        assert!(LintConfig::parse("error=maybe").is_err());
    }

    #[test]
    fn secret_names() {
        assert!(looks_secret("AWS_SECRET_ACCESS_KEY"));
        assert!(looks_secret("GITHUB_TOKEN"));
        assert!(looks_secret("password"));
        assert!(!looks_secret("PUBLIC_KEY"));
        assert!(!looks_secret("KEY_FILE"));
        assert!(!looks_secret("MONKEY"));
    }
}
