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

/// The kernel release (`uname -r`) from the banner in a vmlinux ("Linux version 6.1.0 (...").
pub fn release(elf: &[u8]) -> Option<String> {
    const BANNER: &[u8] = b"Linux version ";
    let at = find(elf, BANNER)? + BANNER.len();
    let rest = elf.get(at..)?;
    let end = rest.iter().position(|b| *b == b' ' || *b == 0)?;
    let r = std::str::from_utf8(&rest[..end]).ok()?;
    (!r.is_empty() && r.len() < 65).then(|| r.to_string())
}

/// Whether an ELF64 kernel carries the PVH entry note (`Xen` note of type 18,
/// XEN_ELFNOTE_PHYS32_ENTRY) that QEMU's microvm needs to boot it uncompressed. Bounds-checked
/// throughout: a malformed file is simply "no".
pub fn has_pvh_note(b: &[u8]) -> bool {
    const PT_NOTE: u32 = 4;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
    let u16_at = |o: usize| {
        b.get(o..o + 2)
            .map(|x| u16::from_le_bytes([x[0], x[1]]) as usize)
    };
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8).and_then(|x| {
            let mut a = [0u8; 8];
            a.copy_from_slice(x);
            usize::try_from(u64::from_le_bytes(a)).ok()
        })
    };
    if !b.starts_with(ELF_MAGIC) || b.get(4) != Some(&2) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    for i in 0..phnum {
        let ph = phoff.saturating_add(i.saturating_mul(phentsize));
        if u32_at(ph) != Some(PT_NOTE) {
            continue;
        }
        let (Some(off), Some(size)) = (u64_at(ph + 8), u64_at(ph + 32)) else {
            continue;
        };
        let end = off.saturating_add(size).min(b.len());
        let mut n = off;
        let align = |x: usize| x.saturating_add(3) & !3;
        while n.saturating_add(12) <= end {
            let (Some(namesz), Some(descsz), Some(kind)) =
                (u32_at(n), u32_at(n + 4), u32_at(n + 8))
            else {
                break;
            };
            let name = n + 12;
            if kind == XEN_ELFNOTE_PHYS32_ENTRY
                && b.get(name..name + namesz as usize) == Some(b"Xen\0".as_slice())
            {
                return true;
            }
            n = align(name.saturating_add(namesz as usize)).saturating_add(align(descsz as usize));
        }
    }
    false
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

    /// A minimal ELF64 with one PT_NOTE segment holding `notes`.
    fn elf_with_notes(notes: &[(&[u8], u32)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (name, kind) in notes {
            body.extend((name.len() as u32).to_le_bytes());
            body.extend(4u32.to_le_bytes());
            body.extend(kind.to_le_bytes());
            body.extend(*name);
            while body.len() % 4 != 0 {
                body.push(0);
            }
            body.extend(0x100_0000u32.to_le_bytes());
        }
        let mut e = vec![0u8; 64 + 56];
        e[..4].copy_from_slice(ELF_MAGIC);
        e[4] = 2;
        e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3A].copy_from_slice(&1u16.to_le_bytes());
        e[64..68].copy_from_slice(&4u32.to_le_bytes());
        e[72..80].copy_from_slice(&120u64.to_le_bytes());
        e[96..104].copy_from_slice(&(body.len() as u64).to_le_bytes());
        e.extend(body);
        e
    }

    #[test]
    fn pvh_note_is_found_among_others_and_nothing_else_passes() {
        assert!(has_pvh_note(&elf_with_notes(&[
            (b"GNU\0", 3),
            (b"Xen\0", 18)
        ])));
        assert!(!has_pvh_note(&elf_with_notes(&[(b"Xen\0", 17)])));
        assert!(!has_pvh_note(&elf_with_notes(&[(b"GNU\0", 18)])));
        let good = elf_with_notes(&[(b"Xen\0", 18)]);
        for cut in [0, 10, 64, 100, good.len() - 6] {
            assert!(!has_pvh_note(&good[..cut]), "cut at {cut}");
        }
    }

    #[test]
    fn release_comes_from_the_banner() {
        let img = b"\x7fELF....Linux version 6.1.192-moat (moat@moat) #1 SMP\0";
        assert_eq!(release(img).as_deref(), Some("6.1.192-moat"));
        assert_eq!(release(b"no banner"), None);
    }

    #[test]
    fn no_payload_is_an_error() {
        let e = extract_vmlinux(b"plain bytes").unwrap_err();
        assert!(e.to_string().contains("0 candidates"), "{e}");
    }
}
