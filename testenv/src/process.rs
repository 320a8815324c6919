//! Child processes that cannot outlive their parent, detached daemons, and small helpers.

use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

type SpawnReply = Sender<io::Result<Child>>;
type SpawnRequest = (Command, SpawnReply);

/// A child process that is SIGKILLed when this handle drops or when the process that spawned
/// it dies (even by SIGKILL or a panic that aborts), so a failed test never leaks servers.
#[derive(Debug)]
pub struct TiedChild {
    child: Child,
    name: String,
    reaped: bool,
}

/// Spawns `cmd` as a [`TiedChild`].
///
/// The child gets `PR_SET_PDEATHSIG = SIGKILL` and its own process group. The kernel sends
/// the death signal when the *thread* that forked the child exits, and test threads exit after
/// each test, so every tied child is forked by one dedicated thread that lives as long as the
/// process. The own process group keeps a terminal's Ctrl-C away from the children: the
/// parent decides when they stop.
pub fn spawn_tied(cmd: Command) -> Result<TiedChild> {
    let name = program_name(&cmd);
    let (reply, result) = mpsc::channel();
    spawner()?
        .send((cmd, reply))
        .map_err(|_| anyhow!("the testenv spawner thread is gone"))?;
    let child = result
        .recv()
        .map_err(|_| anyhow!("the testenv spawner thread is gone"))?
        .with_context(|| format!("starting {name}"))?;
    Ok(TiedChild {
        child,
        name,
        reaped: false,
    })
}

impl TiedChild {
    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The program's file name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The underlying [`Child`], e.g. to take its piped stdout.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// `Some(status)` once the child has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let status = self
            .child
            .try_wait()
            .with_context(|| format!("checking on {}", self.name))?;
        self.reaped |= status.is_some();
        Ok(status)
    }

    /// Sends SIGTERM, waits up to `grace` for the child to exit, then SIGKILLs it.
    pub fn terminate(&mut self, grace: Duration) -> Result<Option<ExitStatus>> {
        if self.reaped {
            return self.try_wait();
        }
        signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Ok(None)
    }

    /// SIGKILLs the child and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if self.reaped {
            return;
        }
        // Errors mean it already exited; wait() then just reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }
}

impl Drop for TiedChild {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawner() -> Result<&'static Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Result<Sender<SpawnRequest>, String>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (requests, inbox) = mpsc::channel::<SpawnRequest>();
            std::thread::Builder::new()
                .name("testenv-spawner".into())
                // The static keeps a Sender forever, so this loop, and the thread, never end.
                .spawn(move || {
                    for (mut cmd, reply) in inbox {
                        let _ = reply.send(spawn_with_pdeathsig(&mut cmd));
                    }
                })
                .map(|_| requests)
                .map_err(|e| format!("starting the testenv spawner thread: {e}"))
        })
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn spawn_with_pdeathsig(cmd: &mut Command) -> io::Result<Child> {
    // Captured before fork: if we die between fork and prctl the signal would never come, and
    // the child then sees a different parent pid and gives up instead.
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe syscalls
    // and builds errors from raw codes, which does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Spawns `cmd` in a new session so it survives the caller's exit and its terminal's signals.
pub(crate) fn spawn_detached(cmd: &mut Command) -> Result<Child> {
    // SAFETY: setsid is async-signal-safe; see spawn_with_pdeathsig.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let name = program_name(cmd);
    cmd.spawn().with_context(|| format!("starting {name}"))
}

fn program_name(cmd: &Command) -> String {
    Path::new(cmd.get_program())
        .file_name()
        .unwrap_or(cmd.get_program())
        .to_string_lossy()
        .into_owned()
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill has no memory-safety preconditions; errors (ESRCH) are fine to ignore.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// True while `pid` is a live (not zombie) process whose argv[0] is `program`.
///
/// Checking argv[0] guards against a pid file that outlived its process and whose pid now
/// belongs to something else. A zombie has an empty cmdline, so it counts as gone.
pub(crate) fn is_running(pid: u32, program: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    argv0 == program.as_os_str().as_encoded_bytes()
}

/// Stops a process that is not our child: SIGTERM, up to `grace` to exit, then SIGKILL.
pub(crate) fn stop_pid(pid: u32, program: &Path, grace: Duration) -> Result<()> {
    if !is_running(pid, program) {
        return Ok(());
    }
    signal(pid, libc::SIGTERM);
    if wait_gone(pid, program, grace) {
        return Ok(());
    }
    signal(pid, libc::SIGKILL);
    if wait_gone(pid, program, Duration::from_secs(10)) {
        return Ok(());
    }
    bail!("{} (pid {pid}) survived SIGKILL", program.display())
}

fn wait_gone(pid: u32, program: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !is_running(pid, program) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `lines` lines of a log file, or a note saying why there are none.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => tail_text(&String::from_utf8_lossy(&bytes), lines),
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

pub(crate) fn tail_text(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `cmd` to completion and returns its stdout; on failure the error says `what` failed
/// and carries the exit status and the tail of stderr (and of stdout, which some tools use
/// for errors).
pub(crate) fn run_capture(cmd: &mut Command, what: &str) -> Result<String> {
    run_with_input(cmd, what, None)
}

/// Like [`run_capture`], feeding `input` to the command's stdin.
pub(crate) fn run_with_input(cmd: &mut Command, what: &str, input: Option<&str>) -> Result<String> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A writer thread, so a command that writes a lot before reading all of its input
        // cannot deadlock against us.
        let input = input.to_owned();
        std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for {what}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout_note = if stdout.trim().is_empty() {
        String::new()
    } else {
        format!("\nstdout:\n{}", tail_text(stdout.trim_end(), 20))
    };
    bail!(
        "{what} failed ({}):\n{}{stdout_note}",
        output.status,
        tail_text(stderr.trim_end(), 40)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_text_keeps_the_last_lines() {
        assert_eq!(tail_text("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_text("a", 5), "a");
        assert_eq!(tail_text("", 5), "");
    }

    #[test]
    fn tied_child_is_killed_on_drop_and_in_its_own_group() {
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let child = spawn_tied(cmd).unwrap();
        let pid = child.id();
        let sleep = Path::new("sleep");
        assert!(is_running(pid, sleep));
        // SAFETY: getpgid has no preconditions.
        let group = unsafe { libc::getpgid(libc::pid_t::try_from(pid).unwrap()) };
        assert_eq!(u32::try_from(group).unwrap(), pid);
        drop(child);
        assert!(!is_running(pid, sleep));
    }

    /// Re-runs this test binary as a helper that ties a `sleep` to itself and waits; the
    /// helper is then SIGKILLed, which must take the sleep with it (PR_SET_PDEATHSIG).
    #[test]
    fn tied_child_dies_with_its_parent_process() {
        if std::env::var_os("TESTENV_TIED_HELPER").is_some() {
            let mut cmd = Command::new("sleep");
            cmd.arg("600");
            let child = spawn_tied(cmd).unwrap();
            println!("pid={}", child.id());
            std::thread::sleep(Duration::from_secs(600));
            return;
        }
        let mut helper = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "process::tests::tied_child_dies_with_its_parent_process",
                "--nocapture",
            ])
            .env("TESTENV_TIED_HELPER", "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines =
            std::io::BufRead::lines(std::io::BufReader::new(helper.stdout.take().unwrap()));
        let pid: u32 = lines
            .find_map(|line| {
                line.unwrap()
                    .strip_prefix("pid=")
                    .map(|p| p.parse().unwrap())
            })
            .unwrap();
        let sleep = Path::new("sleep");
        assert!(is_running(pid, sleep));
        helper.kill().unwrap();
        helper.wait().unwrap();
        assert!(wait_gone(pid, sleep, Duration::from_secs(10)));
    }

    #[test]
    fn run_capture_reports_stderr() {
        let mut failing = Command::new("sh");
        failing.args(["-c", "echo out; echo boom >&2; exit 3"]);
        let err = run_capture(&mut failing, "the script")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("the script failed"), "{err}");
        assert!(
            err.contains("boom") && err.contains("out") && err.contains('3'),
            "{err}"
        );
        let out = run_capture(Command::new("sh").args(["-c", "echo fine"]), "echo").unwrap();
        assert_eq!(out, "fine\n");
        let echoed = run_with_input(&mut Command::new("cat"), "cat", Some("in\n")).unwrap();
        assert_eq!(echoed, "in\n");
    }
}
