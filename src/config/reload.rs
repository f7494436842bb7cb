//! What a reload (SIGHUP) changes, decided without I/O: the config in force and the one just
//! loaded in, the settings applied and those that need a restart out. A setting is applied only
//! if it is on [`LIVE`]; every other one (listen address, workers, data dir, backend, ring and
//! buffer sizes, the store, the service…) keeps its running value and is named as needing a
//! restart, so the config in force always says what actually runs.

use std::fmt;

use serde_json::{Map, Value};

use crate::config::Config;

/// Settings a running `serve` takes on at a reload: a dotted key, or a section whose every key
/// is live. `serve.connections_per_worker_max` is live only downwards (the connection tables and
/// io_uring's completion queue are sized for it at start).
const LIVE: &[&str] = &[
    "serve.connections_per_worker_max",
    "serve.header_bytes_max",
    "serve.header_count_max",
    "serve.target_bytes_max",
    "serve.header_timeout_ms",
    "serve.idle_timeout_ms",
    "serve.send_timeout_ms",
    "serve.pending_timeout_ms",
    "serve.pipeline_depth_max",
    "serve.input_bytes_max",
    "serve.stream_queued_parts_max",
    "serve.stream_queued_bytes_max",
    "serve.send_bytes_per_turn_max",
    "serve.send_file_bytes_per_turn_max",
    "serve.shutdown_grace_ms",
    "serve.ranges_per_request_max",
    "announce",
    // The fill thread takes these; its other settings size what it holds or were handed to
    // helper threads at start.
    "upstream.metadata_expiry_ms",
    "upstream.retries_per_piece_max",
    "upstream.fill_whole",
    "upstream.piece_memory_bytes_max",
    "upstream.origin",
    "log.level",
    "log.access_log",
    "log.access_log_buffer_bytes",
];

/// One changed setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Dotted key, e.g. `serve.idle_timeout_ms`.
    pub key: String,
    /// The running value (`unset` when absent).
    pub old: String,
    /// The loaded value (`unset` when absent).
    pub new: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} -> {}", self.key, self.old, self.new)
    }
}

/// What a reload does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadPlan {
    /// The config to put in force: the loaded one, with every needs-restart setting kept at its
    /// running value.
    pub config: Config,
    /// Settings that take effect now.
    pub applied: Vec<Change>,
    /// Settings that differ but take effect only after a restart.
    pub needs_restart: Vec<Change>,
}

impl ReloadPlan {
    /// Whether a section (`"announce"`) or key (`"log.level"`) has an applied change.
    pub fn changes(&self, key: &str) -> bool {
        self.applied.iter().any(|change| covers(key, &change.key))
    }
}

/// Compares `running` with `loaded` (both already validated).
pub fn plan_reload(running: &Config, loaded: &Config) -> ReloadPlan {
    let old = serde_json::to_value(running).expect("config serializes");
    let mut new = serde_json::to_value(loaded).expect("config serializes");
    let mut changes = Vec::new();
    diff("", &old, &new, &mut changes);
    let (mut applied, mut needs_restart) = (Vec::new(), Vec::new());
    for (path, old_value, new_value) in changes {
        let change = Change { key: path.join("."), old: show(old_value.as_ref()), new: show(new_value.as_ref()) };
        if is_live(&change.key, old_value.as_ref(), new_value.as_ref()) {
            applied.push(change);
        } else {
            set(&mut new, &path, old_value);
            needs_restart.push(change);
        }
    }
    let config = serde_json::from_value(new).expect("a config with running values put back deserializes");
    ReloadPlan { config, applied, needs_restart }
}

/// A changed leaf: its path, old value and new value (`None`: absent on that side).
type Leaf = (Vec<String>, Option<Value>, Option<Value>);

/// Collects the leaves that differ; a key present on one side only is one change.
fn diff(prefix: &str, old: &Value, new: &Value, out: &mut Vec<Leaf>) {
    let (Value::Object(old_map), Value::Object(new_map)) = (old, new) else {
        if old != new {
            out.push((split(prefix), Some(old.clone()), Some(new.clone())));
        }
        return;
    };
    let mut keys: Vec<&String> = old_map.keys().chain(new_map.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match (old_map.get(key), new_map.get(key)) {
            (Some(a), Some(b)) => diff(&path, a, b, out),
            (a, b) => out.push((split(&path), a.cloned(), b.cloned())),
        }
    }
}

fn split(path: &str) -> Vec<String> {
    path.split('.').map(str::to_string).collect()
}

fn covers(entry: &str, key: &str) -> bool {
    key == entry || key.strip_prefix(entry).is_some_and(|rest| rest.starts_with('.'))
}

fn is_live(key: &str, old: Option<&Value>, new: Option<&Value>) -> bool {
    if !LIVE.iter().any(|entry| covers(entry, key)) {
        return false;
    }
    if key == "serve.connections_per_worker_max" {
        return matches!((old.and_then(Value::as_u64), new.and_then(Value::as_u64)), (Some(a), Some(b)) if b <= a);
    }
    true
}

/// Puts `value` (or nothing) at `path` in `root`.
fn set(root: &mut Value, path: &[String], value: Option<Value>) {
    let (last, parents) = path.split_last().expect("a change has a key");
    let mut node = root;
    for key in parents {
        let Value::Object(map) = node else { unreachable!("a change's parents are tables") };
        node = map.entry(key.clone()).or_insert_with(|| Value::Object(Map::new()));
    }
    let Value::Object(map) = node else { unreachable!("a change's parent is a table") };
    match value {
        Some(value) => map.insert(last.clone(), value),
        None => map.remove(last),
    };
}

fn show(value: Option<&Value>) -> String {
    value.map_or_else(|| "unset".to_string(), Value::to_string)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("test.toml")).unwrap()
    }

    fn keys(changes: &[Change]) -> Vec<&str> {
        changes.iter().map(|change| change.key.as_str()).collect()
    }

    #[test]
    fn same_config_changes_nothing() {
        let plan = plan_reload(&Config::default(), &Config::default());
        assert!(plan.applied.is_empty() && plan.needs_restart.is_empty(), "{plan:?}");
        assert_eq!(plan.config, Config::default());
    }

    #[test]
    fn limits_timeouts_announce_and_level_apply() {
        let loaded = parse(
            "[serve]\ntarget_bytes_max = 100\nidle_timeout_ms = 5000\n[announce]\ninterval_ms = 1000\n\
             [log]\nlevel = \"debug\"\naccess_log = \"/tmp/a.log\"\n",
        );
        let plan = plan_reload(&Config::default(), &loaded);
        assert_eq!(
            keys(&plan.applied),
            ["announce.interval_ms", "log.access_log", "log.level", "serve.idle_timeout_ms", "serve.target_bytes_max"]
        );
        assert!(plan.needs_restart.is_empty(), "{:?}", plan.needs_restart);
        assert_eq!(plan.config, loaded);
        assert!(plan.changes("announce") && plan.changes("log.level") && !plan.changes("log.format"));
        let shown = plan.applied.iter().find(|c| c.key == "serve.target_bytes_max").unwrap().to_string();
        assert_eq!(shown, "serve.target_bytes_max: 2048 -> 100");
    }

    #[test]
    fn restart_settings_are_named_and_keep_their_running_value() {
        let loaded = parse(
            "data_dir = \"/elsewhere\"\n[serve]\nlisten = \"0.0.0.0:80\"\nworkers = 3\nbackend = \"epoll\"\n\
             header_count_max = 10\n[log]\nformat = \"json\"\n",
        );
        let running = Config::default();
        let plan = plan_reload(&running, &loaded);
        assert_eq!(keys(&plan.applied), ["serve.header_count_max"]);
        assert_eq!(
            keys(&plan.needs_restart),
            ["data_dir", "log.format", "serve.backend", "serve.listen", "serve.workers"]
        );
        let listen = &plan.needs_restart[3];
        assert_eq!((listen.old.as_str(), listen.new.as_str()), ("\"127.0.0.1:7680\"", "\"0.0.0.0:80\""));
        let expected = Config {
            serve: crate::config::ServeConfig { header_count_max: 10, ..running.serve.clone() },
            ..running.clone()
        };
        assert_eq!(plan.config, expected, "only the applied setting changes what is in force");
        // Asked again, the restart settings are still named: they are still not in force.
        assert_eq!(keys(&plan_reload(&plan.config, &loaded).needs_restart), keys(&plan.needs_restart));
    }

    #[test]
    fn connection_limit_applies_downwards_only() {
        let running = parse("[serve]\nconnections_per_worker_max = 100\n");
        let lower = plan_reload(&running, &parse("[serve]\nconnections_per_worker_max = 10\n"));
        assert_eq!(
            (keys(&lower.applied), lower.config.serve.connections_per_worker_max),
            (vec!["serve.connections_per_worker_max"], 10)
        );
        let higher = plan_reload(&running, &parse("[serve]\nconnections_per_worker_max = 1000\n"));
        assert_eq!(keys(&higher.needs_restart), ["serve.connections_per_worker_max"]);
        assert_eq!(higher.config.serve.connections_per_worker_max, 100);
    }

    #[test]
    fn upstream_budgets_and_timing_apply_and_its_bounds_and_sources_need_a_restart() {
        let running = parse("[upstream]\nservice_url = \"https://seed.example:7443\"\n");
        let loaded = parse(
            "[upstream]\nservice_url = \"https://other.example:7443\"\nmetadata_expiry_ms = 1000\n\
             origin = false\nfills_in_flight_max = 2\n",
        );
        let plan = plan_reload(&running, &loaded);
        assert_eq!(keys(&plan.applied), ["upstream.metadata_expiry_ms", "upstream.origin"]);
        assert_eq!(keys(&plan.needs_restart), ["upstream.fills_in_flight_max", "upstream.service_url"]);
        let upstream = plan.config.upstream.unwrap();
        assert_eq!((upstream.metadata_expiry_ms, upstream.origin, upstream.fills_in_flight_max), (1000, false, 64));
        assert_eq!(upstream.service_url, "https://seed.example:7443");
    }

    #[test]
    fn a_section_added_or_removed_is_one_change() {
        let with_upstream = parse("[upstream]\nservice_url = \"https://seed.example:7443\"\n");
        let plan = plan_reload(&Config::default(), &with_upstream);
        assert_eq!(keys(&plan.needs_restart), ["upstream"]);
        assert_eq!(plan.needs_restart[0].old, "unset");
        assert_eq!(plan.config.upstream, None);
        let removed = plan_reload(&with_upstream, &Config::default());
        assert_eq!((keys(&removed.needs_restart), removed.config.upstream.is_some()), (vec!["upstream"], true));
    }
}
