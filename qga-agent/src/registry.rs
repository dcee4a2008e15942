//! The one table of commands: what guest-info lists, what `-b help` prints, what the
//! allow/block checks and the dispatcher look up. A command's name, whether it
//! replies on success and whether it runs while frozen come from its `qga-proto`
//! type, so a command cannot be half-registered.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use bytes::BytesMut;
use qga_proto::{Command, CommandSpec, Empty, GuestSyncDelimited, QgaError, Request};

use crate::dispatcher::{reply, Context};

/// A handler that takes the request as it came (raw arguments) and writes its own
/// reply: for hot paths that bypass the typed path (guest-file-read encodes file
/// data straight into the reply buffer).
pub type RawHandler = Box<dyn Fn(&mut Context, &Request<'_>, &mut BytesMut) + Send + Sync>;

/// One registered command.
pub(crate) struct Entry {
    pub(crate) spec: CommandSpec,
    /// Registered but refused on this platform (qemu-ga 7.2 does this for
    /// guest-get-devices on Linux): listed disabled, answers "has been disabled".
    pub(crate) unsupported: bool,
    run: RawHandler,
    /// guest-file-write's stock handler, which the dispatcher may bypass for a
    /// request [`qga_proto::Request::parse_file_write`] reads (a replaced handler
    /// gets every request).
    pub(crate) stock_file_write: bool,
}

impl Entry {
    pub(crate) fn run(&self, ctx: &mut Context, req: &Request<'_>, out: &mut BytesMut) {
        (self.run)(ctx, req, out)
    }
}

/// The commands an agent serves, in registration order (qemu-ga lists them in
/// guest-info reversed, and prints them in this order for `-b help`).
///
/// Start from [`Registry::stock`] (every command of this agent) or
/// [`Registry::new`] (none), then [`register`](Registry::register) typed
/// handlers, [`remove`](Registry::remove) what a custom agent must never offer, and
/// hand it to [`crate::Dispatcher::with_registry`].
///
/// ```
/// use qga_agent::{Context, Registry};
/// use qga_proto::{Command, GuestGetHostName, GuestHostName, QgaError};
///
/// let mut registry = Registry::stock();
/// // A fixed host name instead of the machine's.
/// registry.register(|_: &mut Context, _: GuestGetHostName| -> Result<GuestHostName, QgaError> {
///     Ok(GuestHostName { host_name: "appliance".into() })
/// });
/// assert!(registry.remove("guest-shutdown"));
/// assert!(registry.names().any(|n| n == GuestGetHostName::NAME));
/// assert!(!registry.names().any(|n| n == "guest-shutdown"));
/// ```
#[derive(Default)]
pub struct Registry {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every command of this agent, in qemu-ga's registration order.
    pub fn stock() -> Self {
        crate::commands::stock()
    }

    /// Registers `C` with a typed handler: arguments are validated with qemu-ga's
    /// texts before it runs, and its result is encoded as the reply (none for a
    /// success of a `success-response: false` command; the 0xFF sentinel first for
    /// guest-sync-delimited). A command of the same name is replaced in place.
    pub fn register<C, F>(&mut self, handler: F) -> &mut Self
    where
        C: Command,
        F: Fn(&mut Context, C) -> Result<C::Returns, QgaError> + Send + Sync + 'static,
    {
        self.register_raw::<C>(Box::new(move |ctx, req, out| {
            let cmd = match C::from_arguments(req.arguments) {
                Ok(c) => c,
                Err(e) => return reply::<Empty>(out, Err(e.into()), req.id.clone(), false),
            };
            match handler(ctx, cmd) {
                // Commands without a success response (shutdown, suspend) send nothing.
                Ok(_) if !C::SUCCESS_RESPONSE => {}
                Ok(v) => reply(
                    out,
                    Ok(v),
                    req.id.clone(),
                    C::NAME == GuestSyncDelimited::NAME,
                ),
                Err(e) => reply::<Empty>(out, Err(e), req.id.clone(), false),
            }
        }))
    }

    /// Registers `C` with a handler that parses the arguments and writes the reply
    /// itself (see [`RawHandler`]). A command of the same name is replaced in place.
    pub fn register_raw<C: Command>(&mut self, run: RawHandler) -> &mut Self {
        self.insert(Entry {
            spec: CommandSpec::of::<C>(),
            unsupported: false,
            run,
            stock_file_write: false,
        })
    }

    /// Registers guest-file-write's stock handler, marked so the dispatcher may take
    /// its fast path (see [`Entry::stock_file_write`]).
    pub(crate) fn register_stock_file_write(&mut self, run: RawHandler) -> &mut Self {
        self.insert(Entry {
            spec: CommandSpec::of::<qga_proto::GuestFileWrite>(),
            unsupported: false,
            run,
            stock_file_write: true,
        })
    }

    /// Registers `C` as unsupported on this platform: listed by guest-info as
    /// disabled and answered with `Command <name> has been disabled`, as qemu-ga 7.2
    /// does for guest-get-devices on Linux.
    pub fn register_unsupported<C: Command>(&mut self) -> &mut Self {
        self.insert(Entry {
            spec: CommandSpec::of::<C>(),
            unsupported: true,
            stock_file_write: false,
            run: Box::new(|_, req, out| {
                reply::<Empty>(
                    out,
                    Err(QgaError::disabled_command(C::NAME, None)),
                    req.id.clone(),
                    false,
                )
            }),
        })
    }

    fn insert(&mut self, entry: Entry) -> &mut Self {
        match self
            .entries
            .iter_mut()
            .find(|e| e.spec.name == entry.spec.name)
        {
            Some(e) => *e = entry,
            None => self.entries.push(entry),
        }
        self
    }

    /// Removes a command: the agent then answers it as unknown
    /// (`The command <name> has not been found`). Returns whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.spec.name != name);
        self.entries.len() != before
    }

    /// The registered names, in registration order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.entries.iter().map(|e| e.spec.name)
    }

    pub(crate) fn into_table(self) -> Table {
        let index = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.spec.name, i))
            .collect();
        Table {
            entries: self.entries,
            index,
        }
    }
}

/// A registry frozen for dispatch: entries plus a name index.
pub(crate) struct Table {
    entries: Vec<Entry>,
    index: HashMap<&'static str, usize, BuildHasherDefault<Fnv>>,
}

/// FNV-1a for the name index: every request looks its command up, the names are
/// short, and the table's keys are fixed once it is built (a request picks only
/// what it looks up), so SipHash's flooding resistance buys nothing here.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl Table {
    pub(crate) fn get(&self, name: &str) -> Option<&Entry> {
        self.index.get(name).map(|&i| &self.entries[i])
    }

    pub(crate) fn unsupported(&self, name: &str) -> bool {
        self.get(name).is_some_and(|e| e.unsupported)
    }

    pub(crate) fn specs(&self) -> impl Iterator<Item = &CommandSpec> {
        self.entries.iter().map(|e| &e.spec)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}
