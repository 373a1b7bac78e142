//! The shared record of drains and enables (cluster mode): a Redis hash `{prefix}channels`
//! holding each channel's last switch with its version, and the channel
//! `{prefix}channel-switches` on which every write is published, both done by one script so
//! that no replica can see the record without the message or the message without the record.
//!
//! A version is Redis' clock in microseconds, or the previous version plus one when that is
//! not larger: it grows with every write to a channel, and keeps growing when Redis restarts
//! empty, so a replica that applies only newer versions never undoes a later switch with an
//! earlier one.
//!
//! Owns the Redis side only: writing a switch, reading the whole record, and the subscription
//! connection (a dedicated one: a subscribed connection cannot carry other commands). Which
//! version a replica has applied, and what it does with a switch, is `crate::switches`'.

use std::time::Duration;

use redis::aio::{PubSubSink, PubSubStream};

use super::{Cluster, ClusterError};

/// KEYS[1] = the record (hash); ARGV = the channel, `drained` or `enabled`, when the operator
/// switched it (ms, the acting replica's clock), the acting replica, `1` to write only when
/// the record holds no switch made at or after that time (a switch that could not be shared
/// at once, pushed later), and the publication channel. Returns {1, record} when written,
/// {0, the record that was kept} otherwise.
pub(super) const SWITCH: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
local version = 0
if old then
  local v, at = string.match(old, '^(%d+):%a+:(%d+):')
  if v then
    version = tonumber(v)
    if ARGV[5] == '1' and tonumber(at) >= tonumber(ARGV[3]) then return {0, old} end
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if now > version then version = now else version = version + 1 end
local record = string.format('%.0f', version) .. ':' .. ARGV[2] .. ':' .. ARGV[3] .. ':' .. ARGV[4]
redis.call('HSET', KEYS[1], ARGV[1], record)
redis.call('PUBLISH', ARGV[6], record .. ':' .. ARGV[1])
return {1, record}
";

/// One channel's switch as the record holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub channel: String,
    pub drained: bool,
    /// Grows with every write to the channel (see the module doc).
    pub version: u64,
    /// When the operator switched it, on the acting replica's clock (ms since the epoch).
    pub at_ms: u64,
    /// The replica where the operator switched it.
    pub origin: String,
}

impl Record {
    /// A value of the hash: `version:state:at_ms:origin`.
    fn stored(channel: &str, value: &str) -> Option<Record> {
        let mut parts = value.splitn(4, ':');
        let version = parts.next()?.parse().ok()?;
        let drained = match parts.next()? {
            "drained" => true,
            "enabled" => false,
            _ => return None,
        };
        let at_ms = parts.next()?.parse().ok()?;
        let origin = parts.next()?.to_string();
        Some(Record {
            channel: channel.to_string(),
            drained,
            version,
            at_ms,
            origin,
        })
    }

    /// A published message: the stored value, then `:channel` (a channel name may hold `:`,
    /// an origin may not).
    fn published(payload: &str) -> Option<Record> {
        let (version, rest) = payload.split_once(':')?;
        let (state, rest) = rest.split_once(':')?;
        let (at_ms, rest) = rest.split_once(':')?;
        let (origin, channel) = rest.split_once(':')?;
        Record::stored(channel, &format!("{version}:{state}:{at_ms}:{origin}"))
    }
}

/// Whether a write replaces a switch made later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// An operator's switch, now: it replaces whatever the record holds.
    Now,
    /// A switch that could not be shared when it was made: written only when the record
    /// holds nothing made at or after it.
    IfLatest,
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// False when the record kept a later switch (`Write::IfLatest`).
    pub replaced: bool,
    /// The channel's record after the write.
    pub record: Record,
}

/// What the subscription received.
#[derive(Debug)]
pub enum Message {
    Switch(Record),
    /// Not a switch this version of paygate can read (logged by the caller, ignored).
    Unreadable,
}

/// This replica's subscription to the switches of every replica.
pub struct Subscription {
    sink: PubSubSink,
    stream: PubSubStream,
    timeout: Duration,
}

impl Subscription {
    /// The next switch published; None once the connection is lost (messages published from
    /// then on are not seen: subscribe again and read the whole record).
    pub async fn next(&mut self) -> Option<Message> {
        use futures_util::StreamExt;
        let message = self.stream.next().await?;
        let payload: Option<String> = message.get_payload().ok();
        Some(
            payload
                .as_deref()
                .and_then(Record::published)
                .map_or(Message::Unreadable, Message::Switch),
        )
    }

    /// Whether the connection still answers (a silent network drops no TCP connection).
    pub async fn ping(&mut self) -> Result<(), ClusterError> {
        tokio::time::timeout(self.timeout, self.sink.ping::<redis::Value>())
            .await
            .map_err(|_| ClusterError::Timeout(self.timeout))?
            .map(|_| ())
            .map_err(ClusterError::Redis)
    }
}

impl Cluster {
    /// This replica's name in the record (`origin`): unique per process.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    fn switches_key(&self) -> String {
        format!("{}channels", self.prefix)
    }

    fn switches_channel(&self) -> String {
        format!("{}channel-switches", self.prefix)
    }

    /// Writes `channel`'s switch, made at `at_ms` on this replica, and publishes it.
    pub async fn write_switch(
        &self,
        channel: &str,
        drained: bool,
        at_ms: u64,
        write: Write,
    ) -> Result<Written, ClusterError> {
        let mut invocation = self.switch.prepare_invoke();
        invocation
            .key(self.switches_key())
            .arg(channel)
            .arg(if drained { "drained" } else { "enabled" })
            .arg(at_ms)
            .arg(&self.replica)
            .arg(u8::from(write == Write::IfLatest))
            .arg(self.switches_channel());
        let (replaced, stored): (u8, String) = self.call(super::SWITCHES, invocation).await?;
        let record = Record::stored(channel, &stored).ok_or_else(|| unreadable(channel))?;
        Ok(Written {
            replaced: replaced == 1,
            record,
        })
    }

    /// Every channel's last switch (values this version cannot read are left out, logged).
    pub async fn read_switches(&self) -> Result<Vec<Record>, ClusterError> {
        let mut connection = self.connection.clone();
        let mut command = redis::cmd("HGETALL");
        command.arg(self.switches_key());
        let all: Vec<(String, String)> = tokio::time::timeout(
            self.timeout,
            command.query_async::<Vec<(String, String)>>(&mut connection),
        )
        .await
        .map_err(|_| ClusterError::Timeout(self.timeout))?
        .map_err(ClusterError::Redis)?;
        Ok(all
            .iter()
            .filter_map(|(channel, value)| {
                let record = Record::stored(channel, value);
                if record.is_none() {
                    tracing::warn!(%channel, "unreadable channel switch in Redis; ignored");
                }
                record
            })
            .collect())
    }

    /// A new subscription connection, subscribed: every switch published from the moment
    /// this returns is received.
    pub async fn subscribe_switches(&self) -> Result<Subscription, ClusterError> {
        let wait = self.timeout.max(Duration::from_secs(1));
        let subscribe = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(self.switches_channel()).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::time::timeout(wait, subscribe)
            .await
            .map_err(|_| ClusterError::Timeout(wait))?
            .map_err(ClusterError::Redis)?;
        let (sink, stream) = pubsub.split();
        Ok(Subscription {
            sink,
            stream,
            timeout: wait,
        })
    }
}

fn unreadable(channel: &str) -> ClusterError {
    ClusterError::Unreadable(format!("the switch record of channel {channel:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stored_and_published_switches() {
        let stored = Record::stored("psp:a", "1780000000000001:drained:1780000000000:01ABC")
            .expect("a record");
        assert_eq!(
            stored,
            Record {
                channel: "psp:a".into(),
                drained: true,
                version: 1_780_000_000_000_001,
                at_ms: 1_780_000_000_000,
                origin: "01ABC".into(),
            }
        );
        let published = Record::published("1780000000000001:drained:1780000000000:01ABC:psp:a");
        assert_eq!(published, Some(stored));
        let enabled = Record::stored("b", "7:enabled:5:R").expect("a record");
        assert!(!enabled.drained);
        for garbage in ["", "7", "x:drained:5:R", "7:paused:5:R", "7:enabled:soon:R"] {
            assert_eq!(Record::stored("b", garbage), None, "{garbage:?}");
        }
        assert_eq!(Record::published("7:enabled:5:R"), None, "no channel");
    }
}
