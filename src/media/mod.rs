//! Media transports. Each parses its wire format into what the call actor needs; the generic
//! PCM WebSocket is [`voice`].

pub mod voice;
