//! `watch`: a namespace's bus messages, one line each, as they arrive.

use std::io::Write;

use futures::StreamExt;
use tiercache_core::backend::{BusEvent, Invalidation, MessageCodec, OriginSignal};

use crate::args::WatchArgs;
use crate::conn::Settings;
use crate::error::Error;
use crate::ops::{check_namespace, now_ms};
use crate::time::{local_now, span};

/// What one bus payload says, as `watch` prints it (without the time), or
/// `None` for a heartbeat or farewell when not `verbose`.
pub fn describe_message(
    codec: &MessageCodec,
    namespace: &str,
    payload: &[u8],
    verbose: bool,
    now_ms: u64,
) -> Option<String> {
    let msg: Invalidation = match codec.decode(payload) {
        Ok(m) => m,
        Err(e) => {
            return Some(format!(
                "dropped: {e} ({} bytes; a receiver counts it malformed)",
                payload.len()
            ));
        }
    };
    let origin = format!("origin={:016x} seq={}", msg.sender_instance, msg.seq);
    let ns = if msg.namespace == namespace {
        String::new()
    } else {
        format!(
            " namespace={:?} (not this one: receivers drop it)",
            msg.namespace
        )
    };
    match msg.signal() {
        OriginSignal::Heartbeat => return verbose.then(|| format!("heartbeat {origin}{ns}")),
        OriginSignal::Farewell => return verbose.then(|| format!("farewell  {origin}{ns}")),
        OriginSignal::Changes => {}
    }
    let lag = if msg.source_time_ms == 0 {
        "?".to_owned()
    } else {
        span(i128::from(now_ms) - i128::from(msg.source_time_ms))
    };
    let what = match msg.clear {
        Some(c) => format!(
            "clear={} epoch={} floor={}",
            if c.hard { "hard" } else { "soft" },
            c.epoch,
            c.floor
        ),
        None => format!(
            "keys={:?} tags={:?} created={}",
            msg.keys, msg.tags, msg.created
        ),
    };
    Some(format!("message   {origin} {what} lag={lag}{ns}"))
}

/// `tiercache watch`: prints a line per message until ctrl-c, or until
/// `--count` lines were printed. Connection changes go to standard error.
///
/// # Errors
///
/// A setting is wrong, the bus cannot be reached, or the output closed.
pub async fn watch(args: WatchArgs, out: &mut dyn Write) -> Result<(), Error> {
    let ns = args.namespace.as_str();
    check_namespace(ns)?;
    let settings = Settings::resolve(&args.conn)?;
    let Some(bus) = settings.connect_bus().await? else {
        return Err(Error::setting(
            "--nats-url",
            "watch needs the bus: pass --nats-url or --redis-bus-url, or --config with a [bus] section",
        ));
    };
    let codec = settings.codec();
    let mut events = bus.subscribe(ns).await?;
    eprintln!("watching namespace {ns:?} on {} (ctrl-c to stop)", bus.url);
    if args.count == Some(0) {
        return Ok(());
    }
    let mut printed = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let ev = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            ev = events.next() => ev,
        };
        let line = match ev {
            None => {
                eprintln!("the subscription ended");
                return Ok(());
            }
            Some(BusEvent::Message(bytes)) => {
                describe_message(&codec, ns, &bytes, args.verbose, now_ms())
            }
            Some(BusEvent::Connected { resumed }) => {
                eprintln!(
                    "{} connected{}",
                    local_now(),
                    if resumed {
                        " (resumed: nothing missed)"
                    } else {
                        ""
                    }
                );
                None
            }
            Some(BusEvent::Disconnected) => {
                eprintln!("{} disconnected: messages may be missed", local_now());
                None
            }
            Some(BusEvent::Lost { count }) => Some(format!(
                "lost      {} message(s) dropped by the client (slow consumer)",
                if count == 0 {
                    "some".to_owned()
                } else {
                    count.to_string()
                }
            )),
            Some(_) => None,
        };
        if let Some(line) = line {
            writeln!(out, "{} {line}", local_now())?;
            out.flush()?;
            printed += 1;
            if args.count.is_some_and(|n| printed >= n) {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tiercache_core::backend::ClearNote;

    use super::*;

    #[test]
    fn lines() {
        let codec = MessageCodec::signed("k");
        let mut m = Invalidation::heartbeat(0xab, "ns", 3);
        m.keys = vec!["a".into()];
        m.tags = vec!["t".into()];
        m.source_time_ms = 1_000;
        let line = describe_message(&codec, "ns", &codec.encode(&m), false, 1_250).unwrap();
        assert_eq!(
            line,
            "message   origin=00000000000000ab seq=3 keys=[\"a\"] tags=[\"t\"] created=false lag=250ms"
        );
        m.keys.clear();
        m.tags.clear();
        m.clear = Some(ClearNote {
            hard: false,
            epoch: 4,
            floor: 2,
        });
        let line = describe_message(&codec, "ns", &codec.encode(&m), false, 1_000).unwrap();
        assert!(
            line.contains("clear=soft epoch=4 floor=2 lag=0ms"),
            "{line}"
        );
        let hb = Invalidation::heartbeat(1, "ns", 3);
        assert_eq!(
            describe_message(&codec, "ns", &codec.encode(&hb), false, 0),
            None
        );
        assert!(
            describe_message(&codec, "ns", &codec.encode(&hb), true, 0)
                .unwrap()
                .starts_with("heartbeat")
        );
        let bad = MessageCodec::signed("other").encode(&hb);
        let line = describe_message(&codec, "ns", &bad, false, 0).unwrap();
        assert!(line.starts_with("dropped: "), "{line}");
        assert!(
            describe_message(&codec, "ns", b"garbage", false, 0)
                .unwrap()
                .starts_with("dropped: ")
        );
    }
}
