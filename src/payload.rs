//! The merchant's payment body as paygate reads it and forwards it: parsed once into its
//! top-level fields, each value kept as the raw JSON text the merchant sent.
//!
//! Owns the promise that pass-through is exact: a value paygate does not read (metadata, an
//! integer beyond 64 bits, a float with twenty digits) reaches the PSP byte for byte, because
//! it is never turned into a number and back. Also owns the edge rules of the body itself:
//! an object, no key twice (paygate and the PSP must not read different values of one field),
//! and no `paygate_id` (the PSP-side identity is paygate's alone). Error messages name the
//! rule, the line and the column, never a value: a body may be a bare card number.
//!
//! Must not interpret fields beyond [`RawField`] access; what `amount` or `card` mean is the
//! payment handler's business.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The field paygate adds for the PSP; a merchant body carrying it is refused.
pub const RESERVED_FIELD: &str = "paygate_id";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("the body is not valid JSON (line {line}, column {column})")]
    Syntax { line: usize, column: usize },
    #[error("the body must be a JSON object")]
    NotAnObject,
    #[error("{0} appears more than once in the body")]
    Duplicate(String),
    #[error("paygate_id is reserved: paygate sets it for the PSP")]
    Reserved,
}

/// One top-level field: its name (unescaped) and its value as sent.
pub type RawField<'a> = (Cow<'a, str>, &'a RawValue);

/// A payment body: its top-level fields in the order they were sent.
#[derive(Debug)]
pub struct PaymentBody<'a> {
    fields: Vec<RawField<'a>>,
}

impl<'a> PaymentBody<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, PayloadError> {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let fields = deserializer
            .deserialize_any(FieldsVisitor)
            .and_then(|fields| deserializer.end().map(|()| fields))
            .map_err(|e| match e.classify() {
                serde_json::error::Category::Data => PayloadError::NotAnObject,
                _ => PayloadError::Syntax {
                    line: e.line(),
                    column: e.column(),
                },
            })?;
        for (index, (name, _)) in fields.iter().enumerate() {
            if name == RESERVED_FIELD {
                return Err(PayloadError::Reserved);
            }
            if fields[..index].iter().any(|(earlier, _)| earlier == name) {
                return Err(PayloadError::Duplicate(printable_name(name)));
            }
        }
        Ok(Self { fields })
    }

    /// The raw value of a top-level field.
    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| *value)
    }

    /// The body with `paygate_id` appended, every value written as it was received.
    pub fn with_paygate_id(&self, paygate_id: &str) -> Result<Vec<u8>, serde_json::Error> {
        let size = self
            .fields
            .iter()
            .map(|(name, value)| name.len() + value.get().len() + 4)
            .sum::<usize>();
        let mut out = Vec::with_capacity(size + paygate_id.len() + 20);
        out.push(b'{');
        for (name, value) in &self.fields {
            serde_json::to_writer(&mut out, name.as_ref())?;
            out.push(b':');
            out.extend_from_slice(value.get().as_bytes());
            out.push(b',');
        }
        serde_json::to_writer(&mut out, RESERVED_FIELD)?;
        out.push(b':');
        serde_json::to_writer(&mut out, paygate_id)?;
        out.push(b'}');
        Ok(out)
    }
}

/// A field name is the merchant's own text, but a short word that starts with a letter and
/// holds at most three digits is a field name, not data (a card number is neither); anything
/// else is not repeated.
fn printable_name(name: &str) -> String {
    let plain = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.bytes().filter(u8::is_ascii_digit).count() <= 3
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        name.to_string()
    } else {
        "a field".to_string()
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Vec<RawField<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some((Key(name), value)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
            fields.push((name, value));
        }
        Ok(fields)
    }
}

/// A field name, borrowed from the body unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(body: &str) -> String {
        let parsed = PaymentBody::parse(body.as_bytes()).unwrap();
        String::from_utf8(parsed.with_paygate_id("pay_1").unwrap()).unwrap()
    }

    #[test]
    fn values_pass_through_byte_for_byte() {
        let body = r#"{"amount":1999,"metadata":{"big":123456789012345678901234567890,"f":0.10000000000000000001, "s":"\u00e9"}}"#;
        assert_eq!(
            forwarded(body),
            r#"{"amount":1999,"metadata":{"big":123456789012345678901234567890,"f":0.10000000000000000001, "s":"\u00e9"},"paygate_id":"pay_1"}"#
        );
        assert_eq!(forwarded("{}"), r#"{"paygate_id":"pay_1"}"#);
        // Found by the fuzzer: valid JSON that no f64 holds still goes through as sent.
        assert_eq!(
            forwarded(r#"{"n":1e999,"m":-0.0e-999}"#),
            r#"{"n":1e999,"m":-0.0e-999,"paygate_id":"pay_1"}"#
        );
        assert_eq!(
            forwarded(r#"{"a\"b":1}"#),
            r#"{"a\"b":1,"paygate_id":"pay_1"}"#
        );
    }

    #[test]
    fn errors_never_quote_the_body() {
        for body in [
            "\"4111111111111111\"",
            "4111111111111111",
            "[\"4111111111111111\"]",
            "\"{\\\"card\\\":\\\"4111111111111111\\\"}\"",
            "{\"card\": 4111111111111111",
            "{\"4111111111111111\": 1, \"4111111111111111\": 2}",
            "{\"a\":1} 4111111111111111",
        ] {
            let error = PaymentBody::parse(body.as_bytes()).unwrap_err().to_string();
            assert!(!error.contains("4111"), "{body}: {error}");
        }
    }

    #[test]
    fn refuses_non_objects_duplicates_and_the_reserved_field() {
        let parse = |b: &str| PaymentBody::parse(b.as_bytes()).map(|_| ());
        assert_eq!(parse("[1]"), Err(PayloadError::NotAnObject));
        assert_eq!(parse("\"x\""), Err(PayloadError::NotAnObject));
        assert_eq!(
            parse(r#"{"amount":1,"amount":2}"#),
            Err(PayloadError::Duplicate("amount".into()))
        );
        assert_eq!(
            parse(r#"{"amount":1,"paygate_id":"pay_x"}"#),
            Err(PayloadError::Reserved)
        );
        assert!(matches!(parse("{"), Err(PayloadError::Syntax { .. })));
        assert!(matches!(parse("{} {}"), Err(PayloadError::Syntax { .. })));
    }
}
