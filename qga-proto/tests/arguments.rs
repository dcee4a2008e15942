//! Argument validation: every optional member, absent vs explicit null vs present;
//! and the envelope parser never panics on arbitrary bytes.

use proptest::prelude::*;
use qga_proto::*;

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_owned()).unwrap()
}

/// For a command, a set of required members (as JSON text without braces) and an
/// optional member with a valid value: absent parses as None, the valid value as
/// Some, explicit null is a type error naming the member, and an extra member is
/// unexpected.
fn optional_member<C: Command + std::fmt::Debug>(
    required: &str,
    member: &str,
    valid: &str,
    expected_type: &str,
    get: impl Fn(&C) -> bool,
) {
    let sep = if required.is_empty() { "" } else { "," };
    let absent = C::from_arguments(Some(&raw(&format!("{{{required}}}")))).unwrap();
    assert!(!get(&absent), "{}: {member} absent must be None", C::NAME);
    let present = C::from_arguments(Some(&raw(&format!(
        "{{{required}{sep}\"{member}\":{valid}}}"
    ))))
    .unwrap();
    assert!(get(&present), "{}: {member} present must be Some", C::NAME);
    let null = C::from_arguments(Some(&raw(&format!("{{{required}{sep}\"{member}\":null}}"))))
        .unwrap_err();
    assert_eq!(
        null.to_string(),
        format!("Invalid parameter type for '{member}', expected: {expected_type}"),
        "{}",
        C::NAME
    );
    let extra =
        C::from_arguments(Some(&raw(&format!("{{{required}{sep}\"{member}-x\":1}}")))).unwrap_err();
    assert_eq!(
        extra.to_string(),
        format!("Parameter '{member}-x' is unexpected")
    );
    // The serialised form omits an absent member and keeps a present one.
    let json = serde_json::to_value(&absent).unwrap();
    assert!(
        json.get(member).is_none(),
        "{}: {member} serialised as {json}",
        C::NAME
    );
    let json = serde_json::to_value(&present).unwrap();
    assert!(json.get(member).is_some());
}

#[test]
fn every_optional_member_distinguishes_absent_null_and_present() {
    optional_member::<GuestShutdown>("", "mode", "\"halt\"", "string", |c| c.mode.is_some());
    optional_member::<GuestFileOpen>("\"path\":\"/x\"", "mode", "\"r\"", "string", |c| {
        c.mode.is_some()
    });
    optional_member::<GuestFileRead>("\"handle\":1000", "count", "5", "integer", |c| {
        c.count.is_some()
    });
    optional_member::<GuestFileWrite>(
        "\"handle\":1000,\"buf-b64\":\"\"",
        "count",
        "0",
        "integer",
        |c| c.count.is_some(),
    );
    optional_member::<GuestFsfreezeFreezeList>("", "mountpoints", "[\"/\"]", "array", |c| {
        c.mountpoints.is_some()
    });
    optional_member::<GuestFstrim>("", "minimum", "4096", "integer", |c| c.minimum.is_some());
}

#[test]
fn every_required_member_is_reported_missing_by_name() {
    fn missing<C: Command + std::fmt::Debug>(args: &str, member: &str) {
        let err = C::from_arguments(Some(&raw(args))).unwrap_err();
        assert_eq!(err.to_string(), format!("Parameter '{member}' is missing"));
    }
    missing::<GuestSync>("{}", "id");
    missing::<GuestSyncDelimited>("{}", "id");
    missing::<GuestFileOpen>("{\"mode\":\"r\"}", "path");
    missing::<GuestFileClose>("{}", "handle");
    missing::<GuestFileRead>("{\"count\":1}", "handle");
    missing::<GuestFileWrite>("{\"handle\":1}", "buf-b64");
    missing::<GuestFileSeek>("{\"handle\":1,\"offset\":0}", "whence");
    missing::<GuestFileSeek>("{\"handle\":1,\"whence\":0}", "offset");
    missing::<GuestFileFlush>("{}", "handle");
    // Missing wins over unexpected.
    missing::<GuestFileFlush>("{\"bogus\":1}", "handle");
}

#[test]
fn absent_arguments_equal_an_empty_object() {
    assert_eq!(GuestPing::from_arguments(None), Ok(GuestPing {}));
    assert_eq!(
        GuestFstrim::from_arguments(None),
        Ok(GuestFstrim { minimum: None })
    );
    assert_eq!(
        GuestSync::from_arguments(None).unwrap_err().to_string(),
        "Parameter 'id' is missing"
    );
}

#[test]
fn whence_accepts_both_forms_and_resolves_codes() {
    let seek = |w: &str| {
        GuestFileSeek::from_arguments(Some(&raw(&format!(
            "{{\"handle\":1,\"offset\":-3,\"whence\":{w}}}"
        ))))
    };
    assert_eq!(seek("2").unwrap().whence.resolve(), Ok(SeekOrigin::End));
    assert_eq!(
        seek("\"cur\"").unwrap().whence.resolve(),
        Ok(SeekOrigin::Cur)
    );
    assert_eq!(
        seek("7").unwrap().whence.resolve(),
        Err("invalid whence code 7".to_owned())
    );
    assert_eq!(
        seek("{}").unwrap_err().to_string(),
        "Invalid parameter type for 'whence', expected: GuestFileWhence"
    );
}

#[test]
fn write_payload_is_decoded_once_from_the_message() {
    let payload: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let mut b64 = Vec::new();
    Base64::encode_into(&payload, &mut b64);
    let msg = format!(
        "{{\"execute\":\"guest-file-write\",\"arguments\":{{\"handle\":1000,\"buf-b64\":\"{}\"}}}}",
        std::str::from_utf8(&b64).unwrap()
    );
    let req = Request::parse(msg.as_bytes()).unwrap();
    let cmd = GuestFileWrite::from_arguments(req.arguments).unwrap();
    assert_eq!(cmd.buf_b64.0, payload);
}

#[test]
fn replies_serialise_compactly_with_id_last() {
    let ok = Response::ok(Empty {}, Some(serde_json::json!("a")));
    assert_eq!(
        serde_json::to_string(&ok).unwrap(),
        r#"{"return":{},"id":"a"}"#
    );
    let err: Response<Empty> = Response::err(QgaError::generic("x"), None);
    assert_eq!(
        serde_json::to_string(&err).unwrap(),
        r#"{"error":{"class":"GenericError","desc":"x"}}"#
    );
    let unknown: Response<Empty> =
        serde_json::from_str(r#"{"error":{"class":"DeviceNotActive","desc":"d","data":{}}}"#)
            .unwrap();
    assert_eq!(
        unknown.result.unwrap_err().class,
        ErrorClass::Other("DeviceNotActive".into())
    );
}

proptest! {
    #[test]
    fn request_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Request::parse(&bytes);
    }

    #[test]
    fn request_parse_never_panics_on_near_json(
        parts in proptest::collection::vec(prop_oneof![
            Just("{"), Just("}"), Just("["), Just("]"), Just(","), Just(":"),
            Just("\"execute\""), Just("\"arguments\""), Just("\"id\""), Just("\"guest-ping\""),
            Just("1"), Just("-1.5e3"), Just("null"), Just("true"), Just("\"\\u00e9\""),
        ], 0..24)
    ) {
        let msg: String = parts.concat();
        if let Ok(req) = Request::parse(msg.as_bytes()) {
            let _ = GuestFileSeek::from_arguments(req.arguments);
            let _ = GuestFsfreezeFreezeList::from_arguments(req.arguments);
        }
    }
}

#[test]
fn bare_words_are_invalid_keywords_as_in_the_reference() {
    let err = Request::parse(b"junk").unwrap_err();
    assert_eq!(err.error.desc, "JSON parse error, invalid keyword 'junk'");
    assert_eq!(err.id, None);
    let err = Request::parse(b"true").unwrap_err();
    assert_eq!(err.error.desc, "QMP input must be a JSON object");
}
