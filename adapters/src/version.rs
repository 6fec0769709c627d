//! The one version string of this build, so that `probermesh version`, `-v`, the link's hello,
//! the HTTP prober's and identity lookups' `User-Agent` and `prober_agent_is_alive{version}`
//! all say the same thing, and a packager (or a test building two releases) can set it:
//! `PROBERMESH_VERSION=1.4.0 cargo build --release` makes a binary that reports 1.4.0;
//! without it (or with it empty) the crate version. A leaf: any adapter may import it.

/// This build's version: `PROBERMESH_VERSION` at build time when set and not empty, else the
/// crate version (`CARGO_PKG_VERSION`). Cargo rebuilds when `PROBERMESH_VERSION` changes
/// (rustc records the variables `option_env!` reads).
pub const VERSION: &str = match option_env!("PROBERMESH_VERSION") {
    Some(version) if !version.is_empty() => version,
    _ => env!("CARGO_PKG_VERSION"),
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_the_build_variable_or_the_crate_version() {
        match option_env!("PROBERMESH_VERSION") {
            Some(set) if !set.is_empty() => assert_eq!(VERSION, set),
            _ => assert_eq!(VERSION, env!("CARGO_PKG_VERSION")),
        }
        assert!(!VERSION.is_empty());
    }
}
