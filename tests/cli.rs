//! The command line as an operator meets it: `config --check` and `serve` refuse the same bad
//! values with the same message, `config --print-default` is the annotated file, completions, the
//! man page, and examples in every `--help`.

use std::path::Path;
use std::process::{Command, Output};

use clap::CommandFactory;
use tessera::config::Config;

fn tessera(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera")).args(args).current_dir(cwd).output().expect("run tessera")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn config_check_and_serve_refuse_the_same_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[serve]\nlisten = \"not-an-addr\"\n", "serve.listen = \"not-an-addr\""),
        ("[store]\nslab_size_bytes = 0\n", "store.slab_size_bytes = 0"),
        ("[serve]\nheader_timeout_ms = 0\n", "serve.header_timeout_ms = 0"),
    ];
    for (index, (text, key)) in cases.iter().enumerate() {
        let file = format!("bad{index}.toml");
        std::fs::write(dir.path().join(&file), text).unwrap();
        let check = tessera(&["config", "--check", &file], dir.path());
        assert_eq!(check.status.code(), Some(2), "config --check {text:?}: {}", stderr(&check));
        assert!(stderr(&check).contains(key), "config --check should name {key}: {}", stderr(&check));
        assert!(stdout(&check).is_empty(), "a refused config is not printed: {}", stdout(&check));
        let serve = tessera(&["serve", "--config", &file, "--data-dir", "data", "--no-service"], dir.path());
        assert_eq!(serve.status.code(), Some(2), "serve {text:?}: {}", stderr(&serve));
        assert!(stderr(&serve).contains(&stderr(&check)), "serve: {}\ncheck: {}", stderr(&serve), stderr(&check));
        assert!(!dir.path().join("data").exists(), "serve started something before refusing {text:?}");
    }
}

#[test]
fn config_check_names_every_bad_key_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[serve]\nlisten = \"not-an-addr\"\nheader_timeout_ms = 0\n[store]\nslab_size_bytes = 0\n";
    std::fs::write(dir.path().join("bad.toml"), text).unwrap();
    let message = stderr(&tessera(&["config", "--check", "bad.toml"], dir.path()));
    for key in ["serve.listen", "serve.header_timeout_ms", "store.slab_size_bytes", "bad.toml"] {
        assert!(message.contains(key), "{key} missing from {message}");
    }
}

#[test]
fn printed_default_is_the_annotated_file_and_passes_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let printed = tessera(&["config", "--print-default"], dir.path());
    assert!(printed.status.success(), "{}", stderr(&printed));
    let text = stdout(&printed);
    assert_eq!(Config::parse(&text, Path::new("printed")).unwrap(), Config::default());
    assert!(text.lines().filter(|line| line.starts_with('#')).count() > 20, "comments missing: {text}");
    assert!(text.contains("# [upstream]") && text.contains("# cert_file = "), "optional keys missing: {text}");
    std::fs::write(dir.path().join("default.toml"), &text).unwrap();
    let check = tessera(&["config", "--check", "default.toml"], dir.path());
    assert!(check.status.success(), "{}", stderr(&check));
    assert_eq!(Config::parse(&stdout(&check), Path::new("checked")).unwrap(), Config::default());
}

/// Top-level subcommand names, from the argument types themselves.
fn subcommand_names() -> Vec<String> {
    tessera::cli::Cli::command().get_subcommands().map(|c| c.get_name().to_string()).collect()
}

#[test]
fn completions_and_man_page_name_the_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let names = subcommand_names();
    assert!(names.len() >= 8, "{names:?}");
    for shell in ["bash", "zsh", "fish"] {
        let output = tessera(&["completions", shell], dir.path());
        assert!(output.status.success(), "{shell}: {}", stderr(&output));
        let script = stdout(&output);
        for name in &names {
            assert!(script.contains(name.as_str()), "{shell} completions miss {name}");
        }
    }
    let unknown = tessera(&["completions", "cmd.exe"], dir.path());
    assert_eq!(unknown.status.code(), Some(2));
    let man = tessera(&["man"], dir.path());
    assert!(man.status.success(), "{}", stderr(&man));
    let page = stdout(&man);
    assert!(page.starts_with(".ie") || page.contains(".TH tessera 1"), "not roff: {page}");
    for name in &names {
        assert!(page.contains(name.as_str()), "man page misses {name}");
    }
}

#[test]
fn every_subcommand_help_ends_with_examples() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths: Vec<Vec<String>> = Vec::new();
    for command in tessera::cli::Cli::command().get_subcommands() {
        paths.push(vec![command.get_name().to_string()]);
        for nested in command.get_subcommands() {
            paths.push(vec![command.get_name().to_string(), nested.get_name().to_string()]);
        }
    }
    for path in paths {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let output = tessera(&args, dir.path());
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
        let help = stdout(&output);
        let examples = help.split_once("\nExamples:\n").map(|(_, rest)| rest).unwrap_or_else(|| {
            panic!("{args:?} has no Examples section:\n{help}");
        });
        let shown = examples.lines().filter(|line| line.starts_with(&format!("  tessera {}", path[0]))).count();
        assert!((2..=3).contains(&shown), "{args:?} should show 2 or 3 examples of itself:\n{examples}");
    }
}
