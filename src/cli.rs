//! Command-line definitions. Flag names and meanings follow `docker buildx build`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// rbuild: build OCI images from Dockerfiles, without a daemon and without root.
#[derive(Debug, Parser)]
#[command(
    name = "rbuild",
    version,
    about,
    after_help = "`rbuild [OPTIONS] PATH` is short for `rbuild build [OPTIONS] PATH`."
)]
pub struct Cli {
    /// Store root [default: $RBUILD_ROOT, else ~/.local/share/rbuild, or /var/lib/rbuild for root].
    #[arg(long, global = true, env = "RBUILD_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// Allow plain http (or an unverified certificate) for this registry
    /// (`HOST[:PORT]`); loopback registries are always allowed. May be repeated.
    #[arg(long = "insecure-registry", global = true, value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a Dockerfile and a context.
    Build(Box<BuildArgs>),
    /// List the images tagged in the store.
    Images,
    /// Remove tags from the store.
    Rmi {
        /// Tags to remove (`name[:tag]`).
        #[arg(required = true, value_name = "NAME[:TAG]")]
        names: Vec<String>,
    },
    /// Print an image's manifest and config as JSON.
    Inspect {
        /// A tag in the store (`name[:tag]`), or a manifest digest.
        #[arg(value_name = "NAME[:TAG]")]
        name: String,
    },
    /// Push an image from the store to a registry.
    Push(PushArgs),
    /// Pull an image from a registry into the store.
    Pull(PullArgs),
    /// Show the store's disk usage by kind.
    Du(DuArgs),
    /// Remove build cache (tagged images stay).
    Prune(PruneArgs),
    /// Print a shell completion script: `source <(rbuild completion bash)`.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Print the man page (roff) of rbuild or of one subcommand, or write
    /// all of them into a directory: `rbuild man --dir /usr/local/share/man/man1`.
    Man {
        /// A subcommand (e.g. `build`); the top-level page without it.
        #[arg(value_name = "SUBCOMMAND")]
        subcommand: Option<String>,
        /// Write `rbuild.1` and `rbuild-SUBCOMMAND.1` for every subcommand here.
        #[arg(long, value_name = "DIR", conflicts_with = "subcommand")]
        dir: Option<PathBuf>,
    },
}

/// Shells `rbuild completion` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    /// bash.
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
}

/// `rbuild du` flags.
#[derive(Debug, Args)]
pub struct DuArgs {
    /// `json` for machine-readable output.
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
}

/// `rbuild prune` flags (those of `docker buildx prune`).
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Also remove snapshots of tagged images, cache mounts and the context
    /// checksum memo.
    #[arg(short, long)]
    pub all: bool,

    /// Remove least recently used cache until the store uses at most SIZE
    /// (e.g. `10GB`).
    #[arg(long, value_name = "SIZE")]
    pub keep_storage: Option<String>,

    /// `until=DURATION`: only cache unused for at least DURATION (e.g. `24h`).
    #[arg(long, value_name = "FILTER")]
    pub filter: Vec<String>,

    /// Do not ask for confirmation.
    #[arg(short, long)]
    pub force: bool,
}

/// `rbuild push` flags.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The image in the store (`name[:tag]`).
    #[arg(value_name = "NAME[:TAG]")]
    pub name: String,

    /// Where to push it [default: NAME].
    #[arg(value_name = "DEST")]
    pub dest: Option<String>,

    /// Layer compression: `gzip`, `zstd` or `uncompressed`.
    #[arg(long, default_value = "gzip", value_name = "TYPE")]
    pub compression: String,

    /// Use Docker's media types instead of OCI's.
    #[arg(long)]
    pub docker_mediatypes: bool,

    /// Progress output.
    #[arg(long, value_enum, default_value_t = Progress::Auto, env = "BUILDKIT_PROGRESS")]
    pub progress: Progress,

    /// Print only the pushed digest.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// `rbuild pull` flags.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// The image (`name[:tag]` or `name@sha256:…`).
    #[arg(value_name = "NAME[:TAG|@DIGEST]")]
    pub reference: String,

    /// The platform to pull from a multi-platform image [default: this machine's].
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,

    /// Progress output.
    #[arg(long, value_enum, default_value_t = Progress::Auto, env = "BUILDKIT_PROGRESS")]
    pub progress: Progress,

    /// Print only the image reference.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// `rbuild build` flags.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Build context: a directory, or `-` to read a tar archive (or a Dockerfile) from stdin.
    #[arg(value_name = "PATH|-")]
    pub context: String,

    /// Name of the Dockerfile [default: PATH/Dockerfile]; `-` reads it from stdin.
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<String>,

    /// Name and optionally a tag (`name:tag`); may be given several times.
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    pub tags: Vec<String>,

    /// Set a build-time variable: `NAME=VALUE`, or `NAME` to take it from the environment.
    #[arg(long = "build-arg", value_name = "NAME[=VALUE]")]
    pub build_args: Vec<String>,

    /// Build this stage instead of the last one.
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,

    /// Target platform, e.g. `linux/amd64`.
    #[arg(long, value_name = "PLATFORM", value_delimiter = ',')]
    pub platform: Vec<String>,

    /// Do not use the cache.
    #[arg(long)]
    pub no_cache: bool,

    /// Do not use the cache for these stages.
    #[arg(long, value_name = "STAGE", value_delimiter = ',')]
    pub no_cache_filter: Vec<String>,

    /// Always look for newer versions of base images.
    #[arg(long)]
    pub pull: bool,

    /// Progress output.
    #[arg(long, value_enum, default_value_t = Progress::Auto, env = "BUILDKIT_PROGRESS")]
    pub progress: Progress,

    /// Only print the image ID (same as --progress=quiet).
    #[arg(short = 'q', long)]
    pub quiet: bool,

    /// Push the image to its registry (shorthand for --output=type=registry).
    #[arg(long)]
    pub push: bool,

    /// Output destination: `type=local,dest=DIR`, `type=oci,dest=FILE`, `type=docker,dest=FILE`,
    /// `type=tar,dest=FILE`, `type=image`, `type=registry`; a bare path means `type=local,dest=PATH`.
    #[arg(short = 'o', long = "output", value_name = "OUTPUT")]
    pub outputs: Vec<String>,

    /// Import cache: `type=registry,ref=…`, `type=local,src=DIR`.
    #[arg(long, value_name = "SOURCE")]
    pub cache_from: Vec<String>,

    /// Export cache: `type=registry,ref=…`, `type=local,dest=DIR`, `type=inline`.
    #[arg(long, value_name = "DEST")]
    pub cache_to: Vec<String>,

    /// Secret to expose to RUN --mount=type=secret: `id=ID[,src=FILE|,env=VAR]`.
    #[arg(long, value_name = "SPEC")]
    pub secret: Vec<String>,

    /// SSH agent socket or keys for RUN --mount=type=ssh: `default|ID[=SOCKET|KEY[,KEY]]`.
    #[arg(long, value_name = "SPEC")]
    pub ssh: Vec<String>,

    /// Additional build context: `NAME=PATH`, `NAME=docker-image://REF`, `NAME=oci-layout://DIR[:TAG]`.
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    pub build_contexts: Vec<String>,

    /// Set a label on the image: `KEY=VALUE`.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,

    /// Network mode for RUN instructions.
    #[arg(long, value_enum, default_value_t = NetworkArg::Default)]
    pub network: NetworkArg,

    /// Write the image ID to this file.
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,

    /// Write build result metadata (JSON) to this file.
    #[arg(long, value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,

    /// Also write the whole build log (every step, every line of output, in
    /// the `plain` format) to this file, whatever --progress shows.
    #[arg(long, value_name = "FILE")]
    pub logfile: Option<PathBuf>,

    /// Instead of building: `targets` lists the stages, `check` runs the build
    /// checks, `graph` prints the build graph as JSON.
    #[arg(long, value_enum, default_value_t = Call::Build)]
    pub call: Call,

    /// Shorthand for --call=check.
    #[arg(long)]
    pub check: bool,

    /// How many steps may run at once [default: number of CPUs].
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,
}

/// `--progress` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Progress {
    /// tty when stderr is a terminal, else plain.
    Auto,
    /// Live display of running steps.
    Tty,
    /// Numbered lines, for logs.
    Plain,
    /// One JSON event per line.
    Json,
    /// Only the image ID.
    Quiet,
}

/// `--network` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkArg {
    /// The default: the host's network (as rootless BuildKit).
    Default,
    /// No network.
    None,
    /// The host's network.
    Host,
}

/// `--call` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Call {
    /// Build the image (the default).
    Build,
    /// Run the build checks and print the findings; exit 1 if there are any.
    Check,
    /// List the stages that can be built with --target.
    Targets,
    /// Print the build graph as JSON.
    Graph,
}

/// Subcommand names, for telling `rbuild PATH` apart from `rbuild SUBCOMMAND`.
pub const SUBCOMMANDS: &[&str] = &[
    "build",
    "images",
    "rmi",
    "inspect",
    "push",
    "pull",
    "du",
    "prune",
    "completion",
    "man",
    "help",
];
