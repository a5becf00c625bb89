use super::*;

/// Writes a model.bin in CTranslate2's layout (for tests).
pub fn write_model(vars: &[(&str, Vec<usize>, u8, Vec<u8>)], aliases: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    let s = |b: &mut Vec<u8>, text: &str| {
        b.extend_from_slice(&((text.len() + 1) as u16).to_le_bytes());
        b.extend_from_slice(text.as_bytes());
        b.push(0);
    };
    b.extend_from_slice(&6u32.to_le_bytes());
    s(&mut b, "WhisperSpec");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&(vars.len() as u32).to_le_bytes());
    for (name, shape, dtype, data) in vars {
        s(&mut b, name);
        b.push(shape.len() as u8);
        for d in shape {
            b.extend_from_slice(&(*d as u32).to_le_bytes());
        }
        b.push(*dtype);
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(data);
    }
    b.extend_from_slice(&(aliases.len() as u32).to_le_bytes());
    for (a, t) in aliases {
        s(&mut b, a);
        s(&mut b, t);
    }
    b
}

fn f16s(values: &[u16]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn tiny() -> Vec<u8> {
    let one = 0x3c00u16; // 1.0 in f16
    write_model(
        &[
            ("decoder/num_heads", vec![], 2, vec![6, 0]),
            (
                "encoder/conv1/weight",
                vec![2, 1, 1],
                4,
                f16s(&[one, 0x4000]),
            ),
            (
                "decoder/embeddings/weight",
                vec![2, 1],
                4,
                f16s(&[one, one]),
            ),
            ("decoder/layer_norm/gamma", vec![1], 4, f16s(&[one])),
            (
                "encoder/layer_0/self_attention/linear_0/weight",
                vec![3, 1],
                4,
                f16s(&[1, 2, 3]),
            ),
            (
                "encoder/layer_0/self_attention/linear_0/bias",
                vec![3],
                4,
                f16s(&[7, 0, 9]),
            ),
            (
                "decoder/layer_0/attention/linear_1/weight",
                vec![2, 1],
                4,
                f16s(&[4, 5]),
            ),
            (
                "decoder/layer_0/attention/layer_norm/beta",
                vec![1],
                4,
                f16s(&[0]),
            ),
        ],
        &[("decoder/projection/weight", "decoder/embeddings/weight")],
    )
}

#[test]
fn parses_variables_and_aliases() {
    let model = parse(&tiny()).unwrap();
    assert_eq!(
        (model.version, model.spec.as_str(), model.revision),
        (6, "WhisperSpec", 3)
    );
    assert_eq!(model.variables.len(), 8);
    assert_eq!(
        model.aliases["decoder/projection/weight"],
        "decoder/embeddings/weight"
    );
    assert_eq!(
        model.variables["encoder/conv1/weight"].to_f32().unwrap(),
        vec![1.0, 2.0]
    );
}

#[test]
fn maps_and_splits_to_huggingface_names() {
    let hf = to_hf_names(&parse(&tiny()).unwrap()).unwrap();
    let q = &hf["model.encoder.layers.0.self_attn.q_proj.weight"];
    assert_eq!((q.shape.clone(), q.data.clone()), (vec![1, 1], f16s(&[1])));
    assert_eq!(
        hf["model.encoder.layers.0.self_attn.v_proj.weight"].data,
        f16s(&[3])
    );
    assert_eq!(
        hf["model.encoder.layers.0.self_attn.q_proj.bias"].data,
        f16s(&[7])
    );
    assert!(
        !hf.contains_key("model.encoder.layers.0.self_attn.k_proj.bias"),
        "zero k bias dropped"
    );
    assert_eq!(
        hf["model.decoder.layers.0.encoder_attn.k_proj.weight"].data,
        f16s(&[4])
    );
    assert_eq!(
        hf["model.decoder.layers.0.encoder_attn.v_proj.weight"].data,
        f16s(&[5])
    );
    assert!(hf.contains_key("model.decoder.layers.0.encoder_attn_layer_norm.bias"));
    assert!(hf.contains_key("model.decoder.embed_tokens.weight"));
    assert!(
        !hf.keys().any(|k| k.contains("num_heads")),
        "scalars dropped"
    );
}

#[test]
fn rejects_truncated_and_foreign_files() {
    let bytes = tiny();
    assert!(matches!(
        parse(&bytes[..bytes.len() - 3]),
        Err(Ct2Error::Truncated(_))
    ));
    let mut other = bytes.clone();
    other[0] = 5;
    assert!(matches!(parse(&other), Err(Ct2Error::Unsupported(_))));
    let bad_bias = write_model(
        &[(
            "encoder/layer_0/self_attention/linear_0/bias",
            vec![3],
            4,
            f16s(&[1, 1, 1]),
        )],
        &[],
    );
    let err = to_hf_names(&parse(&bad_bias).unwrap()).unwrap_err();
    assert!(err.to_string().contains("non-zero bias"), "{err}");
}

#[test]
fn half_precision_conversion_matches_reference_values() {
    for (bits, value) in [
        (0x3c00u16, 1.0f32),
        (0xc000, -2.0),
        (0x3555, 0.333_251_95),
        (0x0001, 5.960_464_5e-8),
        (0x7bff, 65504.0),
    ] {
        assert_eq!(f16_to_f32(bits), value, "{bits:#06x}");
    }
    assert!(f16_to_f32(0x7c00).is_infinite());
}
