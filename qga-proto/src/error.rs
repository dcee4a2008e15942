//! Error values that travel on the wire, and argument validation errors.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The `class` member of an error reply.
///
/// qemu-ga only ever emits [`GenericError`](ErrorClass::GenericError) and
/// [`CommandNotFound`](ErrorClass::CommandNotFound) (the latter also for disabled
/// commands, since QEMU 4.2). Any other class a peer sends parses as
/// [`Other`](ErrorClass::Other), so a client never fails on a class it does not know.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Everything that is not "command not found": parse, envelope, argument and
    /// command errors.
    GenericError,
    /// Unknown command, and commands disabled by `--block-rpcs`, `--allow-rpcs`
    /// or frozen mode.
    CommandNotFound,
    /// A class this crate does not know, kept verbatim.
    Other(String),
}

impl ErrorClass {
    /// The class name as it appears on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::Other(s) => s,
        }
    }
}

impl From<&str> for ErrorClass {
    fn from(s: &str) -> Self {
        match s {
            "GenericError" => ErrorClass::GenericError,
            "CommandNotFound" => ErrorClass::CommandNotFound,
            other => ErrorClass::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorClass {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorClass {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(ErrorClass::from(&*s))
    }
}

/// The error member of a reply: `{"class": ..., "desc": ...}`.
///
/// Unknown members (QEMU 1.0/1.1 sent `data`) are ignored when parsing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{class}: {desc}")]
pub struct QgaError {
    /// The error class.
    pub class: ErrorClass,
    /// Human-readable description, in the reference agent's words where it has them.
    pub desc: String,
}

impl QgaError {
    /// A `GenericError` with the given description.
    pub fn generic(desc: impl Into<String>) -> Self {
        QgaError {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }

    /// A `CommandNotFound` error with the given description.
    pub fn command_not_found(desc: impl Into<String>) -> Self {
        QgaError {
            class: ErrorClass::CommandNotFound,
            desc: desc.into(),
        }
    }

    /// The reference's reply to an unknown command: `The command <name> has not been found`.
    pub fn unknown_command(name: &str) -> Self {
        Self::command_not_found(format!("The command {name} has not been found"))
    }

    /// The reference's reply to a stray byte the lexer cannot take (a control
    /// character inside a string, a byte that starts no token): `JSON parse error,
    /// stray '<token>'`, where `token` is the partial token up to and including that
    /// byte, shown as qemu-ga 7.2 shows it: cut at a NUL byte (a C string), modified
    /// UTF-8 (`C0 80` is U+0000), and U+FFFD for each invalid sequence (a UTF-8-encoded
    /// surrogate counts as one).
    ///
    /// ```
    /// use qga_proto::QgaError;
    /// assert_eq!(QgaError::stray(b"\"guest-ping\n").desc, "JSON parse error, stray '\"guest-ping\n'");
    /// assert_eq!(QgaError::stray(b"\x80").desc, "JSON parse error, stray '\u{FFFD}'");
    /// assert_eq!(QgaError::stray(b"\"x\0").desc, "JSON parse error, stray '\"x'");
    /// assert_eq!(QgaError::stray(b"\"a\xC0\x80\xED\xA0\x80\xFFb\n").desc,
    ///            "JSON parse error, stray '\"a\u{0}\u{FFFD}\u{FFFD}b\n'");
    /// ```
    pub fn stray(token: &[u8]) -> Self {
        let token = token.split(|&b| b == 0).next().unwrap_or_default();
        let mut text = String::with_capacity(token.len());
        let mut rest = token;
        while !rest.is_empty() {
            match rest {
                [0xC0, 0x80, tail @ ..] => {
                    text.push('\0');
                    rest = tail;
                }
                [0xED, 0xA0..=0xBF, 0x80..=0xBF, tail @ ..] => {
                    text.push(char::REPLACEMENT_CHARACTER);
                    rest = tail;
                }
                _ => {
                    let chunk = rest.utf8_chunks().next().expect("rest is not empty");
                    text.push_str(chunk.valid());
                    rest = &rest[chunk.valid().len()..];
                    // An invalid sequence that is not one of the cases above.
                    if !chunk.invalid().is_empty()
                        && !matches!(
                            rest,
                            [0xC0, 0x80, ..] | [0xED, 0xA0..=0xBF, 0x80..=0xBF, ..]
                        )
                    {
                        text.push(char::REPLACEMENT_CHARACTER);
                        rest = &rest[chunk.invalid().len()..];
                    }
                }
            }
        }
        Self::generic(format!("JSON parse error, stray '{text}'"))
    }

    /// The reference's reply to a disabled command: `Command <name> has been disabled`,
    /// with `: <reason>` when a reason is given.
    pub fn disabled_command(name: &str, reason: Option<&str>) -> Self {
        match reason {
            Some(r) => Self::command_not_found(format!("Command {name} has been disabled: {r}")),
            None => Self::command_not_found(format!("Command {name} has been disabled")),
        }
    }
}

/// Why a command's `arguments` were rejected. `Display` is the reference agent's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArgumentError {
    /// A required member is absent: `Parameter 'x' is missing`.
    #[error("Parameter '{0}' is missing")]
    Missing(String),
    /// A member the command does not declare: `Parameter 'x' is unexpected`.
    #[error("Parameter '{0}' is unexpected")]
    Unexpected(String),
    /// A member of the wrong JSON type: `Invalid parameter type for 'x', expected: integer`.
    #[error("Invalid parameter type for '{name}', expected: {expected}")]
    InvalidType {
        /// The member's path (`mountpoints[0]` for list elements).
        name: String,
        /// The expected QAPI type name (`integer`, `string`, `boolean`, `array`, ...).
        expected: &'static str,
    },
    /// A string outside an enum: `Parameter 'whence' does not accept value 'bogus'`.
    #[error("Parameter '{name}' does not accept value '{value}'")]
    InvalidValue {
        /// The member's name.
        name: String,
        /// The value given.
        value: String,
    },
    /// A member outside the range of an unsigned QAPI type:
    /// `Parameter 'phys-index' expects uint64` (what qemu-ga says for any bad uint64).
    #[error("Parameter '{name}' expects {expected}")]
    Expects {
        /// The member's path.
        name: String,
        /// The QAPI type name.
        expected: &'static str,
    },
    /// A `buf-b64` member with characters outside the base64 alphabet.
    #[error("Base64 data contains invalid characters")]
    InvalidBase64,
    /// `arguments` is not valid JSON or repeats a member (`JSON parse error, duplicate key`).
    #[error("JSON parse error, {0}")]
    Json(String),
}

impl From<ArgumentError> for QgaError {
    fn from(e: ArgumentError) -> Self {
        QgaError::generic(e.to_string())
    }
}
