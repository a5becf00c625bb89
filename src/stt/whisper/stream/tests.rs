use super::*;

fn frame(level: i16) -> Vec<u8> {
    (0..320)
        .flat_map(|i| if i % 2 == 0 { level } else { -level }.to_le_bytes())
        .collect()
}

#[test]
fn segments_speech_between_silences() {
    let settings = WhisperSettings {
        silence_ms: 100,
        min_speech_ms: 60,
        ..WhisperSettings::default()
    };
    let mut s = Segmenter::new(&settings);
    let (loud, quiet) = (frame(3_000), frame(0));
    let mut cuts = Vec::new();
    let mut at = 0;
    for f in [
        &quiet, &loud, &loud, &loud, &loud, &quiet, &quiet, &quiet, &quiet, &quiet, &quiet, &loud,
        &quiet,
    ] {
        let cut = s.push(f, at);
        if cut != Cut::None {
            cuts.push(cut);
        }
        at += 20;
    }
    assert_eq!(
        cuts,
        vec![
            Cut::Start(20),
            Cut::End {
                start_ms: 20,
                end_ms: 100
            },
            Cut::Start(220)
        ]
    );
    assert_eq!(s.open(260), None, "20 ms of speech is too short to decode");
}

#[test]
fn long_speech_is_cut_at_the_maximum() {
    let settings = WhisperSettings {
        max_segment_ms: 200,
        min_speech_ms: 60,
        ..WhisperSettings::default()
    };
    let mut s = Segmenter::new(&settings);
    let loud = frame(3_000);
    let cuts: Vec<Cut> = (0..12)
        .map(|i| s.push(&loud, i * 20))
        .filter(|c| *c != Cut::None)
        .collect();
    assert_eq!(
        cuts[..2],
        [
            Cut::Start(0),
            Cut::End {
                start_ms: 0,
                end_ms: 200
            }
        ]
    );
}
