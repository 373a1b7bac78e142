//! What the real PSP dialects read from a merchant's payment body: amount, currency, capture,
//! the card or the PSP token that pays, the reference and metadata. The payments handler
//! has validated amount, currency and capture already; this module only reads them.
//!
//! Card data read here goes into the PSP request and nowhere else: errors name the field,
//! never its value.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
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
        let metadata = match payment.get("metadata") {
            Some(raw) if raw.get() != "null" => {
                let fields: BTreeMap<String, &RawValue> = serde_json::from_str(raw.get())
                    .map_err(|_| ProtocolError("metadata must be an object".into()))?;
                fields
                    .into_iter()
                    .map(|(key, value)| {
                        let text = serde_json::from_str::<String>(value.get())
                            .unwrap_or_else(|_| value.get().to_string());
                        (key, text)
                    })
                    .collect()
            }
            _ => Vec::new(),
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

/// The card fields paygate reads; merchants send the expiry (and sometimes the number) as
/// strings or numbers alike.
#[derive(Deserialize)]
struct RawCard<'a> {
    #[serde(borrow, default)]
    number: Option<Text<'a>>,
    #[serde(borrow, default)]
    exp_month: Option<Text<'a>>,
    #[serde(borrow, default)]
    exp_year: Option<Text<'a>>,
    #[serde(borrow, default)]
    cvc: Option<Text<'a>>,
    #[serde(borrow, default)]
    holder_name: Option<Text<'a>>,
    #[serde(borrow, default)]
    name: Option<Text<'a>>,
}

/// A JSON string or number, as text.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for TextVisitor<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
        }
        deserializer.deserialize_any(TextVisitor(std::marker::PhantomData))
    }
}

fn card(raw: Option<&RawValue>) -> Result<Option<Card>, ProtocolError> {
    let Some(raw) = raw.filter(|raw| raw.get() != "null") else {
        return Ok(None);
    };
    let card: RawCard<'_> = serde_json::from_str(raw.get())
        .map_err(|_| ProtocolError("card must be an object of strings and numbers".into()))?;
    let text = |field: Option<Text<'_>>| field.map(|t| t.0.into_owned());
    let number = |field: Option<&Text<'_>>| field.and_then(|t| t.0.parse::<u32>().ok());
    let invalid = |field: &str| ProtocolError(format!("card.{field} is missing or not a number"));
    Ok(Some(Card {
        exp_month: number(card.exp_month.as_ref()).ok_or_else(|| invalid("exp_month"))?,
        exp_year: number(card.exp_year.as_ref()).ok_or_else(|| invalid("exp_year"))?,
        number: text(card.number).ok_or_else(|| invalid("number"))?,
        cvc: text(card.cvc),
        holder_name: text(card.holder_name).or_else(|| text(card.name)),
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
