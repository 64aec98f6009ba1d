//! The gateway's packets, read and written by hand. Engine.IO v4: one packet per WebSocket
//! text frame, a type digit then the data. Socket.IO v5 inside Engine.IO message packets
//! (`4`): `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]`.

use corral_core::SandboxState;

use super::{MAX_PAYLOAD, SandboxEvent, Timing};
use crate::wire::SandboxDto;

/// A packet that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("empty packet")]
    Empty,
    #[error("unknown Engine.IO packet type {0:?}")]
    EngineType(char),
    #[error("unknown Socket.IO packet type {0:?}")]
    SocketType(char),
    #[error("the namespace is not followed by a comma")]
    Namespace,
}

/// An Engine.IO packet from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnginePacket<'a> {
    Open,
    Close,
    /// A ping with its data (`probe` during upgrades).
    Ping(&'a str),
    Pong(&'a str),
    /// A Socket.IO packet.
    Message(&'a str),
    Upgrade,
    Noop,
}

impl<'a> EnginePacket<'a> {
    pub fn parse(text: &'a str) -> Result<Self, PacketError> {
        let mut chars = text.chars();
        let kind = chars.next().ok_or(PacketError::Empty)?;
        let data = chars.as_str();
        Ok(match kind {
            '0' => Self::Open,
            '1' => Self::Close,
            '2' => Self::Ping(data),
            '3' => Self::Pong(data),
            '4' => Self::Message(data),
            '5' => Self::Upgrade,
            '6' => Self::Noop,
            other => return Err(PacketError::EngineType(other)),
        })
    }
}

/// Socket.IO packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

/// A Socket.IO packet from a client; `data` is the JSON payload as sent, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketPacket<'a> {
    pub kind: SocketKind,
    pub namespace: &'a str,
    pub data: Option<&'a str>,
}

impl<'a> SocketPacket<'a> {
    pub fn parse(text: &'a str) -> Result<Self, PacketError> {
        let mut chars = text.chars();
        let kind = match chars.next().ok_or(PacketError::Empty)? {
            '0' => SocketKind::Connect,
            '1' => SocketKind::Disconnect,
            '2' => SocketKind::Event,
            '3' => SocketKind::Ack,
            '4' => SocketKind::ConnectError,
            '5' => SocketKind::BinaryEvent,
            '6' => SocketKind::BinaryAck,
            other => return Err(PacketError::SocketType(other)),
        };
        let mut rest = chars.as_str();
        if matches!(kind, SocketKind::BinaryEvent | SocketKind::BinaryAck)
            && let Some((count, after)) = rest.split_once('-')
            && !count.is_empty()
            && count.bytes().all(|b| b.is_ascii_digit())
        {
            rest = after;
        }
        let mut namespace = "/";
        if rest.starts_with('/') {
            match rest.split_once(',') {
                Some((ns, after)) => {
                    namespace = ns;
                    rest = after;
                }
                // `41/admin` has no payload, hence no comma.
                None if !rest.contains(['{', '[']) => {
                    namespace = rest;
                    rest = "";
                }
                None => return Err(PacketError::Namespace),
            }
        }
        let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        Ok(Self {
            kind,
            namespace,
            data: (!rest.is_empty()).then_some(rest),
        })
    }
}

/// The Engine.IO open packet.
pub fn open_packet(sid: &str, timing: &Timing) -> String {
    let body = serde_json::json!({
        "sid": sid,
        "upgrades": [],
        "pingInterval": timing.ping_interval.as_millis() as u64,
        "pingTimeout": timing.ping_timeout.as_millis() as u64,
        "maxPayload": MAX_PAYLOAD,
    });
    format!("0{body}")
}

/// The namespace prefix of a Socket.IO packet (`/` is implied).
fn namespace_prefix(namespace: &str) -> String {
    if namespace == "/" {
        String::new()
    } else {
        format!("{namespace},")
    }
}

/// The frame of a Socket.IO CONNECT (accepted): an Engine.IO message (`4`) holding it.
pub fn connect_packet(sid: &str) -> String {
    format!("40{}", serde_json::json!({ "sid": sid }))
}

/// The frame of a Socket.IO CONNECT_ERROR.
pub fn connect_error_packet(namespace: &str, message: &str) -> String {
    format!(
        "44{}{}",
        namespace_prefix(namespace),
        serde_json::json!({ "message": message })
    )
}

/// The frame of a Socket.IO EVENT on the default namespace.
pub fn event_packet(name: &str, data: &serde_json::Value) -> String {
    format!("42{}", serde_json::json!([name, data]))
}

/// The packet a sandbox event becomes; `toolbox_url` goes into the sandbox DTO as in
/// `GET /api/sandbox/{id}`.
pub fn sandbox_event_packet(event: &SandboxEvent, toolbox_url: &str) -> String {
    match event {
        SandboxEvent::Created(s) => event_packet(
            "sandbox.created",
            &serde_json::json!({ "sandbox": SandboxDto::from_sandbox(s, toolbox_url, true) }),
        ),
        SandboxEvent::StateUpdated {
            id,
            old_state,
            new_state,
        } => event_packet(
            "sandbox.state.updated",
            &serde_json::json!({
                "sandbox": { "id": id, "state": new_state.as_str() },
                "oldState": old_state.map(SandboxState::as_str),
                "newState": new_state.as_str(),
            }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;

    use super::super::tests::{changed, json_of, sandbox};

    #[test]
    fn engine_packets_parse() {
        assert_eq!(
            EnginePacket::parse("2probe"),
            Ok(EnginePacket::Ping("probe"))
        );
        assert_eq!(EnginePacket::parse("3"), Ok(EnginePacket::Pong("")));
        assert_eq!(EnginePacket::parse("1"), Ok(EnginePacket::Close));
        assert_eq!(
            EnginePacket::parse("40{\"token\":\"k\"}"),
            Ok(EnginePacket::Message("0{\"token\":\"k\"}"))
        );
        assert_eq!(EnginePacket::parse(""), Err(PacketError::Empty));
        assert_eq!(EnginePacket::parse("9x"), Err(PacketError::EngineType('9')));
        assert_eq!(EnginePacket::parse("é"), Err(PacketError::EngineType('é')));
    }

    #[test]
    fn socket_packets_parse() {
        assert_eq!(
            SocketPacket::parse("0{\"token\":\"k\"}"),
            Ok(SocketPacket {
                kind: SocketKind::Connect,
                namespace: "/",
                data: Some("{\"token\":\"k\"}"),
            })
        );
        assert_eq!(
            SocketPacket::parse("0"),
            Ok(SocketPacket {
                kind: SocketKind::Connect,
                namespace: "/",
                data: None,
            })
        );
        assert_eq!(
            SocketPacket::parse("0/admin,{\"token\":\"k\"}"),
            Ok(SocketPacket {
                kind: SocketKind::Connect,
                namespace: "/admin",
                data: Some("{\"token\":\"k\"}"),
            })
        );
        assert_eq!(
            SocketPacket::parse("1/admin"),
            Ok(SocketPacket {
                kind: SocketKind::Disconnect,
                namespace: "/admin",
                data: None,
            })
        );
        assert_eq!(
            SocketPacket::parse("212[\"hello\",1]"),
            Ok(SocketPacket {
                kind: SocketKind::Event,
                namespace: "/",
                data: Some("[\"hello\",1]"),
            })
        );
        assert_eq!(
            SocketPacket::parse("51-/chat,7[\"up\",{\"_placeholder\":true,\"num\":0}]"),
            Ok(SocketPacket {
                kind: SocketKind::BinaryEvent,
                namespace: "/chat",
                data: Some("[\"up\",{\"_placeholder\":true,\"num\":0}]"),
            })
        );
        assert_eq!(SocketPacket::parse(""), Err(PacketError::Empty));
        assert_eq!(SocketPacket::parse("x"), Err(PacketError::SocketType('x')));
        assert_eq!(
            SocketPacket::parse("0/admin{\"token\":1}"),
            Err(PacketError::Namespace)
        );
    }

    #[test]
    fn packets_encode() {
        let open = open_packet("abc", &Timing::default());
        assert_eq!(
            json_of(&open, "0"),
            serde_json::json!({"sid": "abc", "upgrades": [], "pingInterval": 25000,
                "pingTimeout": 20000, "maxPayload": 1000000})
        );
        assert_eq!(connect_packet("abc"), "40{\"sid\":\"abc\"}");
        assert_eq!(
            connect_error_packet("/", "no \"key\""),
            "44{\"message\":\"no \\\"key\\\"\"}"
        );
        assert_eq!(
            connect_error_packet("/admin", "Invalid namespace"),
            "44/admin,{\"message\":\"Invalid namespace\"}"
        );
    }

    #[test]
    fn sandbox_events_encode_as_the_sdk_reads_them() {
        let updated = sandbox_event_packet(
            &changed("a", Some(SandboxState::Started), SandboxState::Stopped),
            "http://h/toolbox",
        );
        assert_eq!(
            json_of(&updated, "42"),
            serde_json::json!(["sandbox.state.updated", {
                "sandbox": {"id": "a", "state": "stopped"},
                "oldState": "started", "newState": "stopped"}])
        );
        let first = sandbox_event_packet(&changed("a", None, SandboxState::Destroyed), "x");
        assert_eq!(
            json_of(&first, "42")[1]["oldState"],
            serde_json::Value::Null
        );

        let s = sandbox("a", SandboxState::Started);
        let created = sandbox_event_packet(
            &SandboxEvent::Created(Arc::new(s.clone())),
            "http://h/toolbox",
        );
        let expected = serde_json::to_value(SandboxDto::from_sandbox(&s, "http://h/toolbox", true))
            .expect("dto");
        let v = json_of(&created, "42");
        assert_eq!(v[0], "sandbox.created");
        assert_eq!(v[1]["sandbox"], expected);
        assert_eq!(v[1]["sandbox"]["env"]["A"], "b");
        assert_eq!(v[1]["sandbox"]["toolboxProxyUrl"], "http://h/toolbox");
    }
}
