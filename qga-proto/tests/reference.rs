//! Our parsing and serialisation against replies captured from the reference agent
//! (qemu-ga 7.2.22; see tests/fixtures/README.md). Each exchange checks one of:
//! an envelope error (same class, desc and echoed id), an argument error (same desc),
//! or a successful reply that must round-trip through our typed return value without
//! losing or renaming a member.

use qga_proto::*;
use serde_json::Value;

#[derive(serde::Deserialize)]
struct Fixture {
    agent: String,
    exchanges: Vec<Exchange>,
}

#[derive(serde::Deserialize)]
struct Exchange {
    request: String,
    reply: String,
    delimited: bool,
}

fn fixture() -> Fixture {
    let text = include_str!("fixtures/reference.json");
    serde_json::from_str(text).expect("fixture parses")
}

/// What our side made of one exchange.
enum Outcome {
    EnvelopeChecked,
    ArgumentErrorChecked,
    ReturnRoundTripped,
    CommandError,
}

fn check_command<C: Command>(req: &Request<'_>, reply: &Value, ex: &Exchange) -> Outcome {
    let parsed = C::from_arguments(req.arguments);
    if let Some(err) = reply.get("error") {
        return match parsed {
            Err(e) => {
                assert_eq!(
                    Value::String(e.to_string()),
                    err["desc"],
                    "argument error for {}",
                    ex.request
                );
                assert_eq!(QgaError::from(e).class, ErrorClass::GenericError);
                Outcome::ArgumentErrorChecked
            }
            // Valid arguments, failing command (handle errors etc.): the agent's job.
            Ok(_) => Outcome::CommandError,
        };
    }
    let cmd = parsed.unwrap_or_else(|e| panic!("{} rejected: {e}", ex.request));
    // Arguments round-trip: what we would send equals what was sent.
    let sent: Value = serde_json::from_str(&ex.request).unwrap();
    let ours = serde_json::to_value(Execute::command(&cmd, sent.get("id"))).unwrap();
    let mut expected = sent.clone();
    if !C::HAS_ARGUMENTS {
        expected.as_object_mut().unwrap().remove("arguments");
    }
    assert_eq!(ours, expected, "arguments round trip for {}", ex.request);
    // The reply parses into our typed return value and serialises back to the same JSON.
    let typed: Response<C::Returns> = serde_json::from_str(&ex.reply)
        .unwrap_or_else(|e| panic!("reply to {} does not parse: {e}", ex.request));
    let again = serde_json::to_value(&typed).unwrap();
    assert_eq!(&again, reply, "reply round trip for {}", ex.request);
    assert_eq!(ex.delimited, C::NAME == GuestSyncDelimited::NAME);
    Outcome::ReturnRoundTripped
}

fn check(ex: &Exchange) -> Outcome {
    let reply: Value = serde_json::from_str(&ex.reply).unwrap();
    let req = match Request::parse(ex.request.as_bytes()) {
        Err(e) => {
            let err = &reply["error"];
            assert_eq!(
                Value::String(e.error.desc.clone()),
                err["desc"],
                "{}",
                ex.request
            );
            assert_eq!(Value::String(e.error.class.to_string()), err["class"]);
            assert_eq!(e.id.as_ref(), reply.get("id"), "id echo for {}", ex.request);
            return Outcome::EnvelopeChecked;
        }
        Ok(r) => r,
    };
    assert_eq!(
        req.id.as_ref(),
        reply.get("id"),
        "id echo for {}",
        ex.request
    );
    macro_rules! dispatch {
        ($($ty:ty),*) => {
            match req.execute.as_ref() {
                $(n if n == <$ty as Command>::NAME => check_command::<$ty>(&req, &reply, ex),)*
                other => {
                    assert!(command_spec(other).is_none());
                    let err = QgaError::unknown_command(other);
                    assert_eq!(Value::String(err.desc), reply["error"]["desc"]);
                    assert_eq!(Value::String(err.class.to_string()), reply["error"]["class"]);
                    Outcome::CommandError
                }
            }
        };
    }
    dispatch!(
        GuestSyncDelimited,
        GuestSync,
        GuestPing,
        GuestInfo,
        GuestShutdown,
        GuestFileOpen,
        GuestFileClose,
        GuestFileRead,
        GuestFileWrite,
        GuestFileSeek,
        GuestFileFlush,
        GuestFsfreezeStatus,
        GuestFsfreezeFreeze,
        GuestFsfreezeFreezeList,
        GuestFsfreezeThaw,
        GuestFstrim,
        GuestSuspendDisk,
        GuestSuspendRam,
        GuestSuspendHybrid,
        GuestNetworkGetInterfaces
    )
}

#[test]
fn every_captured_exchange_matches() {
    let f = fixture();
    assert!(f.agent.contains("7.2"), "fixture captured from {}", f.agent);
    let (mut env, mut args, mut rets) = (0, 0, 0);
    for ex in &f.exchanges {
        match check(ex) {
            Outcome::EnvelopeChecked => env += 1,
            Outcome::ArgumentErrorChecked => args += 1,
            Outcome::ReturnRoundTripped => rets += 1,
            Outcome::CommandError => {}
        }
    }
    // Guard against a fixture or dispatch change silently skipping whole categories.
    assert!(env >= 9, "{env} envelope errors checked");
    assert!(args >= 25, "{args} argument errors checked");
    assert!(rets >= 15, "{rets} returns round-tripped");
}

#[test]
fn guest_info_lists_success_response_as_the_reference() {
    let f = fixture();
    let ex = f
        .exchanges
        .iter()
        .find(|e| e.request.contains("guest-info"))
        .unwrap();
    let info: Response<GuestAgentInfo> = serde_json::from_str(&ex.reply).unwrap();
    let info = info.result.unwrap();
    // Commands current QEMU added after 7.2.
    const NEWER: [&str; 2] = ["guest-get-load", "guest-network-get-route"];
    for spec in COMMANDS.iter().filter(|s| !NEWER.contains(&s.name)) {
        let listed = info
            .supported_commands
            .iter()
            .find(|c| c.name == spec.name)
            .unwrap_or_else(|| panic!("{} not in qemu-ga's guest-info", spec.name));
        assert_eq!(
            listed.success_response, spec.success_response,
            "{}",
            spec.name
        );
    }
    // Registration order: guest-info lists commands reversed; our table is exactly
    // 7.2's registration order, then the newer commands.
    let reversed: Vec<&str> = info
        .supported_commands
        .iter()
        .rev()
        .map(|c| c.name.as_str())
        .collect();
    let ours: Vec<&str> = COMMANDS.iter().map(|s| s.name).collect();
    assert_eq!(ours[..ours.len() - NEWER.len()], reversed[..]);
    assert_eq!(ours[ours.len() - NEWER.len()..], NEWER);
}
