//! What the real PSP dialects read from a merchant's payment body: amount, currency, capture,
//! the card or the PSP token that pays, the reference and metadata. The payments handler
//! has validated amount, currency and capture already; this module only reads them.
//!
//! Card data read here goes into the PSP request and nowhere else: errors name the field,
//! never its value.

use serde_json::Value;
use serde_json::value::RawValue;

use super::protocol::ProtocolError;
use crate::payload::PaymentBody;

/// The card as the merchant sent it.
pub struct Card {
    pub number: String,
    pub exp_month: u32,
    pub exp_year: u32,
    pub cvc: Option<String>,
    pub holder_name: Option<String>,
}

/// The facts of a payment that a PSP's own request is built from.
pub struct Order<'a> {
    pub amount: u64,
    /// ISO 4217, as sent (capitals).
    pub currency: String,
    pub country: Option<String>,
    pub capture: bool,
    pub reference: Option<String>,
    /// Where a shopper returns after a redirect (3-D Secure).
    pub return_url: Option<String>,
    /// The merchant's `metadata` object: string values as they are, others as JSON text.
    pub metadata: Vec<(String, String)>,
    pub card: Option<Card>,
    /// `payment_method`: a PSP token (Stripe `pm_...`) or object (Adyen `paymentMethod`)
    /// the merchant passes through instead of card data.
    pub payment_method: Option<&'a RawValue>,
}

impl<'a> Order<'a> {
    pub fn read(payment: &PaymentBody<'a>) -> Result<Self, ProtocolError> {
        let amount =
            parse::<u64>(payment.get("amount"), "amount")?.ok_or_else(|| missing("amount"))?;
        let currency = parse::<String>(payment.get("currency"), "currency")?
            .ok_or_else(|| missing("currency"))?;
        let metadata = match parse::<Value>(payment.get("metadata"), "metadata")? {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(fields)) => fields
                .into_iter()
                .map(|(key, value)| match value {
                    Value::String(text) => (key, text),
                    other => (key, other.to_string()),
                })
                .collect(),
            Some(_) => return Err(ProtocolError("metadata must be an object".into())),
        };
        Ok(Self {
            amount,
            currency,
            country: parse(payment.get("country"), "country")?,
            capture: parse(payment.get("capture"), "capture")?.unwrap_or(false),
            reference: parse(payment.get("reference"), "reference")?,
            return_url: parse(payment.get("return_url"), "return_url")?,
            metadata,
            card: card(payment.get("card"))?,
            payment_method: payment.get("payment_method"),
        })
    }

    /// The card, or the reason this PSP cannot be paid without one.
    pub fn card(&self) -> Result<&Card, ProtocolError> {
        self.card.as_ref().ok_or_else(|| {
            ProtocolError("the payment has neither card nor payment_method for this PSP".into())
        })
    }
}

fn missing(field: &str) -> ProtocolError {
    ProtocolError(format!("{field} is missing"))
}

fn parse<T: serde::de::DeserializeOwned>(
    raw: Option<&RawValue>,
    field: &str,
) -> Result<Option<T>, ProtocolError> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => serde_json::from_str(raw.get())
            .map(Some)
            .map_err(|_| ProtocolError(format!("{field} has the wrong type for this PSP"))),
    }
}

fn card(raw: Option<&RawValue>) -> Result<Option<Card>, ProtocolError> {
    let Some(Value::Object(card)) = parse::<Value>(raw, "card")? else {
        return Ok(None);
    };
    let text = |name: &str| match card.get(name) {
        Some(Value::String(text)) => Some(text.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let number = |name: &str| text(name).and_then(|t| t.parse::<u32>().ok());
    let invalid = |field: &str| ProtocolError(format!("card.{field} is missing or not a number"));
    Ok(Some(Card {
        number: text("number").ok_or_else(|| invalid("number"))?,
        exp_month: number("exp_month").ok_or_else(|| invalid("exp_month"))?,
        exp_year: number("exp_year").ok_or_else(|| invalid("exp_year"))?,
        cvc: text("cvc"),
        holder_name: text("holder_name").or_else(|| text("name")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_order_without_quoting_card_data() {
        let body = br#"{"amount":1999,"currency":"EUR","capture":true,"reference":"o-1",
            "card":{"number":"4111111111111111","exp_month":3,"exp_year":"2030","cvc":"737"},
            "metadata":{"cart":"c-9","items":3}}"#;
        let payment = PaymentBody::parse(body).unwrap();
        let order = Order::read(&payment).unwrap();
        assert_eq!((order.amount, order.currency.as_str()), (1999, "EUR"));
        assert!(order.capture);
        let card = order.card().unwrap();
        assert_eq!((card.exp_month, card.exp_year), (3, 2030));
        assert_eq!(
            order.metadata,
            vec![("cart".into(), "c-9".into()), ("items".into(), "3".into())]
        );
        let bad = PaymentBody::parse(br#"{"amount":5,"currency":"EUR","card":{"number":"4111111111111111","exp_month":"x","exp_year":2030}}"#).unwrap();
        let error = Order::read(&bad).err().unwrap().to_string();
        assert!(
            error.contains("exp_month") && !error.contains("4111"),
            "{error}"
        );
    }
}
