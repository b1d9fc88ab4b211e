//! N-gram bags as sorted vectors of 64-bit hashes.
//!
//! sacreBLEU builds a Python `Counter` of string tuples per segment; here an n-gram is the hash
//! of its units (tokens or characters), tagged in its low 4 bits with its order, and a bag is
//! the sorted vector of those keys. Matching two bags is then a linear merge. Two distinct
//! n-grams of one segment pair would have to collide in 60 bits to be miscounted.

const K: u64 = 0x517c_c1b7_2722_0a95;
const TAG_BITS: u32 = 4;
/// The largest order index a key can carry.
pub(crate) const MAX_ORDERS: usize = 1 << TAG_BITS;

#[inline]
fn fmix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Hash of one unit (a token's bytes).
#[inline]
pub(crate) fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = b.len() as u64;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        h = (h.rotate_left(5) ^ u64::from_le_bytes(c.try_into().unwrap())).wrapping_mul(K);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut buf = [0u8; 8];
        buf[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(buf)).wrapping_mul(K);
    }
    fmix(h)
}

/// Hash of one character.
#[inline]
pub(crate) fn hash_char(c: char) -> u64 {
    fmix(c as u64 ^ 0x9e37_79b9_7f4a_7c15)
}

#[inline]
fn extend(prefix: u64, unit: u64) -> u64 {
    fmix((prefix.rotate_left(23) ^ unit).wrapping_mul(K))
}

/// Appends to `bag` the keys of all n-grams of `units` with `1 <= n <= max_n`, tagging order
/// `n` with `tag_base + n - 1`; `prefix` is scratch space.
pub(crate) fn push_ngrams(
    units: &[u64],
    max_n: usize,
    tag_base: usize,
    prefix: &mut Vec<u64>,
    bag: &mut Vec<u64>,
) {
    prefix.clear();
    prefix.extend_from_slice(units);
    for n in 1..=max_n.min(units.len()) {
        if n > 1 {
            // prefix[i] covers units[i..i+n-1]; extend it by one unit in place.
            for i in 0..=units.len() - n {
                prefix[i] = extend(prefix[i], units[i + n - 1]);
            }
        }
        let tag = (tag_base + n - 1) as u64;
        bag.extend(
            prefix[..=units.len() - n]
                .iter()
                .map(|&h| (h & !((1 << TAG_BITS) - 1)) | tag),
        );
    }
}

#[inline]
pub(crate) fn tag_of(key: u64) -> usize {
    (key & ((1 << TAG_BITS) - 1)) as usize
}

/// Collapses a sorted bag into `(key, count)` runs.
pub(crate) fn runs(sorted: &[u64], out: &mut Vec<(u64, u32)>) {
    out.clear();
    for &k in sorted {
        match out.last_mut() {
            Some((last, c)) if *last == k => *c += 1,
            _ => out.push((k, 1)),
        }
    }
}

/// Merges `other` into `acc` (both sorted runs), keeping the larger count per key: the
/// multi-reference clipping counts of BLEU.
pub(crate) fn max_merge(
    acc: &mut Vec<(u64, u32)>,
    other: &[(u64, u32)],
    scratch: &mut Vec<(u64, u32)>,
) {
    scratch.clear();
    let (mut i, mut j) = (0, 0);
    while i < acc.len() && j < other.len() {
        let (a, b) = (acc[i], other[j]);
        if a.0 < b.0 {
            scratch.push(a);
            i += 1;
        } else if b.0 < a.0 {
            scratch.push(b);
            j += 1;
        } else {
            scratch.push((a.0, a.1.max(b.1)));
            i += 1;
            j += 1;
        }
    }
    scratch.extend_from_slice(&acc[i..]);
    scratch.extend_from_slice(&other[j..]);
    std::mem::swap(acc, scratch);
}

/// Calls `f(tag, hyp_count, ref_count)` for every key of either bag, in key order.
#[inline]
pub(crate) fn for_each_pair(
    hyp: &[(u64, u32)],
    refs: &[(u64, u32)],
    mut f: impl FnMut(usize, u32, u32),
) {
    let (mut i, mut j) = (0, 0);
    while i < hyp.len() || j < refs.len() {
        let h = hyp.get(i).copied();
        let r = refs.get(j).copied();
        match (h, r) {
            (Some(h), Some(r)) if h.0 == r.0 => {
                f(tag_of(h.0), h.1, r.1);
                i += 1;
                j += 1;
            }
            (Some(h), Some(r)) if h.0 < r.0 => {
                f(tag_of(h.0), h.1, 0);
                i += 1;
            }
            (Some(h), None) => {
                f(tag_of(h.0), h.1, 0);
                i += 1;
            }
            (_, Some(r)) => {
                f(tag_of(r.0), 0, r.1);
                j += 1;
            }
            (None, None) => break,
        }
    }
}
