//! One commit's worth of journal writes, as rows: what the writer took off its queue, with
//! each payment read once at its latest state, each key's last change, and the sweep. Both
//! backends (SQLite, PostgreSQL) write a `Rows` in one transaction; this module owns only
//! the gathering, never a database.

use std::collections::HashMap;

use tokio::sync::oneshot;

use super::super::idempotency::Scope;
use super::super::keys::KeyRecord;
use super::super::{MemoryStore, Payment, StoreError};

/// What the request path hands the writer.
pub enum Write {
    /// The payment's state at commit time is written; several writes of one payment that
    /// meet in a batch, or find it already committed, cost one row or none.
    Payment(String),
    Event(Event),
    Key(Scope, KeyRecord),
    /// A key whose record the journal holds as it stands: nothing to write, memory lets it
    /// go once what was queued before is committed.
    KeyKept(Scope),
    /// Deletes a key's record that holds no answer (its payment failed, nothing charged).
    FreeKey(Scope),
    /// Deletes idempotency records expired by then (ms since the Unix epoch).
    SweepKeys(u64),
    /// Acknowledged once every write before it is committed.
    Barrier(oneshot::Sender<Result<(), StoreError>>),
}

/// A channel event (ejection, drain, enable, reload) for the daily report.
pub struct Event {
    /// Unique (a ULID): a batch written again after a commit whose answer was lost (the
    /// database may have committed it) does not write the event twice.
    pub id: String,
    pub at_ms: u64,
    pub kind: String,
    pub channel: Option<String>,
    pub detail: String,
}

/// A payment as it is written.
pub struct PaymentRow {
    pub payment: Payment,
    /// The journal has an earlier state of it (a commit of it succeeded before).
    pub stored: bool,
}

/// A batch as rows, in the order the tables are written.
#[derive(Default)]
pub struct Rows<'a> {
    /// Each payment once, at its latest state.
    pub payments: Vec<PaymentRow>,
    pub events: Vec<&'a Event>,
    /// Each key's last change in the batch: a record to keep, or None to free it.
    pub keys: Vec<(&'a Scope, Option<&'a KeyRecord>)>,
    /// Sweep the records expired by then.
    pub sweep_before_ms: Option<u64>,
}

impl<'a> Rows<'a> {
    /// Reads the batch's payments from memory (those not yet committed at their latest
    /// version) and keeps the last change of each key.
    pub fn gather(batch: &'a [Write], memory: &MemoryStore) -> Self {
        let mut rows = Rows::default();
        let mut seen = std::collections::HashSet::new();
        let mut keys: HashMap<&Scope, usize> = HashMap::new();
        for write in batch {
            match write {
                Write::Payment(id) => {
                    if !seen.insert(id.as_str()) {
                        continue;
                    }
                    if let Some((payment, stored)) = memory.unjournaled(id) {
                        rows.payments.push(PaymentRow { payment, stored });
                    }
                }
                Write::Event(event) => rows.events.push(event),
                Write::Key(scope, record) => rows.key(&mut keys, scope, Some(record)),
                Write::FreeKey(scope) => rows.key(&mut keys, scope, None),
                Write::SweepKeys(before) => {
                    rows.sweep_before_ms = rows.sweep_before_ms.max(Some(*before));
                }
                Write::KeyKept(_) | Write::Barrier(_) => {}
            }
        }
        rows
    }

    fn key(
        &mut self,
        index: &mut HashMap<&'a Scope, usize>,
        scope: &'a Scope,
        change: Option<&'a KeyRecord>,
    ) {
        match index.get(scope) {
            Some(&at) => self.keys[at].1 = change,
            None => {
                index.insert(scope, self.keys.len());
                self.keys.push((scope, change));
            }
        }
    }

    /// The payments written, with the version each was written at.
    pub fn written(&self) -> Vec<(String, u64)> {
        self.payments
            .iter()
            .map(|row| (row.payment.id.clone(), row.payment.version))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::Kept;

    fn record(target: &str) -> KeyRecord {
        KeyRecord {
            request_hash: [7; 32],
            kept: Kept::Made(target.into()),
            expires_at_ms: 10,
        }
    }

    #[test]
    fn a_key_keeps_its_last_change_and_a_payment_is_read_once() {
        let memory = MemoryStore::new();
        let (a, b) = (Scope::new("m", "a"), Scope::new("m", "b"));
        let batch = vec![
            Write::Key(a.clone(), record("pay_1")),
            Write::Key(b.clone(), record("pay_2")),
            Write::FreeKey(a.clone()),
            Write::SweepKeys(5),
            Write::Key(a.clone(), record("pay_3")),
            Write::SweepKeys(9),
            Write::Payment("pay_unknown".into()),
            Write::Payment("pay_unknown".into()),
        ];
        let rows = Rows::gather(&batch, &memory);
        let keys: Vec<(&Scope, Option<&Kept>)> = rows
            .keys
            .iter()
            .map(|(scope, change)| (*scope, change.map(|r| &r.kept)))
            .collect();
        assert_eq!(
            keys,
            vec![
                (&a, Some(&Kept::Made("pay_3".into()))),
                (&b, Some(&Kept::Made("pay_2".into())))
            ]
        );
        assert_eq!(rows.sweep_before_ms, Some(9));
        assert!(
            rows.payments.is_empty(),
            "an unknown payment writes nothing"
        );

        let freed = [
            Write::Key(a.clone(), record("pay_1")),
            Write::FreeKey(a.clone()),
        ];
        let rows = Rows::gather(&freed, &memory);
        assert!(matches!(rows.keys.as_slice(), [(scope, None)] if *scope == &a));
    }
}
