//! Round trips and edge cases of the packed formats in `bitnet_quant::formats`
//! (the x86 I2_S layout is tested in `formats::i2s`; here it joins the cross-format checks).

use bitnet_core::Error;
use bitnet_quant::formats::{ggml, hf_packed, i2s, i2s_arm, to_ternary, tq1, tq2, TernaryFormat};
use half::f16;
use proptest::prelude::*;

/// `rows x cols` random ternary values, `rows` a multiple of `rm` (1..=max_r of them),
/// `cols` a multiple of `cm` (1..=max_c of them).
fn ternary(
    rm: usize,
    max_r: usize,
    cm: usize,
    max_c: usize,
) -> impl Strategy<Value = (Vec<i8>, usize, usize)> {
    (1..=max_r, 1..=max_c).prop_flat_map(move |(r, c)| {
        let (rows, cols) = (r * rm, c * cm);
        prop::collection::vec(-1i8..=1, rows * cols).prop_map(move |v| (v, rows, cols))
    })
}

/// The f16 value a TQ block stores for `scale`.
fn f16_round(scale: f32) -> f32 {
    f16::from_f32(scale).to_f32()
}

/// Asserts a returned TQ scale is the f16 rounding of `scale` (relative error <= 2^-11).
fn assert_f16_scale(got: f32, scale: f32) {
    assert_eq!(got, f16_round(scale));
    assert!((got - scale).abs() <= scale / 2048.0, "{got} vs {scale}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn tq2_round_trips_values_and_scale_within_f16((v, rows, cols) in ternary(1, 4, tq2::BLOCK, 3), scale in 1e-3f32..1e3) {
        let p = tq2::pack(&v, rows, cols, scale).unwrap();
        prop_assert_eq!(p.len(), tq2::size(rows, cols).unwrap());
        let (back, s) = tq2::unpack(&p, rows, cols).unwrap();
        prop_assert_eq!(back, v);
        assert_f16_scale(s, scale);
        let (_, per_block) = tq2::unpack_with_block_scales(&p, rows, cols).unwrap();
        prop_assert_eq!(per_block.len(), rows * cols / tq2::BLOCK);
        prop_assert!(per_block.iter().all(|&d| d == f16_round(scale)));
    }

    #[test]
    fn tq1_round_trips_values_and_scale_within_f16((v, rows, cols) in ternary(1, 4, tq1::BLOCK, 3), scale in 1e-3f32..1e3) {
        let p = tq1::pack(&v, rows, cols, scale).unwrap();
        prop_assert_eq!(p.len(), tq1::size(rows, cols).unwrap());
        let (back, s) = tq1::unpack(&p, rows, cols).unwrap();
        prop_assert_eq!(back, v);
        assert_f16_scale(s, scale);
    }

    #[test]
    fn hf_packed_round_trips_values((v, rows, cols) in ternary(4, 5, 1, 40)) {
        let p = hf_packed::pack(&v, rows, cols).unwrap();
        prop_assert_eq!(p.len(), rows * cols / 4);
        prop_assert_eq!(hf_packed::unpack(&p, rows, cols).unwrap(), v);
    }

    #[test]
    fn i2s_arm_round_trips_values_and_exact_f32_scale((v, rows, cols) in ternary(1, 4, i2s_arm::BLOCK, 6), scale in 1e-6f32..1e6) {
        let p = i2s_arm::pack(&v, rows, cols, scale).unwrap();
        prop_assert_eq!(p.len(), rows * cols / 4 + 32);
        let (back, s) = i2s_arm::unpack(&p, rows, cols).unwrap();
        prop_assert_eq!(back, v);
        prop_assert_eq!(s.to_bits(), scale.to_bits());
    }

    #[test]
    fn all_formats_unpack_to_the_same_values((v, rows, cols) in ternary(4, 2, 256, 2), scale in 1e-3f32..1e3) {
        let tq2 = tq2::unpack(&tq2::pack(&v, rows, cols, scale).unwrap(), rows, cols).unwrap();
        let tq1 = tq1::unpack(&tq1::pack(&v, rows, cols, scale).unwrap(), rows, cols).unwrap();
        let hf = hf_packed::unpack(&hf_packed::pack(&v, rows, cols).unwrap(), rows, cols).unwrap();
        let arm = i2s_arm::unpack(&i2s_arm::pack(&v, rows, cols, scale).unwrap(), rows, cols).unwrap();
        prop_assert_eq!(&tq2.0, &tq1.0);
        prop_assert_eq!(&tq2.0, &hf);
        prop_assert_eq!(&tq2.0, &arm.0);
        let x86 = i2s::unpack(&i2s::pack(&v, rows, cols, scale).unwrap(), rows, cols).unwrap();
        prop_assert_eq!(&tq2.0, &x86.0);
        prop_assert_eq!(x86.1.to_bits(), arm.1.to_bits());
        prop_assert_eq!(tq2.1, tq1.1);
        assert_f16_scale(tq2.1, arm.1);
    }

    #[test]
    fn to_ternary_dispatches_to_each_format((v, rows, cols) in ternary(4, 2, 256, 2), scale in 1e-3f32..1e3) {
        let p = tq2::pack(&v, rows, cols, scale).unwrap();
        prop_assert_eq!(to_ternary(TernaryFormat::TQ2_0, &p, rows, cols).unwrap(), (v.clone(), f16_round(scale)));
        let p = tq1::pack(&v, rows, cols, scale).unwrap();
        prop_assert_eq!(to_ternary(TernaryFormat::TQ1_0, &p, rows, cols).unwrap(), (v.clone(), f16_round(scale)));
        let p = i2s::pack(&v, rows, cols, scale).unwrap();
        prop_assert_eq!(to_ternary(TernaryFormat::I2S, &p, rows, cols).unwrap(), (v.clone(), scale));
        let p = hf_packed::pack(&v, rows, cols).unwrap();
        prop_assert_eq!(to_ternary(TernaryFormat::HfPacked, &p, rows, cols).unwrap(), (v.clone(), 1.0));
        for f in TernaryFormat::ALL {
            prop_assert_eq!(f.size_bytes(rows, cols).unwrap(), f.dtype().storage_bytes(rows * cols).unwrap());
        }
    }

    #[test]
    fn q8_0_dequantizes_within_half_a_step(x in prop::collection::vec(-50f32..50.0, 96)) {
        let bytes = ggml::quantize_q8_0(&x).unwrap();
        prop_assert_eq!(bytes.len(), ggml::q8_0_size(x.len()).unwrap());
        let y = ggml::dequantize_q8_0(&bytes, x.len()).unwrap();
        for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
            let d = xb.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (a, b) in xb.iter().zip(yb) {
                prop_assert!((a - b).abs() <= 0.6 * d + 1e-6, "{} vs {} (d = {})", a, b, d);
            }
        }
    }

    #[test]
    fn q6_k_matches_an_independent_rederivation(raw in prop::collection::vec(any::<u8>(), 2 * ggml::Q6_K_BLOCK_BYTES), d in 1e-4f32..10.0) {
        let mut bytes = raw;
        for b in bytes.chunks_mut(ggml::Q6_K_BLOCK_BYTES) {
            b[208..].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        }
        let got = ggml::dequantize_q6_k(&bytes, 512).unwrap();
        let want: Vec<f32> = bytes.chunks(ggml::Q6_K_BLOCK_BYTES).flat_map(q6_k_reference).collect();
        prop_assert_eq!(got, want);
    }
}

/// Q6_K by element index, re-derived from ggml's `dequantize_row_q6_K`: element `e` sits in
/// half `h = e / 128`, group `g = (e % 128) / 32`, lane `l = e % 32`; its low nibble is in
/// `ql[64h + l + 32 (g % 2)]` (high nibble when `g >= 2`), its top two bits are bits `2g` of
/// `qh[32h + l]`, and its scale is `scales[8h + 2g + l / 16]`.
fn q6_k_reference(block: &[u8]) -> Vec<f32> {
    let d = f16::from_le_bytes([block[208], block[209]]).to_f32();
    (0..256)
        .map(|e| {
            let (h, g, l) = (e / 128, (e % 128) / 32, e % 32);
            let ql = block[64 * h + l + 32 * (g % 2)];
            let low = if g >= 2 { ql >> 4 } else { ql & 0xF };
            let high = (block[128 + 32 * h + l] >> (2 * g)) & 3;
            let q = i32::from(low | (high << 4)) - 32;
            let s = block[192 + 8 * h + 2 * g + l / 16] as i8;
            d * f32::from(s) * q as f32
        })
        .collect()
}

#[test]
fn q6_k_hand_built_block_gives_hand_computed_values() {
    let mut b = vec![0u8; ggml::Q6_K_BLOCK_BYTES];
    b[0] = 0x21; // ql[0]: low nibble 1 (element 0), high nibble 2 (element 64)
    b[128] = 0b11_10_01_00; // qh[0]: element 0 -> 0, 32 -> 1, 64 -> 2, 96 -> 3
    b[64] = 0x0F; // ql[64]: element 128's low nibble
    b[160] = 0b11; // qh[32]: element 128's top bits
    let scales: [i8; 16] = [3, 0, -2, 0, 5, 0, -1, 0, 7, 0, 0, 0, 0, 0, 0, 0];
    for (dst, s) in b[192..208].iter_mut().zip(scales) {
        *dst = s as u8;
    }
    b[208..].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
    let y = ggml::dequantize_q6_k(&b, 256).unwrap();
    assert_eq!(y[0], -23.25); // q = 1: 0.25 * 3 * (1 - 32)
    assert_eq!(y[32], 8.0); // q = 0 | 1 << 4: 0.25 * -2 * (16 - 32)
    assert_eq!(y[64], 2.5); // q = 2 | 2 << 4: 0.25 * 5 * (34 - 32)
    assert_eq!(y[96], -4.0); // q = 0 | 3 << 4: 0.25 * -1 * (48 - 32)
    assert_eq!(y[128], 54.25); // q = 15 | 3 << 4, scale 8: 0.25 * 7 * (63 - 32)
    assert_eq!(y[1], -24.0); // q = 0: 0.25 * 3 * -32
    assert_eq!(y, q6_k_reference(&b));
}

#[test]
fn tq1_block_bytes_match_a_hand_derivation_from_ggml() {
    // All zeros: each qs byte encodes digits 1,1,1,1,1 (q = 121) -> ceil(121*256/243) = 128;
    // each qh byte 1,1,1,1 then *3 (q = 120) -> 127.
    let mut v = vec![0i8; 256];
    let p = tq1::pack(&v, 1, 256, 1.0).unwrap();
    assert!(p[..48].iter().all(|&b| b == 128));
    assert!(p[48..52].iter().all(|&b| b == 127));
    assert_eq!(&p[52..], &f16::from_f32(1.0).to_le_bytes());

    v[0] = 1; // qs[0], first digit: q = 2*81 + 27 + 9 + 3 + 1 = 202 -> 213
    v[160] = 1; // qs[32], first digit: same byte value
    v[239] = -1; // 160 + 15 + 4*16: qs[47], last digit: q = 81 + 27 + 9 + 3 = 120 -> 127
    v[255] = -1; // 240 + 3 + 4*3: qh[3], fourth digit: q = (27 + 9 + 3) * 3 = 117 -> 124
    let p = tq1::pack(&v, 1, 256, 1.0).unwrap();
    assert_eq!((p[0], p[32], p[47], p[51]), (213, 213, 127, 124));
    assert_eq!(tq1::unpack(&p, 1, 256).unwrap().0, v);
}

fn is_shape<T>(r: Result<T, Error>) -> bool {
    matches!(r, Err(Error::Shape(_)))
}

fn is_invalid<T>(r: Result<T, Error>) -> bool {
    matches!(r, Err(Error::InvalidArgument(_)))
}

#[test]
fn wrong_buffer_lengths_are_shape_errors() {
    assert!(is_shape(tq2::unpack(&[0; 65], 1, 256)));
    assert!(is_shape(tq1::unpack(&[0; 55], 1, 256)));
    assert!(is_shape(hf_packed::unpack(&[0; 3], 4, 4)));
    assert!(is_shape(i2s_arm::unpack(&[0; 16], 1, 64)));
    assert!(is_shape(ggml::dequantize_q6_k(&[0; 209], 256)));
    assert!(is_shape(ggml::dequantize_q8_0(&[0; 35], 32)));
    assert!(is_shape(tq2::pack(&[0; 255], 1, 256, 1.0)));
    assert!(is_shape(tq1::pack(&[0; 257], 1, 256, 1.0)));
    assert!(is_shape(hf_packed::pack(&[0; 15], 4, 4)));
    assert!(is_shape(i2s_arm::pack(&[0; 63], 1, 64, 1.0)));
    assert!(is_shape(to_ternary(TernaryFormat::TQ2_0, &[0; 10], 1, 256)));
}

#[test]
fn dims_not_divisible_by_the_block_are_shape_errors() {
    assert!(is_shape(tq2::size(2, 128)));
    assert!(is_shape(tq1::size(1, 300)));
    assert!(is_shape(hf_packed::size(6, 8)));
    assert!(is_shape(i2s_arm::size(1, 32)));
    assert!(is_shape(ggml::q8_0_size(33)));
    assert!(is_shape(ggml::q6_k_size(128)));
    assert!(is_shape(tq2::size(0, 256)));
    assert!(is_shape(TernaryFormat::I2S.size_bytes(1, 64)));
}

#[test]
fn non_ternary_values_are_invalid_arguments() {
    let mut v = vec![0i8; 256];
    v[17] = 2;
    assert!(is_invalid(tq2::pack(&v, 1, 256, 1.0)));
    assert!(is_invalid(tq1::pack(&v, 1, 256, 1.0)));
    assert!(is_invalid(hf_packed::pack(&v, 4, 64)));
    v[17] = -2;
    assert!(is_invalid(i2s_arm::pack(&v, 1, 256, 1.0)));
}

#[test]
fn bad_scales_are_invalid_arguments() {
    let v = vec![0i8; 256];
    assert!(is_invalid(tq2::pack(&v, 1, 256, 70000.0)));
    assert!(is_invalid(tq1::pack(&v, 1, 256, f32::INFINITY)));
    assert!(is_invalid(i2s_arm::pack(&v, 1, 256, -1.0)));
}

#[test]
fn bad_format_names_are_invalid_arguments_listing_the_valid_ones() {
    for bad in ["", "i2", "tq3_0", "q8_0", "hf"] {
        let e = bad.parse::<TernaryFormat>().unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{bad}");
        assert!(e.to_string().contains("i2_s, tq1_0, tq2_0, hf_packed"), "{e}");
    }
    assert_eq!("Tq1_0".parse::<TernaryFormat>().unwrap(), TernaryFormat::TQ1_0);
    assert_eq!("HF_PACKED".parse::<TernaryFormat>().unwrap(), TernaryFormat::HfPacked);
    assert_eq!("I2_S".parse::<TernaryFormat>().unwrap(), TernaryFormat::I2S);
}

#[test]
fn tq_tensors_with_differing_block_scales_are_unsupported() {
    let v = vec![-1i8; 512];
    let mut p = tq1::pack(&v, 2, 256, 0.5).unwrap();
    p[54 + 52..].copy_from_slice(&f16::from_f32(0.75).to_le_bytes());
    let e = tq1::unpack(&p, 2, 256).unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)));
    assert!(e.to_string().contains("TQ1_0 tensor with differing block scales"), "{e}");
    assert_eq!(tq1::unpack_with_block_scales(&p, 2, 256).unwrap().1, vec![0.5, 0.75]);

    // One f16 step apart counts as the same scale (a converter may round per block).
    let mut p = tq2::pack(&v, 2, 256, 0.5).unwrap();
    let next = f16::from_bits(f16::from_f32(0.5).to_bits() + 1);
    p[66 + 64..].copy_from_slice(&next.to_le_bytes());
    assert_eq!(tq2::unpack(&p, 2, 256).unwrap().1, 0.5);
}
