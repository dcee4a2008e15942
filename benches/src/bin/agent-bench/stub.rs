//! The stub: this bench binary answering the requests of the bounded scenarios with
//! as little work as an answer can take, so the same client code measures what the
//! kernel and the client cost on their own. Its rate is the ceiling of the
//! scenario: `stub / qemu-ga` is the ratio an agent that cost nothing would reach.
//!
//! It answers `guest-ping`, `guest-sync-delimited`, `guest-file-open`, `-read` and
//! `-close`, `guest-exec` and `guest-exec-status`; anything else gets `{"return":{}}`.
//! File reads replay replies prepared when the file is opened (before the client's
//! clock starts): the whole file cut in pieces of the chunk given on the command
//! line, each encoded alone, as an agent encodes them. `guest-exec` waits for its
//! child before answering, so the first status poll finds it exited: the cycle is
//! the child's own run plus two round trips.
//!
//! It parses nothing but what the bench sends (compact requests, paths without
//! escapes); it is not an agent.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Replies to guest-file-read for one opened file, in the order they are asked for.
struct Replay {
    text: Vec<u8>,
    /// End of each reply in `text`.
    ends: Vec<usize>,
    next: usize,
}

impl Replay {
    fn prepare(data: &[u8], chunk: usize) -> Replay {
        let mut text = Vec::with_capacity(data.len() / 3 * 4 + data.len() / chunk.max(1) * 64 + 64);
        let mut ends = Vec::new();
        for piece in data.chunks(chunk.max(1)) {
            let _ = write!(
                text,
                "{{\"return\":{{\"count\":{},\"buf-b64\":\"",
                piece.len()
            );
            let at = text.len();
            text.resize(at + piece.len().div_ceil(3) * 4, 0);
            let n = STANDARD.encode_slice(piece, &mut text[at..]).unwrap_or(0);
            text.truncate(at + n);
            text.extend_from_slice(b"\",\"eof\":false}}\n");
            ends.push(text.len());
        }
        Replay {
            text,
            ends,
            next: 0,
        }
    }

    /// The next reply; after the last piece, end of file.
    fn next_reply(&mut self) -> &[u8] {
        const EOF: &[u8] = b"{\"return\":{\"count\":0,\"buf-b64\":\"\",\"eof\":true}}\n";
        let Some(&end) = self.ends.get(self.next) else {
            return EOF;
        };
        let start = if self.next == 0 {
            0
        } else {
            self.ends[self.next - 1]
        };
        self.next += 1;
        &self.text[start..end]
    }
}

/// The string value of `"key":"..."` in a request (no escapes expected).
fn string_member<'a>(line: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let pat = format!("\"{key}\":\"");
    let at = memchr::memmem::find(line, pat.as_bytes())? + pat.len();
    let len = memchr::memchr(b'"', &line[at..])?;
    Some(&line[at..at + len])
}

/// The digits of `"key":123` in a request.
fn number_member<'a>(line: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let pat = format!("\"{key}\":");
    let at = memchr::memmem::find(line, pat.as_bytes())? + pat.len();
    let len = line[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b'-')
        .count();
    (len > 0).then(|| &line[at..at + len])
}

/// One connection's state.
struct Session {
    chunk: usize,
    replay: Option<Replay>,
    /// Exit codes of the children guest-exec ran (and waited for), by pid.
    exited: HashMap<u32, i32>,
    out: Vec<u8>,
}

impl Session {
    /// The answer to one request line, appended to `self.out` (or written straight
    /// out for a file read, whose reply is prepared already).
    fn answer(&mut self, line: &[u8], s: &mut UnixStream) -> io::Result<()> {
        let name = string_member(line, "execute").unwrap_or(b"");
        match name {
            b"guest-file-read" => {
                self.flush(s)?;
                let reply = match self.replay.as_mut() {
                    Some(r) => r.next_reply(),
                    None => b"{\"error\":{\"class\":\"GenericError\",\"desc\":\"no open file\"}}\n",
                };
                s.write_all(reply)?;
            }
            b"guest-sync-delimited" => {
                let id = number_member(line, "id").unwrap_or(b"0");
                self.out.extend_from_slice(b"\xff{\"return\":");
                self.out.extend_from_slice(id);
                self.out.extend_from_slice(b"}\n");
            }
            b"guest-file-open" => {
                let path = string_member(line, "path").unwrap_or(b"");
                let path = Path::new(std::str::from_utf8(path).unwrap_or(""));
                match std::fs::read(path) {
                    Ok(data) => {
                        self.replay = Some(Replay::prepare(&data, self.chunk));
                        self.out.extend_from_slice(b"{\"return\":1000}\n");
                    }
                    Err(e) => {
                        let _ = writeln!(
                            self.out,
                            "{{\"error\":{{\"class\":\"GenericError\",\"desc\":\"{}\"}}}}",
                            e.kind()
                        );
                    }
                }
            }
            b"guest-file-close" => {
                self.replay = None;
                self.out.extend_from_slice(b"{\"return\":{}}\n");
            }
            b"guest-exec" => {
                let path = string_member(line, "path").unwrap_or(b"");
                let path = std::str::from_utf8(path).unwrap_or("");
                let mut child = Command::new(path)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?;
                let code = child.wait()?.code().unwrap_or(-1);
                self.exited.insert(child.id(), code);
                let _ = writeln!(self.out, "{{\"return\":{{\"pid\":{}}}}}", child.id());
            }
            b"guest-exec-status" => {
                let pid = number_member(line, "pid")
                    .and_then(|p| std::str::from_utf8(p).ok()?.parse().ok())
                    .unwrap_or(0);
                match self.exited.remove(&pid) {
                    Some(code) => {
                        let _ = writeln!(
                            self.out,
                            "{{\"return\":{{\"exited\":true,\"exitcode\":{code}}}}}"
                        );
                    }
                    None => self.out.extend_from_slice(
                        b"{\"error\":{\"class\":\"GenericError\",\"desc\":\"unknown pid\"}}\n",
                    ),
                }
            }
            _ => self.out.extend_from_slice(b"{\"return\":{}}\n"),
        }
        Ok(())
    }

    fn flush(&mut self, s: &mut UnixStream) -> io::Result<()> {
        if !self.out.is_empty() {
            s.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }
}

/// Serves one connection at a time on `path` until killed (the bench stops it by
/// pid). `chunk` is the count file reads will ask for.
pub fn serve(path: &Path, chunk: usize) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (mut s, _) = listener.accept()?;
        let mut session = Session {
            chunk,
            replay: None,
            exited: HashMap::new(),
            out: Vec::new(),
        };
        // Bytes of an unfinished request line at the start of `buf`.
        let mut held = 0;
        'conn: loop {
            if held == buf.len() {
                break; // a request longer than any the bench sends
            }
            let n = match s.read(&mut buf[held..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let filled = held + n;
            let mut start = 0;
            while let Some(nl) = memchr::memchr(b'\n', &buf[start..filled]) {
                if session.answer(&buf[start..start + nl], &mut s).is_err() {
                    break 'conn;
                }
                start += nl + 1;
            }
            if session.flush(&mut s).is_err() {
                break;
            }
            buf.copy_within(start..filled, 0);
            held = filled - start;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qga_benches::reply::FileRead;

    #[test]
    fn replayed_reads_decode_to_the_file_then_end_it() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut r = Replay::prepare(&data, 4096);
        let mut got = Vec::new();
        loop {
            let reply = r.next_reply();
            let line = reply.strip_suffix(b"\n").unwrap();
            let f = FileRead::parse(line).unwrap();
            if f.eof {
                assert_eq!(f.count, 0);
                break;
            }
            let piece = STANDARD.decode(f.b64).unwrap();
            assert_eq!(piece.len() as u64, f.count);
            got.extend_from_slice(&piece);
        }
        assert_eq!(got, data);
        assert_eq!(r.ends.len(), 3);
    }

    /// The server end to end over a real socket: requests split across writes and
    /// several in one write are all answered, in order.
    #[test]
    fn the_server_answers_what_the_scenarios_send() {
        use qga_benches::reply::{member_u64, return_value, strip_sentinel, ReplyReader};
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("stub.sock");
        let file = dir.path().join("data");
        let data: Vec<u8> = (0..9000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&file, &data).unwrap();
        let path = sock.clone();
        // Serves until the test process ends.
        std::thread::spawn(move || serve(&path, 4096));
        let stream = loop {
            match UnixStream::connect(&sock) {
                Ok(s) => break s,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        };
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut conn = ReplyReader::new(stream);
        // A sync split in two writes, then a ping and the open in one.
        conn.get_mut()
            .write_all(b"{\"execute\":\"guest-sync-delimited\",\"argu")
            .unwrap();
        conn.get_mut().flush().unwrap();
        conn.get_mut().write_all(b"ments\":{\"id\":77}}\n").unwrap();
        let (sentinel, body) = strip_sentinel(conn.next_reply().unwrap());
        assert!(sentinel);
        assert_eq!(return_value(body).unwrap(), b"77");
        let open = format!(
            "{{\"execute\":\"guest-ping\"}}\n{{\"execute\":\"guest-file-open\",\"arguments\":{{\"path\":\"{}\"}}}}\n",
            file.display()
        );
        conn.get_mut().write_all(open.as_bytes()).unwrap();
        assert_eq!(return_value(conn.next_reply().unwrap()).unwrap(), b"{}");
        assert_eq!(return_value(conn.next_reply().unwrap()).unwrap(), b"1000");
        let mut got = Vec::new();
        loop {
            conn.get_mut()
                .write_all(b"{\"execute\":\"guest-file-read\",\"arguments\":{\"handle\":1000,\"count\":4096}}\n")
                .unwrap();
            let f = FileRead::parse(conn.next_reply().unwrap()).unwrap();
            got.extend_from_slice(&STANDARD.decode(f.b64).unwrap());
            if f.eof {
                break;
            }
        }
        assert_eq!(got, data);
        conn.get_mut()
            .write_all(b"{\"execute\":\"guest-exec\",\"arguments\":{\"path\":\"/bin/true\"}}\n")
            .unwrap();
        let pid = member_u64(return_value(conn.next_reply().unwrap()).unwrap(), b"pid").unwrap();
        let status =
            format!("{{\"execute\":\"guest-exec-status\",\"arguments\":{{\"pid\":{pid}}}}}\n");
        conn.get_mut().write_all(status.as_bytes()).unwrap();
        let ret = return_value(conn.next_reply().unwrap()).unwrap();
        assert_eq!(member_u64(ret, b"exitcode"), Some(0));
    }

    #[test]
    fn members_are_found_in_compact_requests() {
        let sync = b"{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":4711}}";
        assert_eq!(
            string_member(sync, "execute"),
            Some(&b"guest-sync-delimited"[..])
        );
        assert_eq!(number_member(sync, "id"), Some(&b"4711"[..]));
        let open = b"{\"execute\":\"guest-file-open\",\"arguments\":{\"path\":\"/tmp/x y\",\"mode\":\"r\"}}";
        assert_eq!(string_member(open, "path"), Some(&b"/tmp/x y"[..]));
        assert_eq!(number_member(open, "id"), None);
    }
}
