//! How events look on stdout, and writing lines there.
//!
//! Human output is the server's own line (`<alice> hi`, `*bob* psst`,
//! `*** carol is online`): it is already readable, and it is what `nc`
//! shows. JSON output is one object per line with the same four
//! fields for every kind, `null` where a field does not apply:
//!
//! ```text
//! kind      from   to     text
//! public    NAME   null   TEXT        <NAME> TEXT
//! private   NAME   ME     TEXT        *NAME* TEXT (ME: our name)
//! online    NAME   null   null        *** NAME is online
//! offline   NAME   null   REASON      *** NAME is offline (REASON)
//! rename    OLD    NEW    null        *** OLD is now known as NEW
//! bye       null   null   REASON      *** bye: REASON
//! cluster   null   null   TEXT        *** cluster: TEXT
//! other     null   null   LINE        anything else, as received
//! ```
//!
//! Everything printed goes through [`visible`] first: imd already sends
//! user text in visible form, but imc may be pointed at another server, and
//! a terminal must never receive raw control characters from the network.

use std::io::{self, Write};

use serde::Serialize;

use crate::client::Event;
use crate::protocol::{visible, ServerLine};

/// One event as a JSON object (see the module docs for the fields).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct JsonEvent {
    pub kind: &'static str,
    pub from: Option<String>,
    pub to: Option<String>,
    pub text: Option<String>,
}

/// True for the events `listen --count` counts: public and private
/// messages. Presence notices are printed but not counted, so a script
/// waiting for N messages is not thrown off by people coming and going.
pub fn is_message(event: &Event) -> bool {
    matches!(
        event,
        Event::Line(ServerLine::Public { .. } | ServerLine::Private { .. })
    )
}

/// The event as one human-readable line (no `\n`), safe for a terminal.
pub fn human(event: &Event) -> String {
    match event {
        Event::Line(line) => {
            let text = line.encode();
            visible(text.trim_end_matches('\n')).into_owned()
        }
        Event::Raw(raw) => visible(raw).into_owned(),
    }
}

/// The event as a [`JsonEvent`]; `me` is our current name, the `to` of a
/// private message.
pub fn json_event(event: &Event, me: &str) -> JsonEvent {
    let v = |s: &str| Some(visible(s).into_owned());
    let (kind, from, to, text) = match event {
        Event::Line(ServerLine::Public { from, text }) => ("public", v(from), None, v(text)),
        Event::Line(ServerLine::Private { from, text }) => ("private", v(from), v(me), v(text)),
        Event::Line(ServerLine::Joined { name }) => ("online", v(name), None, None),
        Event::Line(ServerLine::Left { name, reason }) => ("offline", v(name), None, v(reason)),
        Event::Line(ServerLine::NameChanged { old, new }) => ("rename", v(old), v(new), None),
        Event::Line(ServerLine::Bye { reason }) => ("bye", None, None, v(reason)),
        Event::Line(ServerLine::Cluster { text }) => ("cluster", None, None, v(text)),
        other => ("other", None, None, Some(human(other))),
    };
    JsonEvent {
        kind,
        from,
        to,
        text,
    }
}

/// The event as one line of JSON (no `\n`).
pub fn json(event: &Event, me: &str) -> String {
    // Serializing a struct of strings cannot fail.
    serde_json::to_string(&json_event(event, me)).unwrap_or_default()
}

/// Writes one line to stdout and flushes it, so a reader at the other end
/// of a pipe sees each event as it arrives. A closed pipe comes back as a
/// `BrokenPipe` error, which `imc` turns into a quiet exit.
pub fn line(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_lines_are_the_server_lines_made_visible() {
        let ev = Event::Line(ServerLine::Public {
            from: "alice".into(),
            text: "hi".into(),
        });
        assert_eq!(human(&ev), "<alice> hi");
        assert_eq!(human(&Event::Raw("x\u{1b}[2Jy".into())), "x^[[2Jy");
    }

    /// The line parsed as JSON: what a consumer sees, whatever the key
    /// order or spacing (neither is promised).
    fn parsed(ev: &Event) -> serde_json::Value {
        let line = json(ev, "carol");
        assert!(!line.contains('\n'), "one line: {line:?}");
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn json_has_all_four_fields() {
        let ev = Event::Line(ServerLine::Private {
            from: "bob".into(),
            text: "psst".into(),
        });
        assert_eq!(
            parsed(&ev),
            serde_json::json!({"kind": "private", "from": "bob", "to": "carol", "text": "psst"})
        );
        let ev = Event::Line(ServerLine::Joined { name: "dan".into() });
        assert_eq!(
            parsed(&ev),
            serde_json::json!({"kind": "online", "from": "dan", "to": null, "text": null})
        );
    }
}
