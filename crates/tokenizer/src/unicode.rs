//! Code point classification used by the pre-tokenizers, and the gpt2 byte-to-unicode map.

use crate::unicode_tables::CATEGORY_RANGES;

/// General category classes (one bit each; exactly one is set for any code point).
pub(crate) const UNDEFINED: u8 = 0x01;
pub(crate) const NUMBER: u8 = 0x02;
pub(crate) const LETTER: u8 = 0x04;
#[allow(dead_code)]
pub(crate) const SEPARATOR: u8 = 0x08;
pub(crate) const MARK: u8 = 0x10;
pub(crate) const PUNCTUATION: u8 = 0x20;
pub(crate) const SYMBOL: u8 = 0x40;
#[allow(dead_code)]
pub(crate) const CONTROL: u8 = 0x80;

/// Category class of a code point, plus the `White_Space` property.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Flags {
    /// One of the category constants; 0 means "no code point" (outside the current fragment).
    pub cat: u8,
    pub ws: bool,
}

impl Flags {
    /// Flags of "nothing": what the splitters see past the end of a fragment.
    pub const NONE: Flags = Flags { cat: 0, ws: false };

    #[inline]
    pub fn is_letter(self) -> bool {
        self.cat == LETTER
    }
    #[inline]
    pub fn is_number(self) -> bool {
        self.cat == NUMBER
    }
    #[inline]
    pub fn is_whitespace(self) -> bool {
        self.ws
    }
    /// True for any real code point (the reference's `flags.as_uint() != 0`).
    #[inline]
    pub fn is_some(self) -> bool {
        self.cat != 0
    }
}

/// Unicode `White_Space` property.
#[inline]
pub(crate) fn is_white_space(cp: u32) -> bool {
    matches!(cp, 0x09..=0x0D | 0x20 | 0x85 | 0xA0 | 0x1680 | 0x2000..=0x200A | 0x2028 | 0x2029 | 0x202F | 0x205F | 0x3000)
}

fn category_slow(cp: u32) -> u8 {
    if cp > 0x10FFFF {
        return UNDEFINED;
    }
    let idx = CATEGORY_RANGES.partition_point(|&(start, _)| start <= cp);
    // CATEGORY_RANGES[0].0 == 0, so idx >= 1.
    CATEGORY_RANGES[idx - 1].1
}

const fn ascii_categories() -> [u8; 128] {
    let mut t = [0u8; 128];
    let mut c = 0;
    while c < 128 {
        let b = c as u8;
        t[c] = if b < 0x20 || b == 0x7F {
            CONTROL
        } else if b == b' ' {
            SEPARATOR
        } else if b.is_ascii_digit() {
            NUMBER
        } else if b.is_ascii_alphabetic() {
            LETTER
        } else if matches!(b, b'$' | b'+' | b'<' | b'=' | b'>' | b'^' | b'`' | b'|' | b'~') {
            SYMBOL
        } else {
            PUNCTUATION
        };
        c += 1;
    }
    t
}

static ASCII_CATEGORIES: [u8; 128] = ascii_categories();

/// Category class of a code point.
#[inline]
pub(crate) fn category(cp: u32) -> u8 {
    if cp < 128 {
        ASCII_CATEGORIES[cp as usize]
    } else {
        category_slow(cp)
    }
}

#[inline]
pub(crate) fn flags(cp: u32) -> Flags {
    Flags { cat: category(cp), ws: is_white_space(cp) }
}

// ---------------------------------------------------------------------------------------------
// Classes as seen by the reference's general-purpose regex path. There, each code point >= 128
// is first replaced by one byte standing for its category (white space by '\v'), and `\p{X}` is
// rewritten to that byte plus an ASCII list. The ASCII lists are those of Unicode except that
// `~` is not in `\p{S}`.
// ---------------------------------------------------------------------------------------------

#[inline]
fn collapsed_is(cp: u32, cat: u8) -> bool {
    cp >= 128 && !is_white_space(cp) && category_slow(cp) == cat
}

/// `\p{L}` in the collapsed representation.
#[inline]
pub(crate) fn c_letter(cp: u32) -> bool {
    if cp < 128 {
        (cp as u8).is_ascii_alphabetic()
    } else {
        collapsed_is(cp, LETTER)
    }
}

/// `\p{N}` in the collapsed representation.
#[inline]
pub(crate) fn c_number(cp: u32) -> bool {
    if cp < 128 {
        (cp as u8).is_ascii_digit()
    } else {
        collapsed_is(cp, NUMBER)
    }
}

/// `\p{P}` in the collapsed representation.
#[inline]
pub(crate) fn c_punct(cp: u32) -> bool {
    if cp < 128 {
        ASCII_CATEGORIES[cp as usize] == PUNCTUATION
    } else {
        collapsed_is(cp, PUNCTUATION)
    }
}

/// `\p{S}` in the collapsed representation (no `~`).
#[inline]
pub(crate) fn c_symbol(cp: u32) -> bool {
    if cp < 128 {
        matches!(cp as u8, b'$' | b'+' | b'<' | b'=' | b'>' | b'^' | b'`' | b'|')
    } else {
        collapsed_is(cp, SYMBOL)
    }
}

/// `\p{M}` in the collapsed representation.
#[inline]
pub(crate) fn c_mark(cp: u32) -> bool {
    collapsed_is(cp, MARK)
}

/// `\s`: the same in every representation (non-ASCII white space becomes `\v`).
#[inline]
pub(crate) fn c_space(cp: u32) -> bool {
    is_white_space(cp)
}

/// The code point as a regex without `\p{..}` sees it: non-ASCII white space becomes `\v`.
#[inline]
pub(crate) fn wide(cp: u32) -> u32 {
    if cp > 0x7F && is_white_space(cp) {
        0x0B
    } else {
        cp
    }
}

// ---------------------------------------------------------------------------------------------
// gpt2 byte-level mapping: every byte gets a printable code point. Bytes that are printable
// Latin-1 ('!'..='~', '¡'..='¬', '®'..='ÿ') map to themselves, the other 68 bytes, in order, to
// U+0100, U+0101, ...
// ---------------------------------------------------------------------------------------------

const fn is_printable_byte(b: u32) -> bool {
    (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
}

const fn build_byte_to_cp() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut n = 0;
    let mut b = 0;
    while b < 256 {
        if is_printable_byte(b as u32) {
            t[b] = b as u32;
        } else {
            t[b] = 256 + n;
            n += 1;
        }
        b += 1;
    }
    t
}

/// Byte -> code point of its gpt2 byte-level character.
pub(crate) static BYTE_TO_CP: [u32; 256] = build_byte_to_cp();

const fn build_cp_to_byte() -> [i16; 324] {
    let mut t = [-1i16; 324];
    let mut b = 0;
    while b < 256 {
        t[BYTE_TO_CP[b] as usize] = b as i16;
        b += 1;
    }
    t
}

static CP_TO_BYTE: [i16; 324] = build_cp_to_byte();

/// The byte a gpt2 byte-level character stands for, if it is one.
#[inline]
pub(crate) fn byte_of_char(c: char) -> Option<u8> {
    let cp = c as usize;
    if cp < CP_TO_BYTE.len() && CP_TO_BYTE[cp] >= 0 {
        Some(CP_TO_BYTE[cp] as u8)
    } else {
        None
    }
}

/// The gpt2 byte-level character of a byte.
#[inline]
pub(crate) fn char_of_byte(b: u8) -> char {
    // All table entries are valid scalar values below 0x144.
    char::from_u32(BYTE_TO_CP[b as usize]).unwrap_or('\u{FFFD}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = char_of_byte(b);
            assert!(seen.insert(c));
            assert_eq!(byte_of_char(c), Some(b));
        }
        assert_eq!(char_of_byte(b' '), 'Ġ');
        assert_eq!(char_of_byte(b'\n'), 'Ċ');
        assert_eq!(char_of_byte(b'A'), 'A');
        assert_eq!(char_of_byte(0xAD), 'Ń');
        assert_eq!(byte_of_char('\u{200}'), None);
    }

    #[test]
    fn categories() {
        assert_eq!(category('a' as u32), LETTER);
        assert_eq!(category('é' as u32), LETTER);
        assert_eq!(category('中' as u32), LETTER);
        assert_eq!(category('٣' as u32), NUMBER);
        assert_eq!(category('½' as u32), NUMBER);
        assert_eq!(category('\u{301}' as u32), MARK);
        assert_eq!(category('—' as u32), PUNCTUATION);
        assert_eq!(category('€' as u32), SYMBOL);
        assert_eq!(category(0x1F600), SYMBOL);
        assert_eq!(category(0x0378), UNDEFINED);
        assert_eq!(category(0xE000), CONTROL);
        assert!(flags(0x3000).is_whitespace());
        assert!(!flags(0x200B).is_whitespace());
        // ASCII fast path agrees with the table.
        for cp in 0..128 {
            assert_eq!(category(cp), category_slow(cp), "{cp:#x}");
        }
        assert!(!c_symbol('~' as u32));
        assert!(c_symbol('+' as u32));
        assert!(c_punct('_' as u32));
    }
}
