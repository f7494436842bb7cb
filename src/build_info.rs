//! What this build is: its version, as `/metrics` (`tessera_build_info`, on the data plane and
//! on the service) and the status page show it.

use std::fmt::Write as _;

/// The version of this build (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Writes the `tessera_build_info{version="…"} 1` gauge (Prometheus text).
pub fn write_prometheus(out: &mut String) {
    let name = "tessera_build_info";
    let _ = writeln!(out, "# HELP {name} The running build: 1, labelled with its version.\n# TYPE {name} gauge");
    let _ = writeln!(out, "{name}{{version=\"{VERSION}\"}} 1");
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_gauge_names_the_crate_version() {
        let mut out = String::new();
        super::write_prometheus(&mut out);
        let expected = format!("tessera_build_info{{version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION"));
        assert!(out.ends_with(&expected), "{out}");
    }
}
