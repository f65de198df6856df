//! The three protocols the fan-out benchmark speaks, imd's lines, Redis
//! pub/sub (RESP) and NATS: what a publish, a subscription, a handshake and
//! a probe look like in each (the table is in [`super`]).

use serde::Serialize;

/// Which server protocol to speak.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Proto {
    /// imd's line protocol (PROTOCOL.md): every public line goes to everyone.
    #[value(name = "imd")]
    #[serde(rename = "imd")]
    Imchat,
    /// Redis pub/sub over RESP2: PUBLISH and SUBSCRIBE.
    #[value(name = "redis")]
    #[serde(rename = "redis")]
    Redis,
    /// NATS core: PUB and SUB.
    #[value(name = "nats")]
    #[serde(rename = "nats")]
    Nats,
}

impl Proto {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Imchat => "imd",
            Proto::Redis => "redis",
            Proto::Nats => "nats",
        }
    }

    /// The usual port of a server of this kind.
    pub fn default_port(self) -> u16 {
        match self {
            Proto::Imchat => 8000,
            Proto::Redis => 6379,
            Proto::Nats => 4222,
        }
    }

    /// Appends one publish of `payload` on `channel` to `out`.
    pub(super) fn publish(self, channel: &str, payload: &[u8], out: &mut Vec<u8>) {
        match self {
            Proto::Imchat => {
                out.extend_from_slice(payload);
                out.push(b'\n');
            }
            Proto::Redis => {
                out.extend_from_slice(b"*3\r\n$7\r\nPUBLISH\r\n");
                resp_bulk(channel.as_bytes(), out);
                resp_bulk(payload, out);
            }
            Proto::Nats => {
                out.extend_from_slice(format!("PUB {channel} {}\r\n", payload.len()).as_bytes());
                out.extend_from_slice(payload);
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// What a subscriber sends right after connecting.
    pub(super) fn subscriber_hello(self, channel: &str) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Proto::Imchat => {}
            Proto::Redis => {
                out.extend_from_slice(b"*2\r\n$9\r\nSUBSCRIBE\r\n");
                resp_bulk(channel.as_bytes(), &mut out);
            }
            Proto::Nats => {
                out.extend_from_slice(NATS_CONNECT);
                out.extend_from_slice(format!("SUB {channel} 1\r\nPING\r\n").as_bytes());
            }
        }
        out
    }

    /// What a responsiveness probe sends once connected, and the start of
    /// the line that answers it: `who` for imd (a new user's full round
    /// trip: accepted, welcomed, a command answered), PING for the others.
    pub(super) fn probe(self) -> (Vec<u8>, &'static [u8]) {
        match self {
            Proto::Imchat => (b"who\n".to_vec(), b"ok who:"),
            Proto::Redis => (b"*1\r\n$4\r\nPING\r\n".to_vec(), b"+PONG"),
            Proto::Nats => ([NATS_CONNECT, b"PING\r\n"].concat(), b"PONG"),
        }
    }

    /// What a publisher sends right after connecting: something that gets
    /// an answer, so that we know the server has taken the connection.
    pub(super) fn publisher_hello(self) -> Vec<u8> {
        match self {
            Proto::Imchat => Vec::new(),
            Proto::Redis => b"*1\r\n$4\r\nPING\r\n".to_vec(),
            Proto::Nats => [NATS_CONNECT, b"PING\r\n"].concat(),
        }
    }

    /// Whether `line` (without its line end) says the connection is ready:
    /// imd's welcome (any first line), Redis's `subscribe` confirmation or
    /// `+PONG`, NATS's `PONG`.
    pub(super) fn is_ready_line(self, line: &[u8], subscriber: bool) -> bool {
        match self {
            Proto::Imchat => true,
            Proto::Redis if subscriber => line == b"subscribe",
            Proto::Redis => line == b"+PONG",
            Proto::Nats => line == b"PONG",
        }
    }

    /// Whether `line` is the server telling why it is about to close the
    /// connection (kept as the disconnect reason).
    pub(super) fn is_error_line(self, line: &[u8]) -> bool {
        match self {
            Proto::Imchat => line.starts_with(b"*** bye"),
            Proto::Redis | Proto::Nats => line.starts_with(b"-ERR"),
        }
    }
}

pub(super) const NATS_CONNECT: &[u8] =
    b"CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false}\r\n";

pub(super) fn resp_bulk(data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("${}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::super::clients::payload;
    use super::*;

    #[test]
    fn publish_frames_are_exact_and_of_constant_length() {
        let msg = payload(2, 7, 1234, 64);
        assert_eq!(msg.len(), 64);
        let mut out = Vec::new();
        Proto::Redis.publish("bench", &msg, &mut out);
        let mut want = b"*3\r\n$7\r\nPUBLISH\r\n$5\r\nbench\r\n$64\r\n".to_vec();
        want.extend_from_slice(&msg);
        want.extend_from_slice(b"\r\n");
        assert_eq!(out, want);

        out.clear();
        Proto::Nats.publish("bench", &msg, &mut out);
        let mut want = b"PUB bench 64\r\n".to_vec();
        want.extend_from_slice(&msg);
        want.extend_from_slice(b"\r\n");
        assert_eq!(out, want);

        out.clear();
        Proto::Imchat.publish("bench", &msg, &mut out);
        assert_eq!(out, [msg.as_slice(), b"\n"].concat());

        // The publisher counts messages written by bytes / frame length.
        for proto in [Proto::Imchat, Proto::Redis, Proto::Nats] {
            let mut a = Vec::new();
            let mut b = Vec::new();
            proto.publish("bench", &payload(0, 0, 0, 100), &mut a);
            proto.publish("bench", &payload(9, 123456, 98765432, 100), &mut b);
            assert_eq!(a.len(), b.len(), "{proto:?}");
        }
    }
}
