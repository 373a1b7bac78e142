//! The PSP answer parser of every dialect: never panics on any status and body, and a
//! `succeeded` reply always carries a PSP reference.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paygate::upstream::{Call, Reply, dialect};

fuzz_target!(|data: &[u8]| {
    let [high, low, body @ ..] = data else {
        return;
    };
    // The first two bytes pick a status (100 to 599) and the call it answers.
    let code = u16::from_be_bytes([*high, *low]) % 500 + 100;
    let status = http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::OK);
    let first = *low;
    let calls = [
        Call::Status { psp_reference: None },
        Call::Status { psp_reference: Some("r-1") },
        Call::Capture { psp_reference: "r-1", amount: 5 },
    ];
    let call = &calls[usize::from(first) % calls.len()];
    let protocol = dialect(paygate::config::Protocol::PaygateV1);
    if let Reply::Succeeded { psp_reference } = protocol.reply(call, status, body) {
        assert!(status.is_success());
        let _ = psp_reference;
    }
});
