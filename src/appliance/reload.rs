//! `serve`'s reload (SIGHUP). The loaded config is compared with the one in force
//! ([`plan_reload`], sans-I/O); what a running appliance can change is applied — the data plane's
//! limits, timeouts and access log (reopened: log rotation), taken by each worker at its next
//! tick; the announcer, restarted with the new `[announce]`; the log level — and every other
//! changed setting is named in the log as needing a restart, keeping its running value. No
//! connection is dropped.

use crate::appliance::{start_announcer, Appliance};
use crate::config::{plan_reload, Config, ReloadPlan};
use crate::logging::{self, LevelError};

impl Appliance {
    /// Applies `loaded` (validated by the caller) as far as a running appliance can.
    pub fn reload(&mut self, loaded: &Config) -> ReloadPlan {
        let plan = plan_reload(&self.config, loaded);
        for change in &plan.needs_restart {
            tracing::warn!(setting = %change.key, running = %change.old, file = %change.new, "needs restart: the running value stays until serve restarts");
        }
        if let Err(error) = self.server().reload(&plan.config) {
            tracing::error!(%error, "the previous access log stays");
        }
        if plan.changes("log.level") {
            match logging::set_level(&plan.config.log.level) {
                Ok(()) => {}
                Err(LevelError::EnvironmentWins) => tracing::info!("log.level: RUST_LOG is set and wins"),
                Err(error) => tracing::error!(%error, "log.level not changed"),
            }
        }
        if let (true, Some(fill), Some(upstream)) = (plan.changes("upstream"), &self.fill, &plan.config.upstream) {
            fill.reload(upstream.clone());
        }
        if plan.changes("announce") {
            self.restart_announcer(&plan.config);
        }
        for change in &plan.applied {
            tracing::info!(setting = %change.key, old = %change.old, new = %change.new, "reloaded");
        }
        tracing::info!(applied = plan.applied.len(), needs_restart = plan.needs_restart.len(), "config reloaded");
        self.config = plan.config.clone();
        plan
    }

    /// Stops the announcer and starts one with `config`'s `[announce]` (or none, if it is off).
    fn restart_announcer(&mut self, config: &Config) {
        // Stopped first: the old and the new one share the trigger, whose stop flag the old sets.
        drop(self.announcer.take());
        match start_announcer(config, self.server(), self.service(), self.trigger.clone()) {
            Ok(announcer) => self.announcer = announcer,
            Err(error) => {
                tracing::error!(%error, "announcer not restarted: nothing is announced until the next reload")
            }
        }
    }
}
