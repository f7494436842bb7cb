//! The appliance as an operator installs it (`appliance/`): the systemd unit passes
//! `systemd-analyze verify` and its readiness protocol works, `install.sh` lays out every file
//! under a `DESTDIR`, changes nothing when run again and removes what it installed, and the
//! sysctl file, the container's seccomp profile and the Containerfile say what they should.
//! Everything is written inside the tests' own temp dirs.

mod harness;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a `serve` gets to become ready and to stop.
const WAIT: Duration = Duration::from_secs(20);

fn appliance() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("appliance")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Runs `systemd-analyze ARGS`, which `scripts/test` installs (Debian's `systemd`).
fn systemd_analyze(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new("systemd-analyze");
    command.args(args).envs(env.iter().copied());
    match command.output() {
        Ok(output) => output,
        Err(error) if error.kind() == ErrorKind::NotFound => {
            panic!("systemd-analyze is not installed: run `bash scripts/test`, which installs Debian's systemd")
        }
        Err(error) => panic!("cannot run systemd-analyze: {error}"),
    }
}

// ---- sd_notify readiness ----

#[test]
fn serve_tells_systemd_it_is_ready_once_it_accepts_and_that_it_is_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    systemd.set_read_timeout(Some(WAIT)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let mut child = harness::tessera()
        .args(["serve", "--no-service", "--workers", "1", "--listen", &address, "--data-dir"])
        .arg(dir.path().join("data"))
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let serve_log = || std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
    let mut buffer = [0u8; 256];
    let count = systemd.recv(&mut buffer).unwrap_or_else(|e| panic!("no READY=1 ({e}):\n{}", serve_log()));
    assert_eq!(&buffer[..count], b"READY=1");
    // Ready means accepting: the first request right after it is answered.
    let (status, _, _) = harness::get(&address, "/healthz", None);
    assert_eq!(status, 200);

    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let count = systemd.recv(&mut buffer).unwrap_or_else(|e| panic!("no STOPPING=1 ({e}):\n{}", serve_log()));
    assert_eq!(&buffer[..count], b"STOPPING=1");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("serve did not stop within {WAIT:?} of SIGTERM:\n{}", serve_log());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}:\n{}", serve_log());
}

// ---- install.sh ----

/// `appliance/install.sh ARGS` into `root` (DESTDIR) with the binary under test. Tools that would
/// change this system (systemctl, useradd, sysctl, systemd-sysusers) are replaced by stubs that
/// record being called, so a test can check none was.
fn install(root: &Path, args: &[&str]) -> Output {
    let work = root.parent().unwrap();
    let stubs = work.join("stubs");
    std::fs::create_dir_all(&stubs).unwrap();
    for tool in ["systemctl", "useradd", "sysctl", "systemd-sysusers"] {
        let stub = stubs.join(tool);
        let record = work.join("system-calls.log");
        std::fs::write(&stub, format!("#!/bin/sh\necho {tool} \"$@\" >> '{}'\nexit 1\n", record.display())).unwrap();
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let tmp = work.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let path = format!("{}:{}", stubs.display(), std::env::var("PATH").unwrap_or_default());
    let output = Command::new("bash")
        .arg(appliance().join("install.sh"))
        .args(args)
        .env("DESTDIR", root)
        .env("TESSERA_BIN", env!("CARGO_BIN_EXE_tessera"))
        .env("TMPDIR", &tmp)
        .env("PATH", path)
        .env_remove("PREFIX")
        .output()
        .unwrap();
    assert!(output.status.success(), "install.sh {args:?}: {}", text(&output));
    assert!(!work.join("system-calls.log").exists(), "install.sh changed this system under DESTDIR");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "install.sh left its temporary files");
    output
}

/// Every file and directory under `root`: its mode, mtime and SHA-256 (files) or target (links).
fn listing(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut entries = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let what = if meta.is_dir() {
                pending.push(path.clone());
                String::from("dir")
            } else if meta.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&path).unwrap().display())
            } else {
                format!("{:x?}", tessera::hash::sha256(&std::fs::read(&path).unwrap()))
            };
            let stamp = format!("{:o} {}.{} {what}", meta.mode(), meta.mtime(), meta.mtime_nsec());
            entries.insert(path.strip_prefix(root).unwrap().to_path_buf(), stamp);
        }
    }
    entries
}

/// The regular files under `root`, relative to it.
fn files(root: &Path) -> Vec<String> {
    let listing = listing(root);
    let mut files: Vec<String> = listing
        .iter()
        .filter(|(_, stamp)| !stamp.ends_with(" dir"))
        .map(|(path, _)| path.display().to_string())
        .collect();
    files.sort();
    files
}

const INSTALLED: [&str; 9] = [
    "etc/tessera/tessera.toml",
    "usr/local/bin/tessera",
    "usr/local/lib/sysctl.d/60-tessera.conf",
    "usr/local/lib/systemd/system/tessera.service",
    "usr/local/lib/sysusers.d/tessera.conf",
    "usr/local/share/bash-completion/completions/tessera",
    "usr/local/share/fish/vendor_completions.d/tessera.fish",
    "usr/local/share/man/man1/tessera.1",
    "usr/local/share/zsh/site-functions/_tessera",
];

#[test]
fn install_lays_out_every_file_and_a_second_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    install(&root, &[]);
    assert_eq!(files(&root), INSTALLED);

    let binary = root.join("usr/local/bin/tessera");
    assert_eq!(std::fs::read(&binary).unwrap(), std::fs::read(env!("CARGO_BIN_EXE_tessera")).unwrap());
    assert_eq!(std::fs::metadata(&binary).unwrap().mode() & 0o777, 0o755);
    let version = Command::new(&binary).arg("--version").output().unwrap();
    assert!(version.status.success(), "{}", text(&version));
    let unit = std::fs::read_to_string(root.join("usr/local/lib/systemd/system/tessera.service")).unwrap();
    assert!(unit.contains("\nExecStart=/usr/local/bin/tessera serve --config /etc/tessera/tessera.toml\n"), "{unit}");
    let man = std::fs::read_to_string(root.join("usr/local/share/man/man1/tessera.1")).unwrap();
    assert!(man.contains("\n.TH tessera 1"), "a roff page: {man}");
    let bash = std::fs::read_to_string(root.join("usr/local/share/bash-completion/completions/tessera")).unwrap();
    assert!(bash.contains("complete -F") && bash.contains("serve"), "{bash}");
    // The installed config is valid and keeps the data where the unit's StateDirectory is.
    let check =
        harness::tessera().arg("config").arg("--check").arg(root.join("etc/tessera/tessera.toml")).output().unwrap();
    assert!(check.status.success(), "{}", text(&check));
    assert!(text(&check).contains("data_dir = \"/var/lib/tessera\""), "{}", text(&check));

    let before = listing(&root);
    let again = install(&root, &[]);
    assert_eq!(listing(&root), before, "a second run changed files");
    assert!(again.stdout.is_empty(), "a second run installed: {}", text(&again));

    install(&root, &["--uninstall"]);
    assert!(files(&root).is_empty(), "left after --uninstall: {:?}", files(&root));
    assert!(!root.join("etc/tessera").exists(), "an emptied /etc/tessera is removed");
}

#[test]
fn an_edited_config_is_never_overwritten_nor_uninstalled() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    install(&root, &[]);
    let config = root.join("etc/tessera/tessera.toml");
    let shipped = std::fs::read_to_string(&config).unwrap();
    let edited = shipped.replace("workers = 0", "workers = 2");
    assert_ne!(edited, shipped, "the shipped config names [serve] workers");
    std::fs::write(&config, &edited).unwrap();

    let output = install(&root, &[]);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
    assert_eq!(std::fs::read_to_string(root.join("etc/tessera/tessera.toml.new")).unwrap(), shipped);
    assert!(text(&output).contains("kept the edited /etc/tessera/tessera.toml"), "{}", text(&output));
    let before = listing(&root);
    install(&root, &[]);
    assert_eq!(listing(&root), before, "a run over an edited config changed files");

    let output = install(&root, &["--uninstall"]);
    assert_eq!(files(&root), ["etc/tessera/tessera.toml"]);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
    assert!(text(&output).contains("kept the edited"), "{}", text(&output));
}

// ---- the systemd unit ----

#[test]
fn the_installed_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    install(&root, &[]);
    // verify --root resolves the unit's dependencies (sysinit.target, network-online.target...)
    // under the root: give it this system's units.
    let units = root.join("usr/lib/systemd");
    std::fs::create_dir_all(&units).unwrap();
    let copy = Command::new("cp").arg("-a").arg("/usr/lib/systemd/system").arg(&units).status().unwrap();
    assert!(copy.success(), "cannot copy /usr/lib/systemd/system (Debian's systemd installs it)");
    // ExecReload runs /bin/kill, which every system has and verify looks for under the root.
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/kill", root.join("bin/kill")).expect("this system's /bin/kill");
    // Documentation=man:tessera(1) is checked with `man`: the installed page must be found.
    let man_path = root.join("usr/local/share/man");
    let root_arg = format!("--root={}", root.display());
    let output = systemd_analyze(&["verify", &root_arg, "tessera.service"], &[("MANPATH", &man_path)]);
    assert!(output.status.success(), "systemd-analyze verify: {}", text(&output));
    let about_ours: Vec<&str> =
        std::str::from_utf8(&output.stderr).unwrap().lines().filter(|line| line.contains("tessera.service")).collect();
    assert!(about_ours.is_empty(), "warnings about the unit: {about_ours:?}");
}

/// The syscalls of `filter` (names and `@groups`, expanded with `systemd-analyze`).
fn expand_syscall_filter(filter: &str) -> Vec<String> {
    let mut allowed = Vec::new();
    let mut pending: Vec<String> = filter.split_whitespace().map(str::to_string).collect();
    let mut seen = std::collections::HashSet::new();
    while let Some(item) = pending.pop() {
        if !seen.insert(item.clone()) {
            continue;
        }
        if !item.starts_with('@') {
            allowed.push(item);
            continue;
        }
        let output = systemd_analyze(&["syscall-filter", &item], &[]);
        assert!(output.status.success(), "{item}: {}", text(&output));
        let listed = String::from_utf8(output.stdout).unwrap();
        let members = listed.lines().skip(1).map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#'));
        pending.extend(members.map(str::to_string));
    }
    allowed
}

#[test]
fn the_units_syscall_filter_allows_io_uring_and_what_serve_calls() {
    let unit = std::fs::read_to_string(appliance().join("tessera.service")).unwrap();
    let filter = unit.lines().find_map(|line| line.strip_prefix("SystemCallFilter=")).expect("a SystemCallFilter");
    let allowed = expand_syscall_filter(filter);
    let needed = [
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "epoll_wait",
        "eventfd2",
        "accept4",
        "sendmsg",
        "writev",
        "mmap",
        "madvise",
        "pwrite64",
        "fdatasync",
        "flock",
        "sched_setaffinity",
    ];
    let missing: Vec<&str> = needed.into_iter().filter(|call| !allowed.iter().any(|a| a == call)).collect();
    assert!(missing.is_empty(), "SystemCallFilter={filter} refuses {missing:?}");
    // A refused call must fail with EPERM (io_uring → the epoll fallback), not kill the process.
    assert!(unit.contains("\nSystemCallErrorNumber=EPERM\n"));
}

// ---- sysctl.d ----

#[test]
fn every_sysctl_setting_exists_in_the_kernel_and_says_why() {
    let conf = std::fs::read_to_string(appliance().join("sysctl.d/60-tessera.conf")).unwrap();
    let mut commented = false;
    let mut keys = Vec::new();
    for line in conf.lines() {
        let line = line.trim();
        if line.is_empty() {
            commented = false;
        } else if line.starts_with('#') {
            commented = true;
        } else {
            let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not KEY = VALUE: {line}"));
            let key = key.trim();
            assert!(commented, "{key} has no comment saying why");
            assert!(Path::new("/proc/sys").join(key.replace('.', "/")).exists(), "no such kernel setting: {key}");
            assert!(value.split_whitespace().all(|v| v.parse::<u64>().is_ok()), "{key}: not a number: {value}");
            keys.push(key.to_string());
        }
    }
    for key in ["net.core.somaxconn", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem", "fs.file-max"] {
        assert!(keys.iter().any(|k| k == key), "{key} is not set");
    }
}

// ---- the container ----

#[test]
fn the_seccomp_profile_allows_io_uring_and_only_known_syscalls() {
    let text = std::fs::read_to_string(appliance().join("seccomp-io_uring.json")).unwrap();
    let profile: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    // An allow-list: anything else fails with EPERM.
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(profile["defaultErrnoRet"], 1);
    let rules = profile["syscalls"].as_array().expect("a syscalls list");
    let names_of = |action: &str| -> Vec<String> {
        let rules = rules.iter().filter(|rule| rule["action"] == action);
        rules
            .flat_map(|rule| rule["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()))
            .collect()
    };
    let allowed = names_of("SCMP_ACT_ALLOW");
    for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(allowed.iter().any(|name| name == call), "{call} is not allowed");
    }
    // Every name is a system call systemd knows (a misspelt one would make the runtime refuse it).
    let known = systemd_analyze(&["syscall-filter"], &[]);
    let known = String::from_utf8(known.stdout).unwrap();
    let known: std::collections::HashSet<&str> = known.lines().map(str::trim).collect();
    let mut all = allowed.clone();
    all.extend(names_of("SCMP_ACT_ERRNO"));
    let unknown: Vec<&String> = all.iter().filter(|name| !known.contains(name.as_str())).collect();
    assert!(unknown.is_empty(), "not system calls: {unknown:?}");
}

#[test]
fn the_container_runs_serve_as_a_user_with_its_data_in_a_volume() {
    let file = std::fs::read_to_string(appliance().join("Containerfile")).unwrap();
    let lines: Vec<&str> = file.lines().filter(|line| !line.starts_with('#')).collect();
    let stages = lines.iter().filter(|line| line.starts_with("FROM ")).count();
    assert!(stages >= 2, "a multi-stage build");
    let last_stage = &lines[lines.iter().rposition(|line| line.starts_with("FROM ")).unwrap()..];
    let directive = |name: &str| last_stage.iter().rev().find_map(|line| line.strip_prefix(name)).map(str::trim);
    let user = directive("USER ").expect("a USER in the run stage");
    assert!(user != "root" && user != "0", "runs as {user}");
    let volume = directive("VOLUME ").expect("a VOLUME for the data");
    let command: Vec<String> = serde_json::from_str(directive("CMD ").expect("a CMD")).unwrap();
    let data_dir = command.iter().position(|arg| arg == "--data-dir").map(|at| &command[at + 1]);
    assert_eq!(data_dir.map(String::as_str), Some(volume), "the data dir is the volume");
    // Every flag the image passes is one `serve` knows.
    let help = harness::tessera().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for flag in command.iter().filter(|arg| arg.starts_with("--")) {
        assert!(help.contains(&format!("{flag} ")), "serve has no {flag}");
    }
}
