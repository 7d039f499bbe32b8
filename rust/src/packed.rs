//! Short byte strings packed into one integer, for hash-map keys.
//!
//! Almost all pre-tokenized pieces are at most 15 bytes. As u128 keys (bytes + length) they hash and
//! compare as one integer; as `&[u8]` keys every lookup paid for a `memcmp` call, which profiling
//! showed as the largest single cost of both counting (training) and encoding.

/// Longest piece that can be packed.
pub const PACK_MAX: usize = 15;

/// Pack at most `PACK_MAX` bytes: the bytes in the low 15 bytes, the length in the top byte.
#[inline]
pub fn pack(b: &[u8]) -> u128 {
    let mut buf = [0u8; 16];
    buf[..b.len()].copy_from_slice(b);
    buf[15] = b.len() as u8;
    u128::from_le_bytes(buf)
}

/// `pack(&text[off..off + len])` with one 16-byte load instead of a `memcpy` (which also stalls
/// store-to-load forwarding), when 16 bytes are readable from `off`.
#[inline]
pub fn pack_at(text: &[u8], off: usize, len: usize) -> u128 {
    match text.get(off..off + 16) {
        Some(w) => {
            let w = u128::from_le_bytes(w.try_into().unwrap_or_default());
            (w & ((1u128 << (8 * len)) - 1)) | ((len as u128) << 120)
        }
        None => pack(&text[off..off + len]),
    }
}

/// The bytes of a packed key.
#[inline]
pub fn unpack(k: &u128) -> ([u8; 16], usize) {
    let buf = k.to_le_bytes();
    let len = buf[15] as usize;
    (buf, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_at_equals_pack() {
        let text = b"0123456789abcdefghijklmnopqrstuvwxyz";
        for off in 0..text.len() {
            for len in 0..=PACK_MAX.min(text.len() - off) {
                let k = pack_at(text, off, len);
                assert_eq!(k, pack(&text[off..off + len]));
                let (buf, n) = unpack(&k);
                assert_eq!(&buf[..n], &text[off..off + len]);
            }
        }
    }
}
