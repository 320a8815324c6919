//! The node's processes: detached (own session, so they outlive `node up`), each with a pid
//! file (pid and argv[0], so a reused pid is never signalled) and a log in `state/logs/`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::controlplane::{read_pid_file, write_pid_file};
use crate::process::{is_running, spawn_detached, stop_pid, tail};

/// How long a component gets to exit on SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

pub(crate) struct Processes {
    dir: PathBuf,
    /// Started by this process: (name, child), polled to notice an early exit.
    children: Vec<(String, Child)>,
}

impl Processes {
    /// For starting processes: creates the pid and log directories.
    pub(crate) fn new(state_dir: &Path) -> Result<Processes> {
        let procs = Processes::existing(state_dir);
        for dir in [procs.pid_dir(), procs.log_dir()] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(procs)
    }

    /// For stopping what an earlier `up` started.
    pub(crate) fn existing(state_dir: &Path) -> Processes {
        Processes {
            dir: state_dir.to_owned(),
            children: Vec::new(),
        }
    }

    fn pid_dir(&self) -> PathBuf {
        self.dir.join("pids")
    }

    pub(crate) fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    fn log(&self, name: &str) -> PathBuf {
        self.log_dir().join(format!("{name}.log"))
    }

    /// Starts `cmd` detached as `name`, stdout and stderr to its log.
    pub(crate) fn spawn(&mut self, name: &str, mut cmd: Command) -> Result<()> {
        let log_path = self.log(name);
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let program = PathBuf::from(cmd.get_program());
        let child = spawn_detached(&mut cmd)?;
        write_pid_file(
            &self.pid_dir().join(format!("{name}.pid")),
            child.id(),
            &program,
        )?;
        self.children.push((name.to_owned(), child));
        Ok(())
    }

    /// Fails, with the tail of its log, if a process this value started has exited.
    pub(crate) fn check_alive(&self) -> Result<()> {
        for (name, _) in &self.children {
            if let Some((pid, program)) = read_pid_file(&self.pid_dir().join(format!("{name}.pid")))
                && !is_running(pid, &program)
            {
                bail!(
                    "{name} exited; last lines of {}:\n{}",
                    self.log(name).display(),
                    tail(&self.log(name), 30)
                );
            }
        }
        Ok(())
    }

    /// Stops the named processes in order (SIGTERM, then SIGKILL after a grace period).
    /// Returns whether any was running.
    pub(crate) fn stop(&self, names: &[&str]) -> Result<bool> {
        let mut any = false;
        for name in names {
            let pid_file = self.pid_dir().join(format!("{name}.pid"));
            if let Some((pid, program)) = read_pid_file(&pid_file) {
                any |= is_running(pid, &program);
                stop_pid(pid, &program, GRACE).with_context(|| format!("stopping {name}"))?;
                let _ = std::fs::remove_file(&pid_file);
            }
        }
        Ok(any)
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        // Reap the ones that exited so they do not linger as zombies of a long-lived caller
        // (a test binary); the running ones stay detached.
        for (_, child) in &mut self.children {
            let _ = child.try_wait();
        }
    }
}
