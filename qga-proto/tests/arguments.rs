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

/// The texts below were captured from qemu-ga 7.2.22 (invalid arguments only: no
/// command ran).
#[test]
fn nested_argument_structs_name_their_path_as_qemu_ga() {
    let err = |args: &str| {
        GuestSetVcpus::from_arguments(Some(&raw(args)))
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err(r#"{"vcpus":[{"logical-id":0}]}"#),
        "Parameter 'vcpus[0].online' is missing"
    );
    assert_eq!(
        err(r#"{"vcpus":[5]}"#),
        "Invalid parameter type for 'vcpus[0]', expected: object"
    );
    assert_eq!(
        err(r#"{"vcpus":[{"logical-id":0,"online":true,"x":1}]}"#),
        "Parameter 'vcpus[0].x' is unexpected"
    );
    assert_eq!(
        err(r#"{"vcpus":[{"logical-id":0,"online":true},{"logical-id":"a","online":true}]}"#),
        "Invalid parameter type for 'vcpus[1].logical-id', expected: integer"
    );
    assert_eq!(
        err(r#"{"vcpus":{}}"#),
        "Invalid parameter type for 'vcpus', expected: array"
    );
    let ok = GuestSetVcpus::from_arguments(Some(&raw(
        r#"{"vcpus":[{"logical-id":1,"online":false,"can-offline":true}]}"#,
    )))
    .unwrap();
    assert_eq!(
        ok.vcpus,
        [GuestLogicalProcessor {
            logical_id: 1,
            online: false,
            can_offline: Some(true)
        }]
    );
}

#[test]
fn uint64_members_take_qemu_ga_range_and_text() {
    let parse = |v: &str| {
        GuestSetMemoryBlocks::from_arguments(Some(&raw(&format!(
            r#"{{"mem-blks":[{{"phys-index":{v},"online":true}}]}}"#
        ))))
        .map(|c| c.mem_blks[0].phys_index)
        .map_err(|e| e.to_string())
    };
    assert_eq!(parse("18446744073709551615"), Ok(u64::MAX));
    // Negative int64 values wrap, as qemu-ga accepts them "for backward compatibility".
    assert_eq!(parse("-1"), Ok(u64::MAX));
    for bad in [
        "\"x\"",
        "1.5",
        "18446744073709551616",
        "-9223372036854775809",
        "null",
    ] {
        assert_eq!(
            parse(bad),
            Err("Parameter 'mem-blks[0].phys-index' expects uint64".to_owned()),
            "{bad}"
        );
    }
}

#[test]
fn capture_output_is_a_boolean_or_a_mode() {
    let parse = |v: &str| {
        GuestExec::from_arguments(Some(&raw(&format!(
            r#"{{"path":"/bin/true","capture-output":{v}}}"#
        ))))
        .map(|c| c.capture_output.unwrap().mode())
        .map_err(|e| e.to_string())
    };
    assert_eq!(parse("true"), Ok(GuestExecCaptureOutputMode::Separated));
    assert_eq!(parse("false"), Ok(GuestExecCaptureOutputMode::None));
    assert_eq!(parse("\"merged\""), Ok(GuestExecCaptureOutputMode::Merged));
    assert_eq!(parse("\"stderr\""), Ok(GuestExecCaptureOutputMode::Stderr));
    assert_eq!(
        parse("\"both\""),
        Err("Parameter 'capture-output' does not accept value 'both'".to_owned())
    );
    assert_eq!(
        parse("1"),
        Err(
            "Invalid parameter type for 'capture-output', expected: GuestExecCaptureOutput"
                .to_owned()
        )
    );
}

#[test]
fn the_command_table_is_qemu_ga_72_order_then_current_qemu_additions() {
    let names: Vec<&str> = COMMANDS.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), 44);
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "a command is listed twice");
    assert_eq!(
        &names[..3],
        ["guest-sync-delimited", "guest-sync", "guest-ping"]
    );
    assert_eq!(
        &names[40..],
        [
            "guest-get-diskstats",
            "guest-get-cpustats",
            "guest-get-load",
            "guest-network-get-route"
        ]
    );
    let frozen: Vec<&str> = COMMANDS
        .iter()
        .filter(|c| c.allowed_while_frozen)
        .map(|c| c.name)
        .collect();
    assert_eq!(
        frozen,
        [
            "guest-sync-delimited",
            "guest-sync",
            "guest-ping",
            "guest-info",
            "guest-fsfreeze-status",
            "guest-fsfreeze-thaw"
        ]
    );
    let silent: Vec<&str> = COMMANDS
        .iter()
        .filter(|c| !c.success_response)
        .map(|c| c.name)
        .collect();
    assert_eq!(
        silent,
        [
            "guest-shutdown",
            "guest-suspend-disk",
            "guest-suspend-ram",
            "guest-suspend-hybrid"
        ]
    );
}

#[test]
fn union_replies_carry_their_type_tag() {
    let stats = GuestCpuStats::Linux(GuestLinuxCpuStats {
        cpu: 1,
        user: 2,
        iowait: Some(3),
        ..Default::default()
    });
    let json = serde_json::to_value(stats).unwrap();
    assert_eq!(json["type"], "linux");
    assert_eq!(json["iowait"], 3);
    assert!(json.get("steal").is_none());
    let back: GuestCpuStats = serde_json::from_value(json).unwrap();
    assert_eq!(back, stats);
    let reply = r#"{"type":"nvme","critical-warning":0,"temperature":300,"available-spare":100,"available-spare-threshold":10,"percentage-used":0,"data-units-read-lo":1,"data-units-read-hi":0,"data-units-written-lo":2,"data-units-written-hi":0,"host-read-commands-lo":3,"host-read-commands-hi":0,"host-write-commands-lo":4,"host-write-commands-hi":0,"controller-busy-time-lo":0,"controller-busy-time-hi":0,"power-cycles-lo":5,"power-cycles-hi":0,"power-on-hours-lo":6,"power-on-hours-hi":0,"unsafe-shutdowns-lo":0,"unsafe-shutdowns-hi":0,"media-errors-lo":0,"media-errors-hi":0,"number-of-error-log-entries-lo":0,"number-of-error-log-entries-hi":0}"#;
    let GuestDiskSmart::Nvme(s) = serde_json::from_str(reply).unwrap();
    assert_eq!((s.temperature, s.power_on_hours_lo), (300, 6));
}

/// guest-file-write's borrowed reading (the agent's hot path) answers every argument
/// text exactly as the typed one: the same error, or the same handle, count and
/// decoded payload.
#[test]
fn borrowed_write_arguments_agree_with_the_typed_ones() {
    let cases = [
        r#"{"handle":1000,"buf-b64":"aGVsbG8="}"#,
        r#"{"buf-b64":"aGVsbG8","handle":1000,"count":2}"#,
        r#"{"handle":1000,"buf-b64":"aGVs\nbG8=\n"}"#,
        r#"{"handle":1000,"buf-b64":"aGVs\/bG8="}"#,
        r#"{"handle":1000,"buf-b64":"a\u0047Vs"}"#,
        r#"{"handle":1000,"buf-b64":"aGV sbG8="}"#,
        r#"{"handle":1000,"buf-b64":"aGVs!"}"#,
        r#"{"handle":1000,"buf-b64":"aGVs=bG8"}"#,
        r#"{"handle":1000,"buf-b64":""}"#,
        r#"{"handle":1000,"buf-b64":5}"#,
        r#"{"handle":1000,"buf-b64":null}"#,
        r#"{"handle":"1000","buf-b64":"!!"}"#,
        r#"{"handle":1.5,"buf-b64":"aGk="}"#,
        r#"{"buf-b64":"aGk="}"#,
        r#"{"handle":1000}"#,
        r#"{"handle":1000,"buf-b64":"!!","count":"x"}"#,
        r#"{"handle":1000,"buf-b64":"aGk=","count":"x"}"#,
        r#"{"handle":1000,"buf-b64":"aGk=","count":null}"#,
        r#"{"handle":1000,"buf-b64":"!!","extra":1}"#,
        r#"{"handle":1000,"buf-b64":"aGk=","extra":1,"more":2}"#,
        r#"{"handle":1000,"buf-b64":"aGk=","count":-1}"#,
        r#"{"handle":1000,"buf-b64":"aGk=","handle":1001}"#,
        r#"{}"#,
        r#"[]"#,
        " { \"handle\" : 1000 ,\n\t\"buf-b64\" : \"aGk=\" , \"count\" : 1 } ",
        r#"{"handle":1000,"buf-b64":"aGk=","x":{"a":[1,{"b":"}]\""}]},"y":"\"}"}"#,
        r#"{"handle":1000,"buf-b64":"aGk=","count":1e3}"#,
        r#"{"handle":-0,"buf-b64":"aGk=","count":-5}"#,
        r#"{"hand\u006ce":1000,"buf-b64":"aGk="}"#,
        r#"{"handle":1000,"buf-b64":"aGk=","x":"\ud800"}"#,
        r#"{"handle":1000,"buf-b64":"aGk=","x":{"a":1,"a":2}}"#,
        r#"{"handle":1000,"buf-b64":"aGk=","count":true}"#,
        r#"{"handle":1000,"buf-b64":"aGk=","":1}"#,
    ];
    for text in cases {
        let r = raw(text);
        let typed = GuestFileWrite::from_arguments(Some(&r));
        let borrowed = GuestFileWrite::borrowed_arguments(Some(&r));
        match (typed, borrowed) {
            (Ok(t), Ok(b)) => {
                assert_eq!((t.handle, t.count), (b.handle, b.count), "{text}");
                assert_eq!(t.buf_b64.0, b.buf_b64.into_vec(), "{text}");
            }
            (Err(t), Err(b)) => assert_eq!(t, b, "{text}"),
            (t, b) => panic!("{text}: typed {t:?}, borrowed {b:?}"),
        }
    }
    assert_eq!(
        GuestFileWrite::borrowed_arguments(None).unwrap_err(),
        GuestFileWrite::from_arguments(None).unwrap_err()
    );
}
