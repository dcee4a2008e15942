//! The `id` echo: qemu-ga 7.2 re-serialises the request's id, printing every number
//! that is a double with `%.17g`. Each expected text below is qemu-ga 7.2.22's reply
//! to `{"execute":"guest-ping","id":<sent>}`.

use qga_proto::{Request, Response};
use serde_json::Value;

/// The id text of our reply to a guest-ping carrying `id`.
fn echoed(id: &str) -> String {
    let msg = format!(r#"{{"execute":"guest-ping","id":{id}}}"#);
    let req = Request::parse(msg.as_bytes()).unwrap_or_else(|e| panic!("{msg}: {e}"));
    let reply = serde_json::to_string(&Response::ok(serde_json::json!({}), req.id)).unwrap();
    reply
        .strip_prefix(r#"{"return":{},"id":"#)
        .and_then(|r| r.strip_suffix('}'))
        .unwrap_or_else(|| panic!("reply shape: {reply}"))
        .to_owned()
}

#[test]
fn float_ids_are_echoed_as_qemu_ga_prints_them() {
    for (sent, want) in [
        ("1.0", "1"),
        ("1e2", "100"),
        ("0.1", "0.10000000000000001"),
        ("-0.0", "-0"),
        ("1e20", "1e+20"),
        ("1.5", "1.5"),
        ("12345678901234567890123", "1.2345678901234568e+22"),
        ("1e-7", "9.9999999999999995e-08"),
        ("1e16", "10000000000000000"),
        ("1e17", "1e+17"),
        ("-9223372036854775809", "-9.2233720368547758e+18"),
        ("18446744073709551616", "1.8446744073709552e+19"),
        ("1.00000762939453125", "1.0000076293945312"),
        ("5e-324", "4.9406564584124654e-324"),
        ("1e-5", "1.0000000000000001e-05"),
        ("2.5e15", "2500000000000000"),
        // The integer -0 is 0, the double -0.0 is -0.
        (r#"[-0,-0.0,"-0",{"a":-0}]"#, r#"[0,-0,"-0",{"a":0}]"#),
        ("-0.0e1", "-0"),
        // Inside arrays and objects too.
        (r#"[1.0,{"a":2e0}]"#, r#"[1,{"a":2}]"#),
    ] {
        assert_eq!(echoed(sent), want, "id {sent}");
    }
}

#[test]
fn integer_and_string_ids_are_echoed_unchanged() {
    for (sent, want) in [
        ("1", "1"),
        ("-0", "0"),
        ("123456789012345678", "123456789012345678"),
        ("18446744073709551615", "18446744073709551615"),
        ("-9223372036854775808", "-9223372036854775808"),
        (r#""abc""#, r#""abc""#),
        (r#"[1,{"a":null}]"#, r#"[1,{"a":null}]"#),
        // A `-0` inside a string is text, whatever escapes precede it.
        (r#"["a\"-0","\\",-0]"#, r#"["a\"-0","\\",0]"#),
    ] {
        assert_eq!(echoed(sent), want, "id {sent}");
    }
}

#[test]
fn a_float_id_nested_to_the_limit_is_echoed() {
    let depth = 1023;
    let id = format!("{}1.0{}", "[".repeat(depth), "]".repeat(depth));
    let want = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    // Serialising recurses once per level: give it the stack an agent thread has.
    let got = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || echoed(&id))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(got, want);
}

#[test]
fn echoed_float_ids_parse_back_to_the_same_number() {
    for sent in ["0.1", "1e20", "-0.0", "1e-7", "123.456", "6.02214076e23"] {
        let back: Value = serde_json::from_str(&echoed(sent)).unwrap();
        assert_eq!(back.as_f64(), sent.parse::<f64>().ok(), "id {sent}");
    }
}

proptest::proptest! {
    /// Long decimals parse to the nearest double (as qemu-ga's strtod), so their echo
    /// is the reference's: serde_json without `float_roundtrip` is one unit off for
    /// about one in six of these.
    #[test]
    fn long_decimal_ids_parse_to_the_nearest_double(
        digits in "[1-9][0-9]{14,20}",
        exp in -30i32..30,
    ) {
        let sent = format!("0.{digits}e{exp}");
        let req_text = format!(r#"{{"execute":"guest-ping","id":{sent}}}"#);
        let req = Request::parse(req_text.as_bytes()).unwrap();
        let id = req.id.unwrap();
        proptest::prop_assert_eq!(id.as_f64(), Some(sent.parse::<f64>().unwrap()));
    }
}
