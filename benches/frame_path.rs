//! Hot paths of the realtime call: PCM validation, carrier audio (μ-law decode + 8 → 16 kHz
//! resampling, Twilio message parsing, AudioSocket framing), the turn assembler, one validated
//! frame handed through the `SttActor` mailbox to the provider's audio channel, and one frame
//! from the transport's event stream through a live `CallActor` and its `SttActor` to the
//! provider.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use callengine::audio::pcm::{validate_frame, PcmFormat};
use callengine::stt::actor::{SttActor, SttAudio, SttGaveUp, SttLinks, SttPolicy, SttStatus};
use callengine::stt::{StreamConfig, SttEvent, SttFailure, SttProvider, SttSession};
use callengine::transcript::assembler::TurnAssembler;
use callengine::transcript::buffer::PersistTurn;
use callengine::transcript::buffer::{PartialUpdate, TranscriptBuffer};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_util::future::LocalBoxFuture;
use tokio::sync::mpsc;

fn pcm_validation(c: &mut Criterion) {
    let mut group = c.benchmark_group("pcm_validate");
    group.throughput(Throughput::Elements(1));
    let frame = vec![0u8; 640];
    group.bench_function("640B_ok", |b| {
        b.iter(|| validate_frame(PcmFormat::WIDEBAND, black_box(&frame)))
    });
    let bad = vec![0u8; 641];
    group.bench_function("641B_rejected", |b| {
        b.iter(|| validate_frame(PcmFormat::WIDEBAND, black_box(&bad)))
    });
    group.finish();
}

fn turn_assembler(c: &mut Criterion) {
    let mut group = c.benchmark_group("turn_assembler");
    group.throughput(Throughput::Elements(3));
    let now = Instant::now();
    let mut end = 0i64;
    let mut assembler = TurnAssembler::new("contact", Duration::from_secs(2));
    group.bench_function("partial_partial_final", |b| {
        b.iter(|| {
            end += 1000;
            let p = |t: &str| SttEvent::Partial {
                text: t.into(),
                start_ms: None,
                end_ms: None,
            };
            black_box(assembler.on_event(p("i would like"), now));
            black_box(assembler.on_event(p("i would like to book a"), now));
            let f = SttEvent::Final {
                text: format!("i would like to book a plumber {end}"),
                start_ms: None,
                end_ms: Some(end),
                confidence: Some(0.9),
            };
            black_box(assembler.on_event(f, now))
        })
    });
    group.finish();
}

/// A provider whose streams swallow audio (the boundary the benchmark stops at).
struct NullProvider;

impl SttProvider for NullProvider {
    fn name(&self) -> &'static str {
        "null"
    }

    fn open(
        &self,
        _config: StreamConfig,
    ) -> LocalBoxFuture<'static, Result<SttSession, SttFailure>> {
        let (audio, mut rx) = mpsc::channel(4096);
        let (_signals_tx, signals) = mpsc::unbounded_channel();
        actix::spawn(async move {
            let _keep = _signals_tx;
            while rx.recv().await.is_some() {}
        });
        Box::pin(async move { Ok(SttSession { audio, signals }) })
    }
}

/// Absorbs everything the STT actor reports.
struct Sink;

impl Actor for Sink {
    type Context = Context<Self>;
}

macro_rules! absorb {
    ($($msg:ty),+) => {$(
        impl Handler<$msg> for Sink {
            type Result = ();
            fn handle(&mut self, _msg: $msg, _ctx: &mut Self::Context) {}
        }
    )+};
}
absorb!(PersistTurn, PartialUpdate, SttStatus, SttGaveUp);

fn frame_to_stt(c: &mut Criterion) {
    let system = actix::System::new();
    let stt = system.block_on(async {
        let sink = Sink.start();
        let transcript = TranscriptBuffer::new(
            "contact",
            Some(Duration::from_secs(2)),
            sink.clone().recipient(),
            sink.clone().recipient(),
        )
        .start();
        let policy = SttPolicy {
            restart_max: 3,
            restart_window: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(5),
            replay_buffer_ms: 10_000,
            audio_queue_frames: 50,
            finalize_timeout: Duration::from_secs(1),
            sample_rate: 16_000,
            api_key: None,
        };
        let links = SttLinks {
            transcript,
            status: sink.clone().recipient(),
            gave_up: sink.recipient(),
            mailbox: Default::default(),
            replay_bytes: Default::default(),
            live: Default::default(),
        };
        let addr = SttActor::new(uuid::Uuid::nil(), Arc::new(NullProvider), policy, links).start();
        // Let the stream connect before measuring.
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        addr
    });
    let frame = Bytes::from(vec![0u8; 640]);
    let mut group = c.benchmark_group("frame_path");
    group.throughput(Throughput::Elements(1));
    group.bench_function("validate_and_hand_to_stt", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let millis = validate_frame(PcmFormat::WIDEBAND, &frame).unwrap();
                    stt.send(SttAudio {
                        pcm: frame.clone(),
                        millis,
                        source: None,
                    })
                    .await
                    .unwrap();
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

fn carrier_audio(c: &mut Criterion) {
    use callengine::audio::g711;
    use callengine::media::normalize::{AudioFormat, Encoding, Normalizer};
    use callengine::media::{audiosocket, twilio};

    let mut group = c.benchmark_group("carrier_audio");
    group.throughput(Throughput::Elements(1));
    let ulaw: Vec<u8> = (0..160u32).map(|i| (i * 37 % 256) as u8).collect();
    let mut decoded = Vec::with_capacity(160);
    group.bench_function("ulaw_decode_160B", |b| {
        b.iter(|| {
            decoded.clear();
            g711::decode_ulaw(black_box(&ulaw), &mut decoded);
            black_box(decoded.len())
        })
    });
    let mut normalizer = Normalizer::new(AudioFormat {
        encoding: Encoding::Mulaw,
        sample_rate: 8_000,
        channels: 1,
    })
    .unwrap();
    group.bench_function("ulaw_8k_to_16k_frame", |b| {
        b.iter(|| {
            let mut frames = 0;
            normalizer.push(black_box(&ulaw), |_, f| {
                frames += f.len();
            });
            black_box(frames)
        })
    });
    let mut l16 = Normalizer::new(AudioFormat {
        encoding: Encoding::L16,
        sample_rate: 8_000,
        channels: 1,
    })
    .unwrap();
    let slin = vec![3u8; 320];
    group.bench_function("slin_8k_to_16k_frame", |b| {
        b.iter(|| {
            let mut frames = 0;
            l16.push(black_box(&slin), |_, f| {
                frames += f.len();
            });
            black_box(frames)
        })
    });
    let payload = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &ulaw);
    let message = format!(
        r#"{{"event":"media","sequenceNumber":"42","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0","media":{{"track":"inbound","chunk":"41","timestamp":"820","payload":"{payload}"}}}}"#
    );
    group.bench_function("twilio_media_parse", |b| {
        b.iter(|| black_box(twilio::parse(black_box(&message)).unwrap()))
    });
    let frame = audiosocket::encode(0x10, &[1u8; 320]);
    let mut decoder = audiosocket::Decoder::default();
    group.bench_function("audiosocket_frame", |b| {
        b.iter(|| {
            decoder.push(black_box(&frame));
            black_box(decoder.next_frame().unwrap())
        })
    });
    group.finish();
}

/// A provider that counts the audio its streams receive (the boundary the benchmark stops at)
/// and says when a stream is open.
struct CountingProvider {
    received: Arc<std::sync::atomic::AtomicU64>,
    opened: Arc<std::sync::atomic::AtomicBool>,
}

impl SttProvider for CountingProvider {
    fn name(&self) -> &'static str {
        "counting"
    }

    fn open(
        &self,
        _config: StreamConfig,
    ) -> LocalBoxFuture<'static, Result<SttSession, SttFailure>> {
        use std::sync::atomic::Ordering;
        let (audio, mut rx) = mpsc::channel(4096);
        let (signals_tx, signals) = mpsc::unbounded_channel();
        let received = self.received.clone();
        actix::spawn(async move {
            let _keep = signals_tx;
            while let Some(input) = rx.recv().await {
                if matches!(input, callengine::stt::SttInput::Audio { .. }) {
                    received.fetch_add(1, Ordering::Release);
                }
            }
        });
        self.opened.store(true, Ordering::Release);
        Box::pin(async move { Ok(SttSession { audio, signals }) })
    }
}

fn call_actor_to_provider(c: &mut Criterion) {
    use callengine::call::actor::{CallActor, CallParams};
    use callengine::call::registry::CallRegistry;
    use callengine::call::{CallDeps, SttProviders};
    use callengine::media::{MediaEvent, MediaInput};
    use callengine::store::{NewTenant, Protocol, Store};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let system = actix::System::new();
    let dir = tempfile::tempdir().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(AtomicBool::new(false));
    let media = system.block_on(async {
        let settings = callengine::config::Settings::load_from(
            None,
            [
                (
                    "CALLENGINE_DATA_DIR".to_string(),
                    dir.path().display().to_string(),
                ),
                (
                    "CALLENGINE_CALLS__IDLE_TIMEOUT_SECS".to_string(),
                    "3600".to_string(),
                ),
            ],
        )
        .unwrap();
        let url = settings.database_url().unwrap();
        let store = Store::connect(&url, settings.store_options()).unwrap();
        callengine::app::migrate_with_retry(&store, &url, Duration::from_secs(10))
            .await
            .unwrap();
        let tenant = store
            .insert_tenant(&NewTenant {
                name: "bench".into(),
                ..NewTenant::default()
            })
            .await
            .unwrap();
        let provider = Arc::new(CountingProvider {
            received: received.clone(),
            opened: opened.clone(),
        });
        let deps = Arc::new(CallDeps::new(
            &settings.stt,
            &settings.calls,
            &settings.data_dir,
            store,
            SttProviders::new(provider, Vec::new()),
            CallRegistry::roster(&CallRegistry::default().start()),
            actix::Arbiter::new().handle(),
        ));
        let (media, rx) = mpsc::unbounded_channel::<MediaEvent>();
        let input: MediaInput = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|event| (event, rx))
        }));
        let (out, mut drain) = mpsc::channel(1024);
        actix::spawn(async move { while drain.recv().await.is_some() {} });
        let params = CallParams {
            call_id: None,
            tenant_id: tenant.id,
            campaign_id: None,
            lead_id: None,
            phone_number: None,
            external_id: None,
            protocol: Protocol::Voice,
            speakers: vec!["contact".into()],
            metadata: None,
        };
        CallActor::new(deps, params, input, out, None).start();
        // The call is live once its STT stream is open.
        while !opened.load(Ordering::Acquire) {
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
        media
    });
    let frame = Bytes::from(vec![0u8; 640]);
    let mut group = c.benchmark_group("frame_path");
    group.throughput(Throughput::Elements(1));
    group.bench_function("call_actor_to_provider", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let target = received.load(Ordering::Acquire) + 1;
                    media
                        .send(MediaEvent::Audio {
                            channel: 0,
                            pcm: frame.clone(),
                            source: None,
                        })
                        .unwrap();
                    while received.load(Ordering::Acquire) < target {
                        tokio::task::yield_now().await;
                    }
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    pcm_validation,
    carrier_audio,
    turn_assembler,
    frame_to_stt,
    call_actor_to_provider
);
criterion_main!(benches);
