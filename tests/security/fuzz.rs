//! Fuzz and property harness for every parser that reads bytes from the network (issue 13).
//!
//! No fuzzing framework: each target is fed inputs drawn by `fastrand` — pure random bytes,
//! random UTF-8 text (multi-byte characters, control characters, JSON punctuation), random JSON
//! values, and above all mutations of valid seed messages of its protocol (bit flips, random
//! bytes, truncation, deleted and duplicated ranges, splices with another seed, duplicated JSON
//! keys, huge and odd numbers, nesting past `serde_json`'s depth limit, values swapped for other
//! types). Every case must not panic, and where a target has one its property must hold (errors
//! are non-empty, decoded lengths stay within bounds, a frame is accepted iff its length rule
//! holds, …). A failure names the target, the case, the seed that replays it and the input.
//!
//! Cases per target: `FUZZ_CASES` (default 20,000); the recording decoder, much slower per
//! case, runs a hundredth of that. Each target prints how many cases it ran. `FUZZ_SEED=<n>`
//! replays a run (each target prints its seed).
//!
//! Long run:
//!
//! ```sh
//! FUZZ_CASES=1000000 cargo test --release --test security fuzz -- --nocapture
//! ```

use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use callengine::audio::{g711, pcm};
use callengine::media::audiosocket::{self, Decoder, Frame, FrameError};
use callengine::media::normalize::{AudioFormat, Encoding, Normalizer, FRAME_16K};
use callengine::media::{audiofork, ids_from_map, twilio, voice, vonage};
use callengine::postcall::{audio as recording_audio, extract};
use callengine::webhooks::{callback_parse, elevenlabs, signature};
use fastrand::Rng;
use serde_json::{json, Map, Value};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// The runner.

/// Cases per target.
fn cases() -> usize {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(20_000)
}

/// The seed of a target's run: `FUZZ_SEED`, or a fresh one (printed, to replay a failure).
fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

/// Runs `n` cases of `target`: `generate` draws an input, `check` must not panic on it.
fn run<I: Debug>(
    target: &str,
    n: usize,
    mut generate: impl FnMut(&mut Rng) -> I,
    mut check: impl FnMut(&I),
) {
    let seed = seed();
    let mut rng = Rng::with_seed(seed);
    let started = Instant::now();
    for case in 0..n {
        let input = generate(&mut rng);
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&input))) {
            let mut shown = format!("{input:?}");
            if shown.len() > 4_000 {
                let mut cut = 4_000;
                while !shown.is_char_boundary(cut) {
                    cut -= 1;
                }
                shown.truncate(cut);
                shown.push('…');
            }
            panic!(
                "fuzz target {target}: case {case} of {n} failed (replay with FUZZ_SEED={seed}): {}\n  input: {shown}",
                panic_text(&*panic)
            );
        }
    }
    println!(
        "fuzz {target}: {n} cases, no panic, properties held ({:.2?}, FUZZ_SEED={seed})",
        started.elapsed()
    );
}

/// An error message must say something.
fn said(error: &str) {
    assert!(!error.trim().is_empty(), "empty error message");
}

// ---------------------------------------------------------------------------------------------
// Input generators.

/// Pieces of text that break naive parsers.
const ODD_TEXT: &[&str] = &[
    "\u{0}",
    "\u{7}",
    "\t",
    "\n",
    "\r\n",
    "\u{1b}[31m",
    "\u{7f}",
    "\u{85}",
    "\u{9b}",
    "\u{a0}",
    "é",
    "e\u{301}",
    "\u{301}\u{308}\u{20dd}",
    "İ",
    "ı",
    "ß",
    "ẞ",
    "\u{212A}",
    "\u{212B}",
    "ﬃ",
    "日本",
    "😀",
    "👩‍👩‍👧‍👦",
    "\u{200d}",
    "\u{200f}",
    "\u{202e}",
    "\u{2028}",
    "\u{feff}",
    "\u{fffd}",
    "\u{10ffff}",
    "שלום",
    "مرحبا",
    "my name is ",
    "I'm ",
    "%",
    "%zz",
    "%00",
    "%FF",
    "+",
    "&",
    "=",
    "&&==",
    "\\",
    "\\u0000",
    "\\ud800",
    "\\uDFFF",
    "\"",
];

/// Tokens spliced into messages: odd numbers and JSON fragments.
const ODD_TOKENS: &[&str] = &[
    "0",
    "-0",
    "-1",
    "1.5",
    "1e309",
    "-1e309",
    "1e-400",
    "4294967296",
    "4294983296",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "-9223372036854775809",
    "99999999999999999999999999999999999999",
    "0x10",
    "NaN",
    "Infinity",
    "null",
    "true",
    "[]",
    "{}",
    "[[[[",
    "]]]]",
    "{\"\":{\"\":{",
    "\"\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"\\uDFFF\\uD800\"",
    ",",
    ":",
    "\"event\":",
    "\"event\":\"start\",",
    "\"event\":\"media\",",
    "\"event\":\"dtmf\",",
    "\"event\":\"websocket:connected\",",
];

fn random_bytes(rng: &mut Rng, max: usize) -> Vec<u8> {
    let len = if rng.u8(..) < 200 {
        rng.usize(..=max.min(64))
    } else {
        rng.usize(..=max)
    };
    let mut bytes = vec![0; len];
    rng.fill(&mut bytes);
    bytes
}

fn random_text(rng: &mut Rng, max_pieces: usize) -> String {
    let pieces = rng.usize(..=max_pieces);
    let mut text = String::new();
    for _ in 0..pieces {
        match rng.u8(..10) {
            0..=2 => text.push(char::from(rng.u8(0x20..0x7f))),
            3 => text.push(char::from(rng.u8(..0x20))),
            4 => text.push(rng.char('\u{80}'..='\u{9f}')),
            5 | 6 => text.push_str(ODD_TEXT[rng.usize(..ODD_TEXT.len())]),
            7 => text.push(rng.char(..)),
            8 => text.push(['{', '}', '[', ']', '"', ':', ',', '\\'][rng.usize(..8)]),
            _ => text.push(rng.alphanumeric()),
        }
    }
    text
}

fn random_number(rng: &mut Rng) -> Value {
    match rng.u8(..8) {
        0 => json!(u64::MAX),
        1 => json!(i64::MIN),
        2 => json!(rng.u64(..)),
        3 => json!(rng.i64(..)),
        4 => json!(f64::MAX),
        5 => json!(-rng.f64() * 1e12),
        6 => json!(rng.f64()),
        _ => json!(rng.u16(..)),
    }
}

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.u8(..if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.bool()),
        2 => random_number(rng),
        3 | 4 => Value::String(random_text(rng, 12)),
        5 => Value::Array(
            (0..rng.usize(..4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.usize(..4))
                .map(|_| (random_text(rng, 6), random_value(rng, depth - 1)))
                .collect(),
        ),
    }
}

/// Changes one node of `value`: a new value, another type, a key removed or added.
fn mutate_value(rng: &mut Rng, value: &mut Value) {
    let descend = rng.u8(..4) != 0;
    match value {
        Value::Object(map) if descend && !map.is_empty() => {
            let key = map.keys().nth(rng.usize(..map.len())).cloned();
            if let Some(key) = key {
                match rng.u8(..8) {
                    0 => {
                        map.remove(&key);
                    }
                    1 => {
                        map.insert(random_text(rng, 8), random_value(rng, 2));
                    }
                    _ => {
                        if let Some(child) = map.get_mut(&key) {
                            mutate_value(rng, child);
                        }
                    }
                }
            }
        }
        Value::Array(items) if descend && !items.is_empty() => {
            let i = rng.usize(..items.len());
            mutate_value(rng, &mut items[i]);
        }
        Value::String(s) if descend => match rng.u8(..4) {
            0 => s.push_str(&random_text(rng, 8)),
            1 => s.insert_str(0, ODD_TEXT[rng.usize(..ODD_TEXT.len())]),
            2 => *s = s.repeat(rng.usize(2..100)),
            _ => {
                let mut cut = rng.usize(..=s.len());
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.truncate(cut);
            }
        },
        _ => *value = random_value(rng, 2),
    }
}

/// Byte-level mutations of `data`; `others` are splice partners.
fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, others: &[Vec<u8>]) {
    for _ in 0..rng.usize(1..=4) {
        let len = data.len();
        match rng.u8(..11) {
            0 if len > 0 => {
                let i = rng.usize(..len);
                data[i] ^= 1 << rng.u8(..8);
            }
            1 if len > 0 => {
                let i = rng.usize(..len);
                data[i] = rng.u8(..);
            }
            2 => data.truncate(rng.usize(..=len)),
            3 if len > 0 => {
                let a = rng.usize(..len);
                let b = rng.usize(a..=len.min(a + 16));
                data.drain(a..b);
            }
            4 => {
                let at = rng.usize(..=len);
                let extra = random_bytes(rng, 16);
                data.splice(at..at, extra);
            }
            5 if len > 0 => {
                // Duplicate a range.
                let a = rng.usize(..len);
                let b = rng.usize(a..=len);
                let copy = data[a..b].to_vec();
                let at = rng.usize(..=len);
                data.splice(at..at, copy);
            }
            6 if !others.is_empty() => {
                // Splice: this one's head, another's tail.
                let other = &others[rng.usize(..others.len())];
                let cut = rng.usize(..=len);
                let from = rng.usize(..=other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            7 => {
                let at = rng.usize(..=len);
                let token = ODD_TOKENS[rng.usize(..ODD_TOKENS.len())].as_bytes();
                data.splice(at..at, token.iter().copied());
            }
            8 => {
                let at = rng.usize(..=len);
                let token = ODD_TEXT[rng.usize(..ODD_TEXT.len())].as_bytes();
                data.splice(at..at, token.iter().copied());
            }
            9 => {
                // Nesting: past serde_json's limit of 128 levels, but bounded.
                let depth = rng.usize(1..300);
                let (open, close) = if rng.bool() {
                    (b"[".as_slice(), b"]".as_slice())
                } else {
                    (b"{\"a\":".as_slice(), b"}".as_slice())
                };
                let mut nested = open.repeat(depth);
                nested.extend_from_slice(data);
                nested.extend_from_slice(&close.repeat(depth));
                *data = nested;
            }
            _ => duplicate_key(rng, data),
        }
    }
}

/// Duplicates one `"key": value` member of a JSON object in place (`{"a":1,"a":1,…}`).
fn duplicate_key(rng: &mut Rng, data: &mut Vec<u8>) {
    let quotes: Vec<usize> = data
        .iter()
        .enumerate()
        .filter(|(i, b)| **b == b'"' && (*i == 0 || matches!(data[i - 1], b'{' | b',')))
        .map(|(i, _)| i)
        .collect();
    if quotes.is_empty() {
        return;
    }
    let start = quotes[rng.usize(..quotes.len())];
    let end = data[start..]
        .iter()
        .position(|b| matches!(b, b',' | b'}'))
        .map_or(data.len(), |p| start + p);
    let mut member = data[start..end].to_vec();
    member.push(b',');
    data.splice(start..start, member);
}

/// A JSON text input for a parser: random, or a (mostly) mutated seed.
fn json_input(rng: &mut Rng, seeds: &[Value], texts: &[Vec<u8>]) -> String {
    match rng.u8(..16) {
        0 => String::from_utf8_lossy(&random_bytes(rng, 256)).into_owned(),
        1 => random_text(rng, 64),
        2 => random_value(rng, 3).to_string(),
        3..=7 => {
            let mut value = seeds[rng.usize(..seeds.len())].clone();
            for _ in 0..rng.usize(1..=3) {
                mutate_value(rng, &mut value);
            }
            value.to_string()
        }
        8..=12 => {
            let mut bytes = texts[rng.usize(..texts.len())].clone();
            mutate_bytes(rng, &mut bytes, texts);
            String::from_utf8_lossy(&bytes).into_owned()
        }
        13 => {
            let mut value = seeds[rng.usize(..seeds.len())].clone();
            mutate_value(rng, &mut value);
            let mut bytes = value.to_string().into_bytes();
            mutate_bytes(rng, &mut bytes, texts);
            String::from_utf8_lossy(&bytes).into_owned()
        }
        14 => {
            let mut bytes = texts[rng.usize(..texts.len())].clone();
            duplicate_key(rng, &mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        }
        _ => String::from_utf8_lossy(&texts[rng.usize(..texts.len())]).into_owned(),
    }
}

/// A byte input: random, or a mutated seed.
fn bytes_input(rng: &mut Rng, seeds: &[Vec<u8>], max_random: usize) -> Vec<u8> {
    match rng.u8(..8) {
        0 => random_bytes(rng, max_random),
        1 => random_text(rng, 64).into_bytes(),
        7 => seeds[rng.usize(..seeds.len())].clone(),
        _ => {
            let mut bytes = seeds[rng.usize(..seeds.len())].clone();
            mutate_bytes(rng, &mut bytes, seeds);
            bytes
        }
    }
}

fn texts(seeds: &[Value]) -> Vec<Vec<u8>> {
    seeds.iter().map(|v| v.to_string().into_bytes()).collect()
}

fn uuid() -> String {
    Uuid::new_v4().to_string()
}

// ---------------------------------------------------------------------------------------------
// Carrier media protocols.

fn twilio_seeds() -> Vec<Value> {
    let payload = base64::engine::general_purpose::STANDARD.encode([0xffu8; 160]);
    vec![
        json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
        json!({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": {
            "streamSid": "MZ1", "accountSid": "AC1", "callSid": "CA1", "tracks": ["inbound"],
            "customParameters": {"tenant_id": uuid(), "campaign_id": uuid(), "token": "s3cret"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}),
        json!({"event": "media", "sequenceNumber": "2", "streamSid": "MZ1", "media": {
            "track": "inbound", "chunk": "1", "timestamp": "5", "payload": payload}}),
        json!({"event": "dtmf", "sequenceNumber": 3, "dtmf": {"track": "inbound_track", "digit": "5"}}),
        json!({"event": "mark", "sequenceNumber": "4", "mark": {"name": "m1"}}),
        json!({"event": "stop", "sequenceNumber": "5", "stop": {"callSid": "CA1"}}),
    ]
}

#[test]
fn twilio_media_stream_messages() {
    let seeds = twilio_seeds();
    for s in &seeds {
        assert!(twilio::parse(&s.to_string()).is_ok(), "seed {s}");
    }
    let texts = texts(&seeds);
    run(
        "media::twilio::parse",
        cases(),
        |rng| json_input(rng, &seeds, &texts),
        |message| match twilio::parse(message) {
            Err(e) => said(&e),
            Ok(twilio::TwilioMessage::Start(start)) => assert!(!start.call_sid.is_empty()),
            Ok(twilio::TwilioMessage::Media { payload, .. }) => {
                assert!(payload.len() <= message.len(), "base64 only shrinks")
            }
            Ok(twilio::TwilioMessage::Other(event)) => assert!(event.chars().count() <= 40),
            Ok(_) => {}
        },
    );
}

#[test]
fn vonage_first_message_and_events() {
    let connected = vec![
        json!({"event": "websocket:connected", "content-type": "audio/l16;rate=16000",
            "tenant_id": uuid(), "campaign_id": uuid(), "lead_id": uuid(), "token": "t"}),
        json!({"event": "websocket:connected", "content-type": "audio/l16;rate=8000"}),
        json!({"event": "websocket:connected", "content-type": "Audio/L16; Rate = 16000 ; x=y"}),
    ];
    for s in &connected {
        assert!(vonage::parse_connected(&s.to_string()).is_ok(), "seed {s}");
    }
    let connected_texts = texts(&connected);
    run(
        "media::vonage::parse_connected",
        cases(),
        |rng| json_input(rng, &connected, &connected_texts),
        |message| match vonage::parse_connected(message) {
            Err(e) => said(&e),
            Ok(c) => {
                assert!(matches!(c.sample_rate, 8_000 | 16_000), "{}", c.sample_rate);
                assert!(
                    !c.headers.contains_key("event") && !c.headers.contains_key("content-type")
                );
            }
        },
    );
    let events = vec![
        json!({"event": "websocket:dtmf", "digit": "5", "duration": 260}),
        json!({"event": "websocket:dtmf", "digit": 7}),
        json!({"event": "websocket:media:update", "x": 1}),
    ];
    for s in &events {
        assert!(vonage::parse_event(&s.to_string()).is_ok(), "seed {s}");
    }
    let event_texts = texts(&events);
    run(
        "media::vonage::parse_event",
        cases(),
        |rng| json_input(rng, &events, &event_texts),
        |message| match vonage::parse_event(message) {
            Err(e) => said(&e),
            Ok(vonage::VonageEvent::Other(event)) => assert!(event.chars().count() <= 40),
            Ok(vonage::VonageEvent::Dtmf { .. }) => {}
        },
    );
    run(
        "media::vonage::parse_content_type",
        cases(),
        |rng| {
            if rng.bool() {
                random_text(rng, 24)
            } else {
                let mut b = b"audio/l16;rate=16000".to_vec();
                mutate_bytes(rng, &mut b, &[b"audio/l16;rate=8000".to_vec()]);
                String::from_utf8_lossy(&b).into_owned()
            }
        },
        |content_type| match vonage::parse_content_type(content_type) {
            Err(e) => said(&e),
            Ok(rate) => assert!(matches!(rate, 8_000 | 16_000)),
        },
    );
}

const FORK_RATES: [u32; 6] = [8_000, 16_000, 24_000, 32_000, 48_000, 64_000];

#[test]
fn audio_fork_metadata_and_text_frames() {
    let starts = vec![
        json!({"callSid": "c-1", "sampleRate": 16000, "mixType": "stereo", "from": "+1415",
            "metadata": {"tenant_id": uuid(), "token": "t"}}),
        json!({"uuid": uuid(), "sampleRate": "8k", "mixType": "mono"}),
        json!({"call_uuid": "x", "rate": "16000", "mix": "MIXED"}),
    ];
    let queries = vec![
        json!({"rate": "16000", "mix": "stereo", "tenant_id": uuid()}),
        json!({"rate": 8000}),
        json!({}),
    ];
    let mut start_texts = texts(&starts);
    start_texts.push(b"not json: freeswitch metadata text".to_vec());
    let query_texts = texts(&queries);
    let query_of = |text: String| match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    run(
        "media::audiofork::parse_start",
        cases(),
        |rng| {
            (
                json_input(rng, &starts, &start_texts),
                query_of(json_input(rng, &queries, &query_texts)),
            )
        },
        |(first, query)| match audiofork::parse_start(first, query) {
            Err(e) => said(&e),
            Ok(start) => {
                assert!(
                    FORK_RATES.contains(&start.sample_rate),
                    "{}",
                    start.sample_rate
                );
                if let Some(id) = &start.external_id {
                    assert!(!id.is_empty() && id.len() <= 128, "{id:?}");
                }
                assert!(start.metadata.is_object());
            }
        },
    );
    let frames = vec![
        json!({"event": "dtmf", "digit": "5"}),
        json!({"type": "DTMF", "dtmf": 9}),
        json!({"event": "other"}),
    ];
    let frame_texts = texts(&frames);
    run(
        "media::audiofork::parse_text",
        cases(),
        |rng| json_input(rng, &frames, &frame_texts),
        |message| {
            if let Some(digit) = audiofork::parse_text(message) {
                assert!(!digit.is_empty() && digit.len() <= 32, "{digit:?}");
            }
        },
    );
}

/// Decodes `chunks` as one AudioSocket connection: the frames, then the error or `finish`.
fn audiosocket_decode(chunks: &[&[u8]]) -> (Vec<Frame>, Result<(), FrameError>) {
    let mut decoder = Decoder::default();
    let mut frames = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Err(e)),
            }
        }
    }
    let end = decoder.finish();
    (frames, end)
}

#[test]
fn audiosocket_frames() {
    let call = Uuid::new_v4();
    let mut stream = audiosocket::encode(0x01, call.as_bytes());
    for kind in 0x10..=0x18u8 {
        stream.extend(audiosocket::encode(kind, &[1u8; 320]));
    }
    stream.extend(audiosocket::encode(0x03, b"#"));
    stream.extend(audiosocket::encode(0x12, &[0u8; 640]));
    stream.extend(audiosocket::encode(0xff, &[1]));
    stream.extend(audiosocket::encode(0x00, &[]));
    let seeds = vec![
        stream,
        audiosocket::encode(0x10, &[7u8; 9_600]),
        audiosocket::encode(0x01, &[0u8; 15]),
        vec![0x10, 0x40, 0x01],
    ];
    let (frames, end) = audiosocket_decode(&[&seeds[0]]);
    assert_eq!((frames.len(), end), (14, Ok(())));
    run(
        "media::audiosocket::Decoder",
        cases(),
        |rng| {
            let mut bytes = bytes_input(rng, &seeds, 512);
            if rng.u8(..64) == 0 {
                // Enough frames to make the decoder compact its buffer (past 64 KiB).
                let frame = audiosocket::encode(0x16, &[3u8; 9_600]);
                bytes = [frame.repeat(8), bytes].concat();
            }
            let mut cuts: Vec<usize> = (0..rng.usize(..6))
                .map(|_| rng.usize(..=bytes.len()))
                .collect();
            cuts.sort_unstable();
            (bytes, cuts)
        },
        |(bytes, cuts)| {
            let whole = audiosocket_decode(&[bytes]);
            // Property: the frames do not depend on how the stream was cut into reads.
            let mut chunks = Vec::new();
            let mut from = 0;
            for cut in cuts.iter().copied().chain(std::iter::once(bytes.len())) {
                chunks.push(&bytes[from..cut]);
                from = cut;
            }
            let split = audiosocket_decode(&chunks);
            assert_eq!(whole, split, "cut at {cuts:?}");
            let mut consumed = 0;
            for frame in &whole.0 {
                consumed += 3 + match frame {
                    Frame::Hangup => 0,
                    Frame::Uuid(_) => 16,
                    Frame::Dtmf(d) => {
                        assert!(d.is_ascii_graphic());
                        1
                    }
                    Frame::Audio { sample_rate, pcm } => {
                        assert!(pcm.len() <= audiosocket::MAX_PAYLOAD);
                        assert!((8_000..=192_000).contains(sample_rate));
                        pcm.len()
                    }
                    Frame::Error(code) => usize::from(code.is_some()),
                };
            }
            // (An error frame may carry more than its code; the rest is only a lower bound.)
            assert!(consumed <= bytes.len());
            if let Err(e) = &whole.1 {
                said(&e.to_string());
            }
        },
    );
}

#[test]
fn carrier_ids_from_key_value_pairs() {
    let seeds = vec![
        json!({"tenant_id": uuid(), "campaign_id": uuid(), "lead_id": uuid(), "call_id": uuid(),
            "phone_number": "+14155550100", "token": "s3cret"}),
        json!({"tenant_id": uuid(), "from": 14155550100u64}),
        json!({"campaign_id": uuid()}),
    ];
    let seed_texts = texts(&seeds);
    let default_tenant = Uuid::new_v4();
    run(
        "media::ids_from_map",
        cases(),
        |rng| {
            let map = match serde_json::from_str(&json_input(rng, &seeds, &seed_texts)) {
                Ok(Value::Object(map)) => map,
                _ => Map::new(),
            };
            (map, rng.bool().then_some(default_tenant))
        },
        |(map, default)| match ids_from_map(map, *default) {
            Err(e) => said(&e),
            Ok(ids) => {
                if let Some(phone) = &ids.phone_number {
                    assert!(!phone.is_empty() && phone.len() <= 64, "{phone:?}");
                }
                if !map.contains_key("tenant_id") {
                    assert_eq!(Some(ids.tenant_id), *default);
                }
            }
        },
    );
}

#[test]
fn voice_socket_path_and_query() {
    let good = format!(
        "tenant_id={}&campaign_id={}&lead_id={}&call_id={}&phone_number=%2B14155550100",
        uuid(),
        uuid(),
        uuid(),
        uuid()
    );
    let seeds = vec![
        good.clone().into_bytes(),
        format!(
            "tenant_id={}&campaign_id={}&lead_id={}",
            uuid(),
            uuid(),
            uuid()
        )
        .into_bytes(),
    ];
    let external = uuid();
    assert!(voice::parse_params(&external, &good).is_ok());
    run(
        "media::voice::parse_params",
        cases(),
        |rng| {
            let path = if rng.u8(..4) == 0 {
                random_text(rng, 40)
            } else {
                external.clone()
            };
            let query = String::from_utf8_lossy(&bytes_input(rng, &seeds, 256)).into_owned();
            (path, query)
        },
        |(path, query)| match voice::parse_params(path, query) {
            Err(e) => said(&e),
            Ok(params) => {
                if let Some(phone) = &params.phone_number {
                    assert!(!phone.is_empty() && phone.len() <= 64, "{phone:?}");
                }
                assert!(params.campaign_id.is_some() && params.lead_id.is_some());
                assert_eq!(params.speakers, ["contact"]);
            }
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Audio.

const RATES: [u32; 11] = callengine::media::normalize::SUPPORTED_RATES;

#[test]
fn normaliser_on_arbitrary_bytes_in_every_format() {
    /// One call's stream so far: its normaliser, bytes in, frames out per channel.
    struct Stream {
        normalizer: Normalizer,
        bytes_in: usize,
        frames_out: [usize; 2],
    }
    // Building a normaliser costs more than feeding it (the resampler's filter table), so each
    // format keeps a stream across cases, as a call would, and starts afresh now and then: a
    // failure replays with the run's seed rather than its case alone.
    let mut streams: std::collections::HashMap<(u8, u32, u16), Stream> = Default::default();
    run(
        "media::normalize::Normalizer",
        cases(),
        |rng| {
            let format = AudioFormat {
                encoding: [Encoding::L16, Encoding::Mulaw, Encoding::Alaw][rng.usize(..3)],
                sample_rate: RATES[rng.usize(..RATES.len())],
                channels: rng.u16(1..=2),
            };
            // Small payloads (frames of any size, as carriers send them); the streams make them
            // add up to whole output frames.
            let chunks: Vec<Vec<u8>> = (0..rng.usize(1..4))
                .map(|_| random_bytes(rng, 400))
                .collect();
            (format, chunks, rng.bool(), rng.u8(..16) == 0)
        },
        |(format, chunks, zero_copy, fresh)| {
            let key = (format.encoding as u8, format.sample_rate, format.channels);
            if *fresh {
                streams.remove(&key);
            }
            let stream = streams.entry(key).or_insert_with(|| Stream {
                normalizer: Normalizer::new(*format).unwrap(),
                bytes_in: 0,
                frames_out: [0; 2],
            });
            let frames_out = &mut stream.frames_out;
            let mut emit = |channel: usize, frame: Bytes| {
                assert_eq!(frame.len(), FRAME_16K);
                assert!(channel < usize::from(format.channels));
                frames_out[channel] += 1;
            };
            for chunk in chunks {
                if *zero_copy {
                    stream
                        .normalizer
                        .push_bytes(&Bytes::copy_from_slice(chunk), &mut emit);
                } else {
                    stream.normalizer.push(chunk, &mut emit);
                }
                stream.bytes_in += chunk.len();
            }
            // Property: output in proportion to the input (16 kHz out per `rate` in), never more.
            let samples_in = stream.bytes_in / format.frame_bytes();
            let max_out = samples_in * 16_000 / format.sample_rate as usize + 64;
            for (channel, frames) in stream.frames_out.iter().enumerate() {
                assert!(
                    frames * FRAME_16K / 2 <= max_out,
                    "channel {channel}: {frames} frames from {samples_in} samples"
                );
            }
            if format.channels == 1 {
                assert_eq!(stream.frames_out[1], 0);
            } else {
                assert_eq!(
                    stream.frames_out[0], stream.frames_out[1],
                    "stereo sides stay in step"
                );
            }
        },
    );
    // Any announced format: accepted only within range; never a panic.
    run(
        "media::normalize::Normalizer::new",
        cases(),
        |rng| AudioFormat {
            encoding: [Encoding::L16, Encoding::Mulaw, Encoding::Alaw][rng.usize(..3)],
            sample_rate: match rng.u8(..4) {
                0 => rng.u32(..),
                1 => RATES[rng.usize(..RATES.len())],
                _ => [0, 1, 7_999, 192_001, u32::MAX][rng.usize(..5)],
            },
            channels: rng.u16(..5),
        },
        |format| match Normalizer::new(*format) {
            Err(e) => said(&e),
            Ok(n) => {
                assert!((1..=2).contains(&format.channels));
                assert!((8_000..=192_000).contains(&format.sample_rate));
                assert_eq!(n.format(), *format);
            }
        },
    );
}

#[test]
fn g711_decoders() {
    run(
        "audio::g711::decode_ulaw/decode_alaw",
        cases(),
        |rng| (random_bytes(rng, 1_024), rng.usize(..8)),
        |(bytes, already)| {
            for alaw in [false, true] {
                let mut out = vec![7i16; *already];
                if alaw {
                    g711::decode_alaw(bytes, &mut out);
                } else {
                    g711::decode_ulaw(bytes, &mut out);
                }
                // Appends one sample per byte, from the table.
                assert_eq!(out.len(), already + bytes.len());
                assert!(out[..*already].iter().all(|s| *s == 7));
                let table = if alaw { &g711::ALAW } else { &g711::ULAW };
                for (b, s) in bytes.iter().zip(&out[*already..]) {
                    assert_eq!(*s, table[usize::from(*b)]);
                }
            }
        },
    );
}

#[test]
fn pcm_frame_validation() {
    let buffer = vec![0u8; 70_000];
    run(
        "audio::pcm::validate_frame",
        cases(),
        |rng| {
            let format = match rng.u8(..4) {
                0 => pcm::PcmFormat {
                    sample_rate: rng.u32(..200_000),
                    max_frame_ms: rng.u32(..1_000),
                },
                1 => pcm::PcmFormat {
                    sample_rate: rng.u32(..),
                    max_frame_ms: rng.u32(..),
                },
                _ => pcm::PcmFormat::WIDEBAND,
            };
            let len = match rng.u8(..4) {
                0 => rng.usize(..=70_000),
                1 => 640 * rng.usize(..8),
                2 => format.bytes_per_20ms().min(10_000) * rng.usize(..8),
                _ => rng.usize(..2_000),
            };
            (format, len.min(70_000))
        },
        |(format, len)| {
            let frame = &buffer[..*len];
            let result = pcm::validate_frame(*format, frame);
            // The rule, restated: whole s16 samples, whole 20 ms frames, at most max_frame_ms.
            let unit = (format.sample_rate as usize / 50) * 2;
            let max = unit * (format.max_frame_ms as usize / 20);
            let ok = *len > 0 && len % 2 == 0 && *len <= max && unit > 0 && len % unit == 0;
            assert_eq!(result.is_ok(), ok, "{result:?}");
            match result {
                Ok(ms) => assert_eq!(ms as usize, len / unit * 20),
                Err(e) => said(&e.to_string()),
            }
        },
    );
}

/// A WAV file: `format` 1 (PCM), 3 (float), 6 (A-law) or 7 (μ-law).
fn wav(format: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
    let block = channels * bits.div_ceil(8);
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&format.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * u32::from(block)).to_le_bytes());
    out.extend_from_slice(&block.to_le_bytes());
    out.extend_from_slice(&bits.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// Silent MPEG-1 Layer III frames (128 kb/s, 44.1 kHz, mono): header then zeros.
fn mp3(frames: usize) -> Vec<u8> {
    let mut frame = vec![0u8; 417];
    frame[..4].copy_from_slice(&[0xFF, 0xFB, 0x90, 0xC4]);
    frame.repeat(frames)
}

#[test]
fn recording_decoder() {
    let tone: Vec<u8> = (0..400i16)
        .flat_map(|i| ((i % 50 - 25) * 800).to_le_bytes())
        .collect();
    let seeds = vec![
        wav(1, 1, 8_000, 16, &tone),
        wav(1, 2, 44_100, 16, &tone),
        wav(1, 1, 16_000, 8, &tone[..200]),
        wav(7, 1, 8_000, 8, &[0xFF; 400]),
        wav(6, 1, 8_000, 8, &[0xD5; 400]),
        wav(3, 1, 16_000, 32, &[0u8; 800]),
        // A header is data too: a sample rate no telephone recording has.
        wav(1, 1, 100, 8, &[0x80; 300]),
        mp3(4),
    ];
    assert!(recording_audio::decode_to_16k_mono(&seeds[0], Some("wav")).is_ok());
    let hints = [Some("wav"), Some("mp3"), None, Some("ogg"), Some("")];
    let n = (cases() / 100).max(1);
    run(
        "postcall::audio::decode_to_16k_mono",
        n,
        |rng| {
            let bytes = bytes_input(rng, &seeds, 2_048);
            (bytes, hints[rng.usize(..hints.len())])
        },
        |(bytes, hint)| match recording_audio::decode_to_16k_mono(bytes, *hint) {
            Err(e) => said(&e),
            Ok(samples) => {
                // (`Ok` may be empty: less audio than one 16 kHz sample, e.g. one sample at
                // 44.1 kHz, resamples to nothing. Harmless: nothing to transcribe.)
                // Property: a recording cannot decode to more than a sane amount of audio per
                // byte (8-bit samples at 8 kHz make 2 output samples per byte; MP3 at its
                // lowest bit rate about 64), plus the resampler's rounding.
                assert!(
                    samples.len() <= 64 * bytes.len() + 16_000,
                    "{} samples from {} bytes",
                    samples.len(),
                    bytes.len()
                );
            }
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Inbound webhooks.

#[test]
fn webhook_signature_verifiers() {
    let body = br#"{"conversation_id":"c","speaker":"user","message":"hi","timestamp":1}"#;
    let now = 1_800_000_000i64;
    let v0 = signature::elevenlabs_v0("whsec", &now.to_string(), body);
    let header = format!("t={now},v0={v0}");
    assert_eq!(
        signature::verify_elevenlabs(Some(&header), "whsec", body, now, 1_800),
        Ok(())
    );
    let seeds = vec![
        header.clone().into_bytes(),
        format!("v0={v0}, t={now}").into_bytes(),
    ];
    run(
        "webhooks::signature::verify_elevenlabs",
        cases(),
        |rng| {
            let header = match rng.u8(..8) {
                0 => None,
                // Well formed, with any timestamp at all (and the right or a wrong signature).
                1 => {
                    let t = match rng.u8(..3) {
                        0 => [i64::MIN, i64::MAX, -1, 0][rng.usize(..4)],
                        1 => rng.i64(..),
                        _ => now + rng.i64(-5_000..5_000),
                    };
                    let v0 = if rng.bool() {
                        signature::elevenlabs_v0("whsec", &t.to_string(), body)
                    } else {
                        format!("{:064x}", rng.u128(..))
                    };
                    Some(format!("t={t},v0={v0}"))
                }
                _ => Some(String::from_utf8_lossy(&bytes_input(rng, &seeds, 128)).into_owned()),
            };
            let secret = if rng.u8(..4) == 0 {
                random_text(rng, 8)
            } else {
                "whsec".to_string()
            };
            let body = if rng.u8(..4) == 0 {
                random_bytes(rng, 64)
            } else {
                body.to_vec()
            };
            let now = match rng.u8(..4) {
                0 => rng.i64(..),
                _ => now + rng.i64(-5_000..5_000),
            };
            let tolerance = match rng.u8(..4) {
                0 => rng.u64(..),
                _ => 1_800,
            };
            (header, secret, body, now, tolerance)
        },
        |(header, secret, body, now, tolerance)| {
            let result =
                signature::verify_elevenlabs(header.as_deref(), secret, body, *now, *tolerance);
            match result {
                Err(e) => said(e),
                // Property: accepted only with the right HMAC of this body at the given t, and
                // only when t is at most `tolerance` seconds old (computed without overflow).
                Ok(()) => {
                    let header = header.as_deref().unwrap_or_default();
                    let t = header
                        .split(',')
                        .filter_map(|p| p.trim().split_once('='))
                        .rfind(|(k, _)| *k == "t")
                        .map(|(_, v)| v.trim())
                        .unwrap_or_default();
                    let expected = signature::elevenlabs_v0(secret, t, body);
                    assert!(header.contains(&expected), "accepted a wrong signature");
                    let age = i128::from(*now) - t.parse::<i128>().unwrap();
                    assert!(
                        age <= i128::from(*tolerance),
                        "accepted a signature {age} s old"
                    );
                }
            }
        },
    );
    let vonage_body = br#"{"recording_url":"https://api.nexmo.com/v1/files/x"}"#;
    let jwt = signature::sign_vonage("vsecret", vonage_body, now);
    let vonage_seeds = vec![format!("Bearer {jwt}").into_bytes()];
    run(
        "webhooks::signature::verify_vonage",
        cases(),
        |rng| {
            let header = match rng.u8(..6) {
                0 => None,
                // Well formed and signed, with any iat at all.
                1 => {
                    let iat = match rng.u8(..3) {
                        0 => [i64::MIN, i64::MAX, -1, 0][rng.usize(..4)],
                        1 => rng.i64(..),
                        _ => now + rng.i64(-5_000..5_000),
                    };
                    Some(format!(
                        "Bearer {}",
                        signature::sign_vonage("vsecret", vonage_body, iat)
                    ))
                }
                _ => Some(
                    String::from_utf8_lossy(&bytes_input(rng, &vonage_seeds, 512)).into_owned(),
                ),
            };
            let body = if rng.u8(..4) == 0 {
                random_bytes(rng, 64)
            } else {
                vonage_body.to_vec()
            };
            let now = match rng.u8(..4) {
                0 => rng.i64(..),
                _ => now + rng.i64(-5_000..5_000),
            };
            (header, body, now)
        },
        |(header, body, now)| {
            match signature::verify_vonage(header.as_deref(), "vsecret", body, *now, 300) {
                Err(e) => said(e),
                // Property: accepted only for this body, signed with this secret, iat fresh.
                Ok(()) => {
                    assert_eq!(
                        body.as_slice(),
                        vonage_body.as_slice(),
                        "accepted another body"
                    );
                }
            }
        },
    );
    run(
        "webhooks::signature::twilio",
        cases(),
        |rng| {
            let params: Vec<(String, String)> = (0..rng.usize(..6))
                .map(|_| (random_text(rng, 6), random_text(rng, 10)))
                .collect();
            (
                random_text(rng, 8),
                random_text(rng, 30),
                params,
                rng.u64(..),
            )
        },
        |(token, url, params, shuffle)| {
            let signed = signature::twilio(token, url, params);
            // Property: base64 of an HMAC-SHA1, independent of the parameters' order.
            assert_eq!(signed.len(), 28);
            let mut reordered = params.clone();
            Rng::with_seed(*shuffle).shuffle(&mut reordered);
            assert_eq!(signature::twilio(token, url, &reordered), signed);
        },
    );
}

#[test]
fn elevenlabs_bodies() {
    let seeds = vec![
        json!({"conversation_id": "conv-1", "speaker": "user", "message": "Hello there",
            "timestamp": "2026-11-21T10:00:00Z"}),
        json!({"conversation_id": "conv-1", "speaker": "agent", "message": "Hi", "timestamp": 1_795_255_200.5}),
        json!({"conversation_id": "conv-1", "speaker": "user", "message": "x", "timestamp": "2026-11-21T10:00:00"}),
        json!({"type": "post_call_transcription", "event_timestamp": 1_795_255_300, "data": {
            "conversation_id": "conv-1", "metadata": {"start_time_unix_secs": 1_795_255_200,
            "call_duration_secs": 42}, "transcript": [
                {"role": "agent", "message": "Hello", "time_in_call_secs": 0},
                {"role": "user", "message": "Hi", "time_in_call_secs": 2.5}]}}),
    ];
    for s in &seeds[..3] {
        assert!(elevenlabs::parse_turn(s).is_ok(), "seed {s}");
    }
    let seed_texts = texts(&seeds);
    run(
        "webhooks::elevenlabs body (serde_json + parse_turn + parse_timestamp)",
        cases(),
        |rng| json_input(rng, &seeds, &seed_texts).into_bytes(),
        |body| {
            // What the handler does with a body once its signature is checked.
            let Ok(value) = serde_json::from_slice::<Value>(body) else {
                return;
            };
            match elevenlabs::parse_turn(&value) {
                Err(e) => said(&e),
                Ok(turn) => {
                    let id = &turn.conversation_id;
                    assert!(!id.trim().is_empty() && id.len() <= 256);
                    assert!(matches!(turn.role, "agent" | "contact"));
                    assert_eq!(elevenlabs::role_of(&turn.label), Some(turn.role));
                }
            }
            // The post-call transcript's timestamps go through the same function.
            let data = &value["data"];
            for v in [
                &value["event_timestamp"],
                &data["metadata"]["start_time_unix_secs"],
            ] {
                if let Err(e) = elevenlabs::parse_timestamp(v) {
                    said(&e);
                }
            }
        },
    );
    run(
        "webhooks::elevenlabs::parse_timestamp",
        cases(),
        |rng| match rng.u8(..4) {
            0 => random_number(rng),
            1 => Value::String(random_text(rng, 30)),
            2 => Value::String(random_number(rng).to_string()),
            _ => {
                let mut b = b"2026-11-21T10:00:00.123+01:00".to_vec();
                mutate_bytes(rng, &mut b, &[b"1795255200.5".to_vec()]);
                Value::String(String::from_utf8_lossy(&b).into_owned())
            }
        },
        |value| {
            if let Err(e) = elevenlabs::parse_timestamp(value) {
                said(&e);
            }
        },
    );
}

#[test]
fn recording_callbacks() {
    let twilio_seeds = vec![
        b"AccountSid=AC1&CallSid=CA123&RecordingSid=RE456&RecordingStatus=completed\
          &RecordingDuration=42&RecordingUrl=https%3A%2F%2Fapi.twilio.com%2FRecordings%2FRE456\
          &To=%2B14155550100&From=%2B14155550199"
            .to_vec(),
        b"CallSid=CA1&RecordingSid=RE1&RecordingStatus=in-progress".to_vec(),
    ];
    for s in &twilio_seeds {
        assert!(callback_parse::parse_twilio_recording(s).is_ok());
    }
    let bounded = |value: &str, max: usize| {
        assert!(
            !value.is_empty() && value.chars().count() <= max,
            "{value:?}"
        );
        assert!(!value.chars().any(char::is_control), "{value:?}");
        assert_eq!(value, value.trim());
    };
    let (id, url) = (callback_parse::MAX_ID_CHARS, callback_parse::MAX_URL_CHARS);
    run(
        "webhooks::callback_parse::parse_twilio_recording",
        cases(),
        |rng| bytes_input(rng, &twilio_seeds, 256),
        |body| match callback_parse::parse_twilio_recording(body) {
            Err(e) => {
                said(&e);
                assert!(e.len() <= 1_024, "error of {} bytes", e.len());
            }
            Ok(r) => {
                for v in [&r.call_sid, &r.recording_sid, &r.status] {
                    bounded(v, id);
                }
                for v in [&r.to, &r.from].into_iter().flatten() {
                    bounded(v, id);
                }
                if let Some(u) = &r.recording_url {
                    bounded(u, url);
                }
                assert!(r.duration_secs.is_none_or(|d| d >= 0));
            }
        },
    );
    let vonage_seeds = vec![
        json!({"recording_url": "https://api.nexmo.com/v1/files/abc", "recording_uuid": "r-1",
            "conversation_uuid": "CON-1", "to": "14155550100", "from": "14155550199",
            "start_time": "2026-11-21T10:00:00Z", "end_time": "2026-11-21T10:01:05.500Z",
            "size": 12345}),
        json!({"recording_url": "u", "recording_uuid": "r", "conversation_uuid": "c"}),
    ];
    for s in &vonage_seeds {
        assert!(callback_parse::parse_vonage_recording(s.to_string().as_bytes()).is_ok());
    }
    let vonage_texts = texts(&vonage_seeds);
    run(
        "webhooks::callback_parse::parse_vonage_recording",
        cases(),
        |rng| json_input(rng, &vonage_seeds, &vonage_texts).into_bytes(),
        |body| match callback_parse::parse_vonage_recording(body) {
            Err(e) => {
                said(&e);
                assert!(e.len() <= 1_024, "error of {} bytes", e.len());
            }
            Ok(r) => {
                bounded(&r.recording_url, url);
                bounded(&r.recording_uuid, id);
                bounded(&r.conversation_uuid, id);
                for v in [&r.to, &r.from].into_iter().flatten() {
                    bounded(v, id);
                }
                assert!(r.duration_secs.is_none_or(|d| d >= 0));
            }
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Post-call extraction (the transcript comes from callers' speech and webhook bodies).

#[test]
fn builtin_extractor() {
    let sentences: Vec<Vec<u8>> = [
        "Hello. My name is John Smith. The heating in my house in Boston stopped working.",
        "Could someone come on Tuesday afternoon? I'm Ann-Marie, at 5 please.",
        "İmy name is 日本",
        "this is Ömer Çelik from İstanbul, i am in New York tomorrow morning",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let lists = extract::Lists {
        cities: vec!["Boston".into(), "New York".into(), "İstanbul".into()],
        service_categories: vec!["heating".into(), "plumbing".into(), "ß".into()],
    };
    run(
        "postcall::extract::extract",
        cases(),
        |rng| {
            let text = |rng: &mut Rng| {
                let mut bytes = match rng.u8(..4) {
                    0 => random_text(rng, 80).into_bytes(),
                    _ => bytes_input(rng, &sentences, 256),
                };
                // A transcript-sized piece: the extractor's cost grows with the text.
                bytes.truncate(300);
                String::from_utf8_lossy(&bytes).into_owned()
            };
            let contact = text(rng);
            let transcript = if rng.bool() {
                contact.clone()
            } else {
                text(rng)
            };
            let lists = if rng.u8(..4) == 0 {
                extract::Lists {
                    cities: (0..rng.usize(..3)).map(|_| random_text(rng, 6)).collect(),
                    service_categories: vec![random_text(rng, 4)],
                }
            } else {
                lists.clone()
            };
            (contact, transcript, lists)
        },
        |(contact, transcript, lists)| {
            let e = extract::extract(contact, transcript, lists);
            let f = &e.fields;
            let confidence = f["confidence"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&confidence));
            // Nothing invented: a name is words of the text; a city or category is listed.
            if let Some(name) = f["customer_name"]["value"].as_str() {
                for word in name.split(' ') {
                    assert!(
                        contact.contains(word) || transcript.contains(word),
                        "{word:?} invented"
                    );
                }
            }
            if let Some(city) = f["city"]["value"].as_str() {
                assert!(lists.cities.iter().any(|c| c == city));
            }
            if let Some(service) = f["service_category"]["value"].as_str() {
                assert!(lists.service_categories.iter().any(|c| c == service));
            }
        },
    );
}

// ---------------------------------------------------------------------------------------------
// What the harness found, pinned as plain tests.

#[test]
fn found_an_elevenlabs_timestamp_far_in_the_past_is_refused_without_overflow() {
    // `now - t` overflowed i64 (a panic in debug builds, a wrap to "not too old" in release).
    for t in [i64::MIN, i64::MIN + 1, -9_000_000_000_000_000_000] {
        let v0 = signature::elevenlabs_v0("whsec", &t.to_string(), b"{}");
        let header = format!("t={t},v0={v0}");
        assert_eq!(
            signature::verify_elevenlabs(Some(&header), "whsec", b"{}", 1_800_000_000, 1_800),
            Err("ElevenLabs-Signature is too old"),
            "t={t}"
        );
    }
}

#[test]
fn found_a_wav_announcing_a_tiny_sample_rate_does_not_decode_to_a_flood_of_samples() {
    // 1,000 bytes of 8-bit PCM "at 1 Hz" decoded to 16 million samples (64 MB, 39 s of CPU in a
    // debug build); a recording of the allowed size (`postcall.recording_max_bytes`, 200 MB)
    // would ask for 3.2e12 samples: the process aborts on allocation, a panic no task catches.
    // (Rates in this order so that, while it fails, it fails fast.)
    for rate in [1_000u32, 100, 10, 1] {
        let file = wav(1, 1, rate, 8, &[0x80; 200]);
        let started = Instant::now();
        let decoded = recording_audio::decode_to_16k_mono(&file, Some("wav"));
        let samples = decoded.as_ref().map_or(0, Vec::len);
        assert!(
            samples <= 64 * file.len() + 16_000,
            "{rate} Hz: {samples} samples from {} bytes in {:.2?}",
            file.len(),
            started.elapsed()
        );
    }
}
