//! The merchant body parser: never panics, never quotes a card number in an error, and what
//! it forwards to the PSP is a JSON object with the merchant's fields and one `paygate_id`.
#![no_main]

use libfuzzer_sys::fuzz_target;

const CARD: &str = "4111111111111111";

fuzz_target!(|data: &[u8]| {
    match paygate::api::read_payment(data) {
        Err(error) => {
            let message = error.to_string();
            assert!(!message.contains(CARD), "{message}");
        }
        Ok((body, _payment)) => {
            let forwarded = body.with_paygate_id("pay_fuzz").expect("serializable");
            // Raw values: a number beyond f64 (1e999) is valid JSON, forwarded as sent.
            let object: std::collections::HashMap<String, Box<serde_json::value::RawValue>> =
                serde_json::from_slice(&forwarded).expect("forwarded body is a JSON object");
            assert_eq!(object["paygate_id"].get(), "\"pay_fuzz\"");
        }
    }
});
