//! What the action verbs read on this side before connecting: a password (from a
//! terminal prompt without echo, or stdin's first line), ssh public keys, and a
//! program's input. Everything is read before the agent is contacted, so the
//! agent's single channel is never held while someone types.

use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::termios::{self, LocalFlags, SetArg};

use crate::CliError;

/// The longest password line read from a pipe.
const MAX_PASSWORD: u64 = 64 * 1024;

/// A local source: a file, or stdin for `-` (or when no file is given).
fn read_source(file: Option<&Path>) -> Result<Vec<u8>, CliError> {
    match file {
        None => read_stdin(),
        Some(p) if p == Path::new("-") => read_stdin(),
        Some(p) => std::fs::read(p).map_err(CliError::local("read local file", p)),
    }
}

fn read_stdin() -> Result<Vec<u8>, CliError> {
    let mut data = Vec::new();
    io::stdin()
        .lock()
        .read_to_end(&mut data)
        .map_err(CliError::local("read", Path::new("stdin")))?;
    Ok(data)
}

/// `exec --input FILE|-`: the bytes for the program's stdin.
pub fn exec_input(file: Option<&Path>) -> Result<Option<Vec<u8>>, CliError> {
    file.map(|f| read_source(Some(f))).transpose()
}

/// ssh public keys, one per line; blank lines and `#` comments are skipped. A
/// private key is refused before anything is sent.
pub fn ssh_keys(file: Option<&Path>) -> Result<Vec<String>, CliError> {
    let name = file.map_or_else(|| PathBuf::from("stdin"), Path::to_owned);
    let data = read_source(file)?;
    let text = String::from_utf8(data)
        .map_err(|_| CliError::Usage(format!("{}: not UTF-8 text", name.display())))?;
    parse_keys(&text, &name)
}

fn parse_keys(text: &str, name: &Path) -> Result<Vec<String>, CliError> {
    let mut keys = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.contains("PRIVATE KEY") {
            return Err(CliError::Usage(format!(
                "{}: this is a private key; give the public one (.pub)",
                name.display()
            )));
        }
        keys.push(line.to_owned());
    }
    Ok(keys)
}

/// The new password for `user`: prompted for twice on a terminal, without echo;
/// otherwise stdin's first line (without its line ending).
pub fn password(user: &str) -> Result<Vec<u8>, CliError> {
    let stdin = io::stdin();
    if !stdin.is_terminal() {
        let mut line = Vec::new();
        stdin
            .lock()
            .take(MAX_PASSWORD)
            .read_until(b'\n', &mut line)
            .map_err(CliError::local("read", Path::new("stdin")))?;
        if line.last() != Some(&b'\n') && line.len() as u64 == MAX_PASSWORD {
            return Err(CliError::Usage(format!(
                "the password line on stdin is longer than {MAX_PASSWORD} bytes"
            )));
        }
        strip_line_end(&mut line);
        return non_empty(line);
    }
    let [first, again] = prompt_hidden([
        &format!("New password for {user}: "),
        &format!("Retype new password for {user}: "),
    ])?;
    if first != again {
        return Err(CliError::Usage("the passwords do not match".into()));
    }
    non_empty(first)
}

fn strip_line_end(line: &mut Vec<u8>) {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
}

fn non_empty(pw: Vec<u8>) -> Result<Vec<u8>, CliError> {
    if pw.is_empty() {
        return Err(CliError::Usage("empty password".into()));
    }
    Ok(pw)
}

/// For each prompt, prints it on stderr and reads a line from the terminal on stdin
/// with echo off. The terminal's settings come back afterwards, and also when SIGINT, SIGTERM
/// or SIGHUP ends `qga` mid-prompt: those are blocked meanwhile and taken by a
/// thread that restores the terminal and exits (status 128 + the signal).
fn prompt_hidden<const N: usize>(prompts: [&str; N]) -> Result<[Vec<u8>; N], CliError> {
    let tty_err = |e: nix::Error| CliError::Local {
        action: "set up",
        what: PathBuf::from("the terminal"),
        source: io::Error::from(e),
    };
    let stdin = io::stdin();
    let saved = termios::tcgetattr(stdin.as_fd()).map_err(tty_err)?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);

    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().map_err(tty_err)?;
    let restore_on_signal = saved.clone();
    // Blocked signals are inherited: this thread is the only taker while the
    // prompt is up; it outlives the prompt harmlessly (restoring saved settings
    // again is a no-op).
    std::thread::spawn(move || {
        if let Ok(sig) = signals.wait() {
            let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, &restore_on_signal);
            let _ = writeln!(io::stderr());
            std::process::exit(128 + sig as i32);
        }
    });

    let result = termios::tcsetattr(stdin.as_fd(), SetArg::TCSAFLUSH, &quiet)
        .map_err(tty_err)
        .and_then(|()| {
            let mut lines = prompts.map(|_| Vec::new());
            for (prompt, line) in prompts.iter().zip(&mut lines) {
                let _ = write!(io::stderr(), "{prompt}");
                let _ = io::stderr().flush();
                stdin
                    .lock()
                    .read_until(b'\n', line)
                    .map_err(CliError::local("read", Path::new("the terminal")))?;
                if line.last() != Some(&b'\n') {
                    // End of input (Ctrl-D) before a whole line.
                    let _ = writeln!(io::stderr());
                    return Err(CliError::Usage("no password given".into()));
                }
                strip_line_end(line);
            }
            Ok(lines)
        });
    let restored = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &saved).map_err(tty_err);
    signals.thread_unblock().map_err(tty_err)?;
    let lines = result?;
    restored?;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_skip_blanks_and_comments_and_refuse_private_keys() {
        let text = "# mine\n\nssh-ed25519 AAAAC3 a@b\n  ssh-rsa AAAAB3 c@d  \r\n#x\n";
        let keys = parse_keys(text, Path::new("k")).unwrap();
        assert_eq!(keys, ["ssh-ed25519 AAAAC3 a@b", "ssh-rsa AAAAB3 c@d"]);
        let err = parse_keys(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n",
            Path::new("id_ed25519"),
        )
        .unwrap_err();
        assert!(err
            .to_string()
            .contains("id_ed25519: this is a private key"));
        assert!(parse_keys("\n# only comments\n", Path::new("k"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn line_ends_are_stripped_once() {
        for (raw, want) in [
            (&b"pw\n"[..], &b"pw"[..]),
            (b"pw\r\n", b"pw"),
            (b"pw", b"pw"),
            (b"p w \n", b"p w "),
            (b"pw\n\n", b"pw\n"),
        ] {
            let mut v = raw.to_vec();
            strip_line_end(&mut v);
            assert_eq!(v, want, "{raw:?}");
        }
    }
}
