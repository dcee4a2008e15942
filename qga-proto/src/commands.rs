//! One type per QGA command, and the types they return.
//!
//! Member names are exactly the wire names (`buf-b64`, `supported_commands`,
//! `success-response`, ...). Where the seed (QEMU 1.2) schema and qemu-ga 7.2 differ,
//! these types speak 7.2, and each such difference is noted on the type.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::args::ArgType;
use crate::json::Members;
use crate::{ArgumentError, Base64};

/// A QGA command: its wire name, its arguments (the implementing struct) and what
/// it returns.
///
/// ```
/// use qga_proto::{Command, GuestFileRead};
/// assert_eq!(GuestFileRead::NAME, "guest-file-read");
/// let args = serde_json::value::RawValue::from_string(r#"{"handle":1000}"#.into()).unwrap();
/// let cmd = GuestFileRead::from_arguments(Some(&args)).unwrap();
/// assert_eq!((cmd.handle, cmd.count), (1000, None));
/// ```
pub trait Command: Serialize + for<'de> Deserialize<'de> + Send + Sync + 'static {
    /// The wire name (`execute` member).
    const NAME: &'static str;
    /// What a successful call returns.
    type Returns: Serialize + for<'de> Deserialize<'de> + Send + 'static;
    /// False for commands that send no reply on success (guest-shutdown,
    /// guest-suspend-*): a reply to them is always an error.
    const SUCCESS_RESPONSE: bool = true;
    /// Whether the command still runs while the agent has filesystems frozen (qemu-ga's
    /// allow list: guest-ping, guest-info, guest-sync, guest-sync-delimited,
    /// guest-fsfreeze-status, guest-fsfreeze-thaw). False for everything else.
    const ALLOWED_WHILE_FROZEN: bool = false;
    /// Whether the command declares any argument members. Requests for commands
    /// without members are sent without `arguments`.
    const HAS_ARGUMENTS: bool;

    /// Builds the command from a request's raw `arguments` (absent = `{}`), validating
    /// them as qemu-ga does: members in declaration order, a missing required member
    /// before any unexpected one, `null` never standing for "absent".
    fn from_arguments(args: Option<&RawValue>) -> Result<Self, ArgumentError>;
}

pub(crate) fn members(args: Option<&RawValue>) -> Result<Members<'_>, ArgumentError> {
    match args {
        Some(raw) => Members::parse_object(raw.get()).map_err(ArgumentError::Json),
        None => Ok(Members(crate::json::MemberList::new())),
    }
}

pub(crate) fn reject_unexpected(
    members: &Members<'_>,
    declared: &[&str],
) -> Result<(), ArgumentError> {
    // The common case, nothing unexpected, needs no ordering (nor its allocations).
    if members
        .0
        .iter()
        .all(|(n, _)| declared.contains(&n.as_ref()))
    {
        return Ok(());
    }
    match members
        .names_in_visitor_order()
        .into_iter()
        .find(|n| !declared.contains(n))
    {
        Some(n) => Err(ArgumentError::Unexpected(n.to_owned())),
        None => Ok(()),
    }
}

macro_rules! command {
    (
        $(#[$meta:meta])*
        $ty:ident = $wire:literal -> $ret:ty;
        success_response: $sr:expr;
        $(allowed_while_frozen: $fz:expr;)?
        required { $( $(#[$rmeta:meta])* $rf:ident : $rty:ty = $rwire:literal ),* $(,)? }
        optional { $( $(#[$ometa:meta])* $of:ident : $oty:ty = $owire:literal ),* $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Default, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $ty {
            $( $(#[$rmeta])* #[serde(rename = $rwire)] pub $rf: $rty, )*
            $( $(#[$ometa])*
               #[serde(rename = $owire, default, skip_serializing_if = "Option::is_none")]
               pub $of: Option<$oty>, )*
        }

        impl $crate::Command for $ty {
            const NAME: &'static str = $wire;
            type Returns = $ret;
            const SUCCESS_RESPONSE: bool = $sr;
            $(const ALLOWED_WHILE_FROZEN: bool = $fz;)?
            const HAS_ARGUMENTS: bool = command!(@any $($rwire)* $($owire)*);

            #[allow(unused_variables)]
            fn from_arguments(args: Option<&$crate::RawValue>) -> Result<Self, $crate::ArgumentError> {
                let m = $crate::commands::members(args)?;
                $(
                    let $rf = match m.get($rwire) {
                        Some(raw) => <$rty as $crate::ArgType>::from_raw($rwire, raw)?,
                        None => return Err($crate::ArgumentError::Missing($rwire.to_owned())),
                    };
                )*
                $(
                    let $of = match m.get($owire) {
                        Some(raw) => Some(<$oty as $crate::ArgType>::from_raw($owire, raw)?),
                        None => None,
                    };
                )*
                $crate::commands::reject_unexpected(&m, &[$($rwire,)* $($owire,)*])?;
                Ok($ty { $($rf,)* $($of,)* })
            }
        }
    };
    (@any) => { false };
    (@any $($t:tt)+) => { true };
}
pub(crate) use command;

/// The empty object `{}`: what commands without a return type answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Empty {}

command! {
    /// `guest-sync-delimited`: echo `id`; the reply is preceded by a 0xFF byte so a
    /// client can find it in a dirty stream. Clients send a 0xFF before it.
    GuestSyncDelimited = "guest-sync-delimited" -> i64;
    success_response: true;
    allowed_while_frozen: true;
    required {
        /// A fresh random number the reply must carry back.
        id: i64 = "id",
    }
    optional {}
}

command! {
    /// `guest-sync`: echo `id` (no sentinel; for agents without the delimited form).
    GuestSync = "guest-sync" -> i64;
    success_response: true;
    allowed_while_frozen: true;
    required {
        /// A fresh random number the reply must carry back.
        id: i64 = "id",
    }
    optional {}
}

command! {
    /// `guest-ping`: is the agent alive?
    GuestPing = "guest-ping" -> Empty;
    success_response: true;
    allowed_while_frozen: true;
    required {}
    optional {}
}

command! {
    /// `guest-info`: agent version and its commands.
    GuestInfo = "guest-info" -> GuestAgentInfo;
    success_response: true;
    allowed_while_frozen: true;
    required {}
    optional {}
}

command! {
    /// `guest-shutdown`: halt, power down (default) or reboot the guest. No reply on
    /// success. `mode` is a plain string on the wire (validated by the agent:
    /// `mode is invalid (valid values are: halt|powerdown|reboot`).
    GuestShutdown = "guest-shutdown" -> Empty;
    success_response: false;
    required {}
    optional {
        /// `halt`, `powerdown` or `reboot`.
        mode: String = "mode",
    }
}

command! {
    /// `guest-file-open`: open a guest file; returns its handle (7.2: from 1000 up,
    /// never reused; 1.2 returned the raw fd number).
    GuestFileOpen = "guest-file-open" -> i64;
    success_response: true;
    required {
        /// Path in the guest (relative paths resolve against the agent's cwd).
        path: String = "path",
    }
    optional {
        /// fopen-style mode; default `r`.
        mode: String = "mode",
    }
}

command! {
    /// `guest-file-close`.
    GuestFileClose = "guest-file-close" -> Empty;
    success_response: true;
    required {
        /// Handle from guest-file-open.
        handle: i64 = "handle",
    }
    optional {}
}

command! {
    /// `guest-file-read`: read up to `count` bytes (default 4096; 7.2 caps it at
    /// 48 MiB, 1.2 had no cap).
    GuestFileRead = "guest-file-read" -> GuestFileReadResult;
    success_response: true;
    required {
        /// Handle from guest-file-open.
        handle: i64 = "handle",
    }
    optional {
        /// Maximum number of bytes to read.
        count: i64 = "count",
    }
}

command! {
    /// `guest-file-write`: write base64-decoded `buf-b64` (or its first `count` bytes).
    GuestFileWrite = "guest-file-write" -> GuestFileWriteResult;
    success_response: true;
    required {
        /// Handle from guest-file-open.
        handle: i64 = "handle",
        /// The data.
        buf_b64: Base64 = "buf-b64",
    }
    optional {
        /// Bytes of the decoded data to write; default all.
        count: i64 = "count",
    }
}

/// [`GuestFileWrite`]'s arguments with the payload checked but not decoded, borrowed
/// from the request: see [`GuestFileWrite::borrowed_arguments`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFileWriteArgs<'a> {
    /// Handle from guest-file-open.
    pub handle: i64,
    /// The data, checked base64 text.
    pub buf_b64: crate::Base64Text<'a>,
    /// Bytes of the decoded data to write; default all.
    pub count: Option<i64>,
}

impl GuestFileWrite {
    /// Reads the arguments as [`Command::from_arguments`] does (the same checks in
    /// the same order, the same errors) but keeps the payload as checked base64
    /// text, for a caller that decodes it piece by piece instead of whole.
    ///
    /// ```
    /// use qga_proto::GuestFileWrite;
    /// let raw = serde_json::value::RawValue::from_string(
    ///     r#"{"handle":1000,"buf-b64":"aGVsbG8="}"#.into(),
    /// )
    /// .unwrap();
    /// let args = GuestFileWrite::borrowed_arguments(Some(&raw)).unwrap();
    /// assert_eq!((args.handle, args.count), (1000, None));
    /// assert_eq!(args.buf_b64.into_vec(), b"hello");
    /// ```
    pub fn borrowed_arguments(
        args: Option<&RawValue>,
    ) -> Result<GuestFileWriteArgs<'_>, ArgumentError> {
        // Keep in step with the `command!` definition above.
        let text = args.map_or("{}", RawValue::get);
        let Some(m) = crate::json::split_checked_object(text) else {
            // Anything unusual (an escaped key, a strict-JSON issue): the typed
            // path's reading, which also finds the error to report.
            let m = members(args)?;
            let owned: Vec<(&str, &str)> = m.0.iter().map(|(k, v)| (k.as_ref(), v.get())).collect();
            return write_args_from(&owned);
        };
        write_args_from(&m)
    }
}

/// guest-file-write's members, typed in declaration order as `command!` does.
fn write_args_from<'a>(m: &[(&str, &'a str)]) -> Result<GuestFileWriteArgs<'a>, ArgumentError> {
    let get = |name: &str| m.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    {
        let handle = match get("handle") {
            Some(raw) => crate::args::int_from_text("handle", raw)?,
            None => return Err(ArgumentError::Missing("handle".to_owned())),
        };
        let buf_b64 = match get("buf-b64") {
            Some(raw) => crate::args::base64_text("buf-b64", raw)?,
            None => return Err(ArgumentError::Missing("buf-b64".to_owned())),
        };
        let count = match get("count") {
            Some(raw) => Some(crate::args::int_from_text("count", raw)?),
            None => None,
        };
        let mut names: Vec<&str> = m.iter().map(|(k, _)| *k).collect();
        crate::json::ghash_order(&mut names);
        if let Some(n) = names
            .into_iter()
            .find(|n| !["handle", "buf-b64", "count"].contains(n))
        {
            return Err(ArgumentError::Unexpected(n.to_owned()));
        }
        Ok(GuestFileWriteArgs {
            handle,
            buf_b64,
            count,
        })
    }
}

command! {
    /// `guest-file-seek`. 7.2: `whence` is 0/1/2 or `"set"`/`"cur"`/`"end"`
    /// (1.2: a plain integer passed to fseek).
    GuestFileSeek = "guest-file-seek" -> GuestFileSeekResult;
    success_response: true;
    required {
        /// Handle from guest-file-open.
        handle: i64 = "handle",
        /// Offset relative to `whence`.
        offset: i64 = "offset",
        /// Origin of the seek.
        whence: Whence = "whence",
    }
    optional {}
}

command! {
    /// `guest-file-flush`.
    GuestFileFlush = "guest-file-flush" -> Empty;
    success_response: true;
    required {
        /// Handle from guest-file-open.
        handle: i64 = "handle",
    }
    optional {}
}

command! {
    /// `guest-fsfreeze-status`: the agent's frozen flag (7.2 has no `error` state).
    GuestFsfreezeStatus = "guest-fsfreeze-status" -> FsfreezeStatus;
    success_response: true;
    allowed_while_frozen: true;
    required {}
    optional {}
}

command! {
    /// `guest-fsfreeze-freeze`: freeze every freezable guest filesystem; returns how
    /// many were frozen.
    GuestFsfreezeFreeze = "guest-fsfreeze-freeze" -> i64;
    success_response: true;
    required {}
    optional {}
}

command! {
    /// `guest-fsfreeze-freeze-list` (7.2, not in the 1.2 seed): freeze only the listed
    /// mountpoints (`[]` freezes nothing; omitted = all).
    GuestFsfreezeFreezeList = "guest-fsfreeze-freeze-list" -> i64;
    success_response: true;
    required {}
    optional {
        /// Mountpoints to freeze, compared as strings with the mount table.
        mountpoints: Vec<String> = "mountpoints",
    }
}

command! {
    /// `guest-fsfreeze-thaw`: thaw all filesystems; returns how many were thawed.
    GuestFsfreezeThaw = "guest-fsfreeze-thaw" -> i64;
    success_response: true;
    allowed_while_frozen: true;
    required {}
    optional {}
}

command! {
    /// `guest-fstrim`. 7.2 returns a per-path result list; 1.2 returned nothing.
    GuestFstrim = "guest-fstrim" -> GuestFilesystemTrimResponse;
    success_response: true;
    required {}
    optional {
        /// Minimum contiguous free range to discard, in bytes (default 0).
        minimum: i64 = "minimum",
    }
}

command! {
    /// `guest-suspend-disk`: hibernate. No reply on success.
    GuestSuspendDisk = "guest-suspend-disk" -> Empty;
    success_response: false;
    required {}
    optional {}
}

command! {
    /// `guest-suspend-ram`: suspend to RAM. No reply on success.
    GuestSuspendRam = "guest-suspend-ram" -> Empty;
    success_response: false;
    required {}
    optional {}
}

command! {
    /// `guest-suspend-hybrid`: save to disk and suspend to RAM. No reply on success.
    GuestSuspendHybrid = "guest-suspend-hybrid" -> Empty;
    success_response: false;
    required {}
    optional {}
}

command! {
    /// `guest-network-get-interfaces`. 7.2 adds per-interface `statistics`.
    GuestNetworkGetInterfaces = "guest-network-get-interfaces" -> Vec<GuestNetworkInterface>;
    success_response: true;
    required {}
    optional {}
}

/// `whence` of guest-file-seek (`GuestFileWhence`): an integer code or a name.
///
/// The reference maps 0/1/2 to set/cur/end and rejects other integers in the command
/// (`invalid whence code <n>`, see [`Whence::resolve`]); names outside
/// set/cur/end are argument errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Whence {
    /// Integer form (0 = set, 1 = cur, 2 = end; others invalid).
    Code(i64),
    /// Name form (QGASeek).
    Name(SeekOrigin),
}

impl Default for Whence {
    fn default() -> Self {
        Whence::Name(SeekOrigin::Set)
    }
}

/// The named seek origins (QGASeek).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeekOrigin {
    /// From the start of the file.
    Set,
    /// From the current position.
    Cur,
    /// From the end of the file.
    End,
}

impl Whence {
    /// The origin this whence stands for, or the reference's error text for an
    /// integer code other than 0, 1, 2 (`invalid whence code <n>`).
    pub fn resolve(self) -> Result<SeekOrigin, String> {
        match self {
            Whence::Name(o) => Ok(o),
            Whence::Code(0) => Ok(SeekOrigin::Set),
            Whence::Code(1) => Ok(SeekOrigin::Cur),
            Whence::Code(2) => Ok(SeekOrigin::End),
            Whence::Code(n) => Err(format!("invalid whence code {n}")),
        }
    }
}

impl ArgType for Whence {
    fn from_raw(name: &str, raw: &RawValue) -> Result<Self, ArgumentError> {
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'-' | b'0'..=b'9') => i64::from_raw(name, raw).map(Whence::Code),
            Some(b'"') => {
                let s = String::from_raw(name, raw)?;
                match s.as_str() {
                    "set" => Ok(Whence::Name(SeekOrigin::Set)),
                    "cur" => Ok(Whence::Name(SeekOrigin::Cur)),
                    "end" => Ok(Whence::Name(SeekOrigin::End)),
                    _ => Err(ArgumentError::InvalidValue {
                        name: name.to_owned(),
                        value: s,
                    }),
                }
            }
            _ => Err(ArgumentError::InvalidType {
                name: name.to_owned(),
                expected: "GuestFileWhence",
            }),
        }
    }
}

/// guest-info's reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestAgentInfo {
    /// Agent version (a plain semver string: some hosts reject anything else).
    pub version: String,
    /// Every registered command, enabled or not.
    pub supported_commands: Vec<GuestAgentCommandInfo>,
}

/// One command in guest-info.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestAgentCommandInfo {
    /// Wire name.
    pub name: String,
    /// False when blocked, not allowed, or disabled by frozen mode.
    pub enabled: bool,
    /// False for commands that do not reply on success (since QEMU 1.7).
    #[serde(rename = "success-response")]
    pub success_response: bool,
}

/// guest-file-read's reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFileReadResult {
    /// Bytes read (before base64 encoding).
    pub count: i64,
    /// The data; `""` when nothing was read.
    #[serde(rename = "buf-b64")]
    pub buf_b64: Base64,
    /// End of file reached.
    pub eof: bool,
}

/// guest-file-write's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFileWriteResult {
    /// Bytes written.
    pub count: i64,
    /// The stream's end-of-file flag.
    pub eof: bool,
}

/// guest-file-seek's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFileSeekResult {
    /// Position after the seek.
    pub position: i64,
    /// The stream's end-of-file flag.
    pub eof: bool,
}

/// guest-fsfreeze-status's reply (`GuestFsfreezeStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsfreezeStatus {
    /// Not frozen.
    Thawed,
    /// Frozen by guest-fsfreeze-freeze(-list).
    Frozen,
}

/// guest-fstrim's reply (7.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFilesystemTrimResponse {
    /// One entry per mounted filesystem, in reverse mount order.
    pub paths: Vec<GuestFilesystemTrimResult>,
}

/// One filesystem's trim outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFilesystemTrimResult {
    /// Mountpoint.
    pub path: String,
    /// Bytes trimmed, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trimmed: Option<i64>,
    /// Effective minimum extent the kernel used, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<i64>,
    /// Why this path failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Address family of [`GuestIpAddress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestIpAddressType {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

/// One address of an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestIpAddress {
    /// Address text (IPv6 without `%scope`).
    #[serde(rename = "ip-address")]
    pub ip_address: String,
    /// Family.
    #[serde(rename = "ip-address-type")]
    pub ip_address_type: GuestIpAddressType,
    /// Prefix length.
    pub prefix: i64,
}

/// Interface counters (7.2; not in the 1.2 seed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GuestNetworkInterfaceStat {
    /// Bytes received.
    #[serde(rename = "rx-bytes")]
    pub rx_bytes: u64,
    /// Packets received.
    #[serde(rename = "rx-packets")]
    pub rx_packets: u64,
    /// Receive errors.
    #[serde(rename = "rx-errs")]
    pub rx_errs: u64,
    /// Received packets dropped.
    #[serde(rename = "rx-dropped")]
    pub rx_dropped: u64,
    /// Bytes sent.
    #[serde(rename = "tx-bytes")]
    pub tx_bytes: u64,
    /// Packets sent.
    #[serde(rename = "tx-packets")]
    pub tx_packets: u64,
    /// Send errors.
    #[serde(rename = "tx-errs")]
    pub tx_errs: u64,
    /// Sent packets dropped.
    #[serde(rename = "tx-dropped")]
    pub tx_dropped: u64,
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNetworkInterface {
    /// Interface name.
    pub name: String,
    /// MAC address, lower-case `aa:bb:cc:dd:ee:ff`.
    #[serde(
        rename = "hardware-address",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub hardware_address: Option<String>,
    /// Addresses; absent when the interface has none.
    #[serde(
        rename = "ip-addresses",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ip_addresses: Option<Vec<GuestIpAddress>>,
    /// Counters; absent when the interface has no address (as 7.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistics: Option<GuestNetworkInterfaceStat>,
}

/// Static facts about a command, for dispatch tables and guest-info.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSpec {
    /// Wire name.
    pub name: &'static str,
    /// False for commands that do not reply on success.
    pub success_response: bool,
    /// Whether the command runs while filesystems are frozen.
    pub allowed_while_frozen: bool,
}

impl CommandSpec {
    /// The facts of command `C`, from its [`Command`] constants.
    pub const fn of<C: Command>() -> Self {
        CommandSpec {
            name: C::NAME,
            success_response: C::SUCCESS_RESPONSE,
            allowed_while_frozen: C::ALLOWED_WHILE_FROZEN,
        }
    }
}

/// Every command this crate types, in qemu-ga 7.2's registration order (the order
/// of `qemu-ga -b help`; guest-info lists them reversed), followed by the two that
/// current QEMU added after 7.2, where it puts them: guest-get-load (10.0) and
/// guest-network-get-route (9.1).
pub const COMMANDS: &[CommandSpec] = &[
    CommandSpec::of::<crate::GuestSyncDelimited>(),
    CommandSpec::of::<crate::GuestSync>(),
    CommandSpec::of::<crate::GuestPing>(),
    CommandSpec::of::<crate::GuestGetTime>(),
    CommandSpec::of::<crate::GuestSetTime>(),
    CommandSpec::of::<crate::GuestInfo>(),
    CommandSpec::of::<crate::GuestShutdown>(),
    CommandSpec::of::<crate::GuestFileOpen>(),
    CommandSpec::of::<crate::GuestFileClose>(),
    CommandSpec::of::<crate::GuestFileRead>(),
    CommandSpec::of::<crate::GuestFileWrite>(),
    CommandSpec::of::<crate::GuestFileSeek>(),
    CommandSpec::of::<crate::GuestFileFlush>(),
    CommandSpec::of::<crate::GuestFsfreezeStatus>(),
    CommandSpec::of::<crate::GuestFsfreezeFreeze>(),
    CommandSpec::of::<crate::GuestFsfreezeFreezeList>(),
    CommandSpec::of::<crate::GuestFsfreezeThaw>(),
    CommandSpec::of::<crate::GuestFstrim>(),
    CommandSpec::of::<crate::GuestSuspendDisk>(),
    CommandSpec::of::<crate::GuestSuspendRam>(),
    CommandSpec::of::<crate::GuestSuspendHybrid>(),
    CommandSpec::of::<crate::GuestNetworkGetInterfaces>(),
    CommandSpec::of::<crate::GuestGetVcpus>(),
    CommandSpec::of::<crate::GuestSetVcpus>(),
    CommandSpec::of::<crate::GuestGetDisks>(),
    CommandSpec::of::<crate::GuestGetFsinfo>(),
    CommandSpec::of::<crate::GuestSetUserPassword>(),
    CommandSpec::of::<crate::GuestGetMemoryBlocks>(),
    CommandSpec::of::<crate::GuestSetMemoryBlocks>(),
    CommandSpec::of::<crate::GuestGetMemoryBlockInfo>(),
    CommandSpec::of::<crate::GuestExecStatus>(),
    CommandSpec::of::<crate::GuestExec>(),
    CommandSpec::of::<crate::GuestGetHostName>(),
    CommandSpec::of::<crate::GuestGetUsers>(),
    CommandSpec::of::<crate::GuestGetTimezone>(),
    CommandSpec::of::<crate::GuestGetOsinfo>(),
    CommandSpec::of::<crate::GuestGetDevices>(),
    CommandSpec::of::<crate::GuestSshGetAuthorizedKeys>(),
    CommandSpec::of::<crate::GuestSshAddAuthorizedKeys>(),
    CommandSpec::of::<crate::GuestSshRemoveAuthorizedKeys>(),
    CommandSpec::of::<crate::GuestGetDiskstats>(),
    CommandSpec::of::<crate::GuestGetCpustats>(),
    CommandSpec::of::<crate::GuestGetLoad>(),
    CommandSpec::of::<crate::GuestNetworkGetRoute>(),
];

/// Looks a command up by wire name.
pub fn command_spec(name: &str) -> Option<&'static CommandSpec> {
    COMMANDS.iter().find(|c| c.name == name)
}
