//! The CPU backend's KV cache in f16: rounding on store, attention as over an f32 cache of the
//! rounded values, overflow, size and bounds.

use super::*;

/// A deterministic spread of magnitudes (1e-6 to 40, both signs): most values are not f16
/// values, some are f16 subnormals.
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            let mag = 10f32.powf(u * 7.6 - 6.0);
            if x & 1 == 0 {
                mag
            } else {
                -mag
            }
        })
        .collect()
}

fn rounded(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| f16::from_f32(v).to_f32()).collect()
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn f16_cache_attends_as_an_f32_cache_of_the_rounded_values() {
    let b = CpuBackend::new(2);
    let (heads, kv_heads, head_dim) = (6, 2, 40); // GQA: 3 query heads per KV head
    let shape = AttnShape { heads, kv_heads, head_dim };
    let s16 = CacheShape { layers: 2, slots: 3, max_seq: 24, kv_heads, head_dim, kv: KvType::F16 };
    let mut c16 = b.kv_cache(s16).unwrap();
    let mut c32 = b.kv_cache(CacheShape { kv: KvType::F32, ..s16 }).unwrap();
    // Unrounded f32 inputs: what the f16 cache gives must differ from attending over them.
    let mut c_raw = b.kv_cache(CacheShape { kv: KvType::F32, ..s16 }).unwrap();
    let mut differs = false;
    // A prefill of slot 1, then mixed batches of rows from every slot at different positions.
    let mut steps: Vec<Vec<RowPos>> = vec![(0..7).map(|pos| RowPos { slot: 1, pos }).collect()];
    for t in 0..12 {
        let mut rows = vec![RowPos { slot: 0, pos: t }, RowPos { slot: 1, pos: 7 + t }];
        if t % 3 == 0 {
            rows.push(RowPos { slot: 2, pos: t / 3 });
        }
        steps.push(rows);
    }
    for (i, rows) in steps.iter().enumerate() {
        let n = rows.len();
        for layer in 0..2 {
            let seed = (i * 2 + layer) as u64 * 3;
            let k = values(n * kv_heads * head_dim, seed);
            let v = values(n * kv_heads * head_dim, seed + 1);
            let q = b.upload(&values(n * heads * head_dim, seed + 2)).unwrap();
            let (kr, vr) = (b.upload(&rounded(&k)).unwrap(), b.upload(&rounded(&v)).unwrap());
            let (k, v) = (b.upload(&k).unwrap(), b.upload(&v).unwrap());
            b.store_kv(&mut c16, layer, &k, &v, rows).unwrap();
            b.store_kv(&mut c32, layer, &kr, &vr, rows).unwrap();
            b.store_kv(&mut c_raw, layer, &k, &v, rows).unwrap();
            let mut o = [(); 3].map(|_| b.alloc(n * heads * head_dim).unwrap());
            for (c, o) in [&c16, &c32, &c_raw].into_iter().zip(o.iter_mut()) {
                b.attention(&q, c, layer, rows, shape, o).unwrap();
            }
            assert_eq!(bits(&o[0]), bits(&o[1]), "step {i} layer {layer}");
            assert!(o[0].iter().all(|x| x.is_finite()));
            differs |= bits(&o[0]) != bits(&o[2]);
        }
    }
    assert!(differs, "the f16 cache did not round");
}

#[test]
fn f16_cache_stores_values_beyond_65504_as_inf() {
    // One position attended by one head gives back its value row exactly (weight 1).
    let b = CpuBackend::new(1);
    let hd = 8;
    let shape = AttnShape { heads: 1, kv_heads: 1, head_dim: hd };
    let s =
        CacheShape { layers: 1, slots: 1, max_seq: 2, kv_heads: 1, head_dim: hd, kv: KvType::F16 };
    let mut c = b.kv_cache(s).unwrap();
    let q = b.upload(&[1.0; 8]).unwrap();
    // 65519.996 rounds down to the largest f16; 65520 is the tie and goes to even: inf.
    let v = [65504.0, 65519.996, 65520.0, 1e6, -1e6, f32::NAN, 1.0, 3e-8];
    let k = b.upload(&[0.0; 8]).unwrap();
    let row0 = [RowPos { slot: 0, pos: 0 }];
    b.store_kv(&mut c, 0, &k, &b.upload(&v).unwrap(), &row0).unwrap();
    let mut out = b.alloc(hd).unwrap();
    b.attention(&q, &c, 0, &row0, shape, &mut out).unwrap();
    let inf = f32::INFINITY;
    assert_eq!(&out[..5], &[65504.0, 65504.0, inf, inf, -inf]);
    assert!(out[5].is_nan());
    assert_eq!(out[6], 1.0);
    assert_eq!(out[7], f16::from_f32(3e-8).to_f32()); // a subnormal f16, not flushed
    assert!(out[7] > 0.0);
    // A key that overflows: the row attending to it gets a NaN score (inf - inf in the
    // softmax), so its output is NaN, as with an f32 cache holding inf; no panic.
    let big = b.upload(&[1e5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]).unwrap();
    let row1 = [RowPos { slot: 0, pos: 1 }];
    b.store_kv(&mut c, 0, &big, &b.upload(&[1.0; 8]).unwrap(), &row1).unwrap();
    b.attention(&q, &c, 0, &row1, shape, &mut out).unwrap();
    assert!(out.iter().all(|x| x.is_nan()), "{out:?}");
}

#[test]
fn f16_cache_takes_half_the_bytes_and_checks_positions() {
    let b = CpuBackend::new(1);
    let s =
        CacheShape { layers: 2, slots: 2, max_seq: 4, kv_heads: 1, head_dim: 8, kv: KvType::F16 };
    assert_eq!(s.bytes().unwrap() * 2, CacheShape { kv: KvType::F32, ..s }.bytes().unwrap());
    let mut c = b.kv_cache(s).unwrap();
    assert!(matches!(c.kv, KvStore::F16(ref p) if p.k.len() == 128 && p.v.len() == 128));
    let x = b.upload(&[0.5; 8]).unwrap();
    let bad = [RowPos { slot: 0, pos: 4 }];
    assert!(b.store_kv(&mut c, 0, &x, &x, &bad).is_err());
    let shape = AttnShape { heads: 1, kv_heads: 1, head_dim: 8 };
    let mut out = b.alloc(8).unwrap();
    assert!(b.attention(&x, &c, 0, &bad, shape, &mut out).is_err());
}
