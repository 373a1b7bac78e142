//! The rule index: finds the first rule that matches a payment without scanning the rules.
//!
//! Each rule is filed under every combination of the values it lists for merchant, currency,
//! method and country, with "any" in the fields it leaves open. The fields a rule leaves open
//! form its *shape*; a file has at most 16 shapes, whatever its size. A lookup builds one key
//! per shape present, takes each key's rule list (ascending, so first-match order holds), and
//! keeps the lowest rule whose amount range contains the payment. Its cost grows with the
//! number of shapes, not of rules. Built once per config load; never mutated after.

use rustc_hash::FxHashMap;

use super::PaymentFacts;
use crate::config::Rule;

/// The field value stands for "any" in a key.
const ANY: u32 = u32::MAX;
/// A payment's value that no rule names: it can only meet "any".
const UNKNOWN: u32 = u32::MAX - 1;
const FIELDS: usize = 4;

#[derive(Debug, Default)]
pub struct RuleIndex {
    /// Value interners, one per field: merchant, currency, method, country.
    values: [FxHashMap<String, u32>; FIELDS],
    /// Rule numbers (ascending) filed under each key.
    entries: FxHashMap<[u32; FIELDS], Vec<u32>>,
    /// Shapes present in the file: bit i set when field i is named by the rule.
    shapes: Vec<u8>,
    /// Inclusive amount range of each rule.
    amounts: Vec<(u64, u64)>,
}

impl RuleIndex {
    pub fn build(rules: &[Rule]) -> Self {
        let mut index = RuleIndex::default();
        for (number, rule) in rules.iter().enumerate() {
            let m = &rule.matcher;
            let lists: [&[String]; FIELDS] =
                [&m.merchants, &m.currencies, &m.methods, &m.countries];
            let mut ids: [Vec<u32>; FIELDS] = Default::default();
            let mut shape = 0u8;
            for (field, list) in lists.iter().enumerate() {
                if list.is_empty() {
                    ids[field].push(ANY);
                    continue;
                }
                shape |= 1 << field;
                ids[field] = list.iter().map(|v| index.intern(field, v)).collect();
            }
            if !index.shapes.contains(&shape) {
                index.shapes.push(shape);
            }
            index.amounts.push((m.min_amount, m.max_amount));
            index.file(number as u32, &ids);
        }
        index.shapes.sort_unstable();
        index
    }

    fn intern(&mut self, field: usize, value: &str) -> u32 {
        let next = self.values[field].len() as u32;
        *self.values[field].entry(value.to_string()).or_insert(next)
    }

    /// Files rule `number` under the cartesian product of its field values.
    fn file(&mut self, number: u32, ids: &[Vec<u32>; FIELDS]) {
        for &a in &ids[0] {
            for &b in &ids[1] {
                for &c in &ids[2] {
                    for &d in &ids[3] {
                        // Rules are filed in order, so each list stays ascending.
                        self.entries.entry([a, b, c, d]).or_default().push(number);
                    }
                }
            }
        }
    }

    /// The number of the first rule matching `payment`.
    pub fn first_match(&self, payment: &PaymentFacts<'_>) -> Option<usize> {
        let value = |field: usize, v: Option<&str>| {
            v.and_then(|v| self.values[field].get(v).copied())
                .unwrap_or(UNKNOWN)
        };
        let ids = [
            value(0, Some(payment.merchant)),
            value(1, Some(payment.currency)),
            value(2, Some(payment.method)),
            value(3, payment.country),
        ];
        let mut best: Option<u32> = None;
        for &shape in &self.shapes {
            let Some(key) = key_for(shape, &ids) else {
                continue;
            };
            let Some(numbers) = self.entries.get(&key) else {
                continue;
            };
            for &number in numbers {
                if best.is_some_and(|b| number >= b) {
                    break;
                }
                let (low, high) = self.amounts[number as usize];
                if (low..=high).contains(&payment.amount) {
                    best = Some(number);
                    break;
                }
            }
        }
        best.map(|b| b as usize)
    }
}

/// The key a payment's values make under `shape`, or none when a named field is unknown.
fn key_for(shape: u8, ids: &[u32; FIELDS]) -> Option<[u32; FIELDS]> {
    let mut key = [ANY; FIELDS];
    for field in 0..FIELDS {
        if shape & (1 << field) == 0 {
            continue;
        }
        if ids[field] == UNKNOWN {
            return None;
        }
        key[field] = ids[field];
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Match, Strategy};

    fn rule(name: &str, merchants: &[&str], currencies: &[&str], amounts: (u64, u64)) -> Rule {
        let owned = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        Rule {
            name: name.into(),
            channels: vec![0],
            strategy: Strategy::Priority,
            matcher: Match {
                merchants: owned(merchants),
                currencies: owned(currencies),
                methods: Vec::new(),
                countries: Vec::new(),
                min_amount: amounts.0,
                max_amount: amounts.1,
            },
        }
    }

    fn facts<'a>(merchant: &'a str, currency: &'a str, amount: u64) -> PaymentFacts<'a> {
        PaymentFacts {
            merchant,
            currency,
            method: "card",
            country: Some("DE"),
            amount,
        }
    }

    /// The index must agree with the obvious linear scan.
    fn linear(rules: &[Rule], p: &PaymentFacts<'_>) -> Option<usize> {
        rules.iter().position(|r| {
            let m = &r.matcher;
            let ok = |l: &[String], v: Option<&str>| {
                l.is_empty() || v.is_some_and(|v| l.iter().any(|x| x == v))
            };
            ok(&m.merchants, Some(p.merchant))
                && ok(&m.currencies, Some(p.currency))
                && ok(&m.methods, Some(p.method))
                && ok(&m.countries, p.country)
                && (m.min_amount..=m.max_amount).contains(&p.amount)
        })
    }

    #[test]
    fn first_match_wins_across_shapes() {
        let rules = vec![
            rule("small-eur", &[], &["EUR"], (1, 100)),
            rule("shop-a", &["a"], &[], (1, u64::MAX)),
            rule("eur", &[], &["EUR", "USD"], (1, u64::MAX)),
            rule("rest", &[], &[], (1, u64::MAX)),
        ];
        let index = RuleIndex::build(&rules);
        assert_eq!(index.first_match(&facts("a", "EUR", 50)), Some(0));
        assert_eq!(index.first_match(&facts("a", "EUR", 500)), Some(1));
        assert_eq!(index.first_match(&facts("b", "USD", 500)), Some(2));
        assert_eq!(index.first_match(&facts("b", "GBP", 500)), Some(3));
        assert_eq!(index.first_match(&facts("zzz", "XXX", 0)), None);
    }

    #[test]
    fn agrees_with_a_linear_scan() {
        let merchants = ["a", "b", "c", "d"];
        let currencies = ["EUR", "USD", "GBP"];
        let mut rules = Vec::new();
        for (i, m) in merchants.iter().enumerate() {
            for (j, c) in currencies.iter().enumerate() {
                let low = (i * 10 + j) as u64;
                rules.push(rule("r", &[m], &[c], (low, low + 25)));
                rules.push(rule("r", &[], &[c], (low + 50, low + 60)));
            }
        }
        rules.push(rule("r", &["b"], &[], (1, u64::MAX)));
        let index = RuleIndex::build(&rules);
        for m in merchants.iter().chain(["zz"].iter()) {
            for c in currencies.iter().chain(["JPY"].iter()) {
                for amount in 0..100 {
                    let p = facts(m, c, amount);
                    assert_eq!(
                        index.first_match(&p),
                        linear(&rules, &p),
                        "{m} {c} {amount}"
                    );
                }
            }
        }
    }
}
