//! Extracts the uncompressed vmlinux (an ELF with a PVH note, which QEMU's microvm boots
//! directly, skipping in-guest decompression) from a bzImage. Debian's kernel is XZ-compressed
//! (CONFIG_KERNEL_XZ=y), so the payload is found by the XZ stream magic and decoded in Rust.

use std::io::Read;

const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";
const ELF_MAGIC: &[u8] = b"\x7fELF";

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("no XZ-compressed ELF payload found in the kernel image ({tried} candidates tried)")]
    NotFound { tried: usize },
}

/// Tries each XZ magic in order and returns the first stream that decodes to an ELF; decoding
/// stops at the end of the XZ stream, so the bzImage's trailing bytes do not matter.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, ExtractError> {
    let mut tried = 0;
    let mut start = 0;
    while let Some(off) = find(&bzimage[start..], XZ_MAGIC) {
        let at = start + off;
        tried += 1;
        let mut out = Vec::new();
        // liblzma (via xz2) because the kernel's XZ stream uses the x86 BCJ filter, which the
        // pure-Rust decoders do not implement.
        let decoded = xz2::read::XzDecoder::new(&bzimage[at..]).read_to_end(&mut out);
        // The decoder may complain about the bzImage bytes after the stream; what matters is
        // that the ELF came out whole, i.e. its section header table is inside the output.
        let _ = decoded;
        if elf_complete(&out) {
            return Ok(out);
        }
        start = at + 1;
    }
    Err(ExtractError::NotFound { tried })
}

fn elf_complete(b: &[u8]) -> bool {
    if !b.starts_with(ELF_MAGIC) || b.len() < 64 || b[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
    let mut off = [0u8; 8];
    off.copy_from_slice(&b[0x28..0x30]);
    let shoff = u64::from_le_bytes(off);
    let end = shoff.saturating_add(u16_at(0x3A) * u16_at(0x3C));
    end <= b.len() as u64
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        xz2::read::XzEncoder::new(data, 6)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn finds_the_elf_stream_behind_a_decoy_magic() {
        let mut elf: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        elf[..4].copy_from_slice(ELF_MAGIC);
        elf[4] = 2; // ELFCLASS64
        elf[0x28..0x30].copy_from_slice(&4000u64.to_le_bytes());
        elf[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3C..0x3E].copy_from_slice(&15u16.to_le_bytes());
        let mut img = b"MZ setup code".to_vec();
        img.extend(XZ_MAGIC); // a bare magic that is not a valid stream
        img.extend(b"junk");
        img.extend(xz(b"not an elf"));
        img.extend(xz(&elf));
        img.extend(b"trailing size and padding");
        assert_eq!(extract_vmlinux(&img).unwrap(), elf);
        // A truncated stream yields an incomplete ELF and is not accepted.
        let whole = xz(&elf);
        let cut = &whole[..whole.len() / 2];
        assert!(extract_vmlinux(cut).is_err());
    }

    #[test]
    fn no_payload_is_an_error() {
        let e = extract_vmlinux(b"plain bytes").unwrap_err();
        assert!(e.to_string().contains("0 candidates"), "{e}");
    }
}
