//! `application/x-www-form-urlencoded` bodies with bracketed keys (`metadata[order]=8812`),
//! as Stripe takes them. Owns the encoding only; which fields go in is the dialect's.

/// A form body built field by field, in order.
#[derive(Debug, Default)]
pub struct Form {
    body: String,
}

impl Form {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `key=value`, both percent-encoded (brackets included).
    pub fn field(&mut self, key: &str, value: &str) -> &mut Self {
        if !self.body.is_empty() {
            self.body.push('&');
        }
        encode(&mut self.body, key);
        self.body.push('=');
        encode(&mut self.body, value);
        self
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.body.into_bytes()
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_brackets_spaces_and_unicode() {
        let mut form = Form::new();
        form.field("amount", "1999")
            .field("metadata[order]", "a b&c=d")
            .field("metadata[name]", "é");
        assert_eq!(
            String::from_utf8(form.into_bytes()).unwrap(),
            "amount=1999&metadata%5Border%5D=a%20b%26c%3Dd&metadata%5Bname%5D=%C3%A9"
        );
    }
}
